"""The floor for one-shot benchmarks: the least a script can do to stream a reply with the SDK.

python bench/floor.py BASE_URL chat|responses < prompt
"""

import sys

import openai

base_url, api = sys.argv[1], sys.argv[2]
client = openai.OpenAI(api_key="not-needed", base_url=base_url)
prompt = sys.stdin.read()
write, flush = sys.stdout.write, sys.stdout.flush
if api == "chat":
    stream = client.chat.completions.create(
        model="test-model",
        messages=[{"role": "user", "content": prompt}],
        max_tokens=1000,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            write(chunk.choices[0].delta.content)
            flush()
else:
    stream = client.responses.create(model="test-model", input=prompt, max_output_tokens=1000, stream=True)
    for event in stream:
        if event.type == "response.output_text.delta":
            write(event.delta)
            flush()
write("\n")
