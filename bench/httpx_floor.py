"""The floor every Python client pays: a plain httpx stream, `iter_lines` and `json.loads`, text printed.

python bench/httpx_floor.py BASE_URL < prompt
"""

import json
import sys

import httpx

base_url = sys.argv[1]
prompt = sys.stdin.read()
body = {
    "model": "test-model",
    "messages": [{"role": "user", "content": prompt}],
    "max_tokens": 1000,
    "stream": True,
    "stream_options": {"include_usage": True},
}
write, flush = sys.stdout.write, sys.stdout.flush
with httpx.Client(timeout=60) as client, client.stream("POST", base_url + "/chat/completions", json=body) as response:
    for line in response.iter_lines():
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        for choice in chunk.get("choices") or ():
            content = (choice.get("delta") or {}).get("content")
            if content:
                write(content)
                flush()
write("\n")
