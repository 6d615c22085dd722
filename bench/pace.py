"""CPU at the pace models really stream (~90 chunks a second), whole process, from the OS.

At full speed a chunk costs a few µs; at a model's real pace what a chunk costs is mostly waking
up for it. Each process streams the same paced reply from the local test server; its CPU time
(every thread's, from /proc/PID/task/*/schedstat, in ns) is sampled once the reply is under way
and again before it ends, so start-up and exit are left out. Side by side in one run, alternately:
ours piped, ours drawing Markdown on a real pseudo-terminal, a plain httpx `iter_lines` +
`json.loads` loop (the floor every Python client pays) and the raw SDK loop over typed chunks.
Then how long after the server's last byte the process has exited (short replies, more runs), from a
server that sends each write at once (TCP_NODELAY, as production servers do) and from one with Nagle's
algorithm (as llama.cpp's server), which a reader that reads less often acknowledges less often.
"""

from __future__ import annotations

import os
import pty
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
CHATBOT = str(ROOT / "chatbot.py")

CHUNKS_PER_SECOND = 90
CHUNKS = 900  # a 10 s reply; CPU is sampled from 2 s to 8 s
SAMPLE_FROM, SAMPLE_TO = 2.0, 8.0


def process_cpu_ns(pid: int) -> int:
    """CPU time of every thread of a process so far, in ns (schedstat's first field)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as stat:
                total += int(stat.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # a thread that ended meanwhile
    return total


def paced_reply(chunks: int = CHUNKS) -> Any:
    from server import chat_reply

    # paragraphs of 45 words, as model replies come: a chunk is a word or a word and a line break
    words = "".join(f"word{n % 50}" + ("\n\n" if n % 45 == 44 else " ") for n in range(chunks))
    return chat_reply(words, pieces=chunks, delay=1 / CHUNKS_PER_SECOND)


def start_piped(argv: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[bytes], Callable[[], None]]:
    process = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(b"go\n")
    process.stdin.close()
    out = process.stdout
    reader = threading.Thread(target=lambda: [None for _ in iter(lambda: out.read(1 << 16), b"")], daemon=True)
    reader.start()
    return process, lambda: reader.join(30)


def start_on_terminal(argv: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[bytes], Callable[[], None]]:
    import fcntl
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 100, 0, 0))
    process = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)
    os.close(slave)

    def drain() -> None:
        while True:
            try:
                if not os.read(master, 1 << 16):
                    return
            except OSError:
                return

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()

    def finish() -> None:
        reader.join(30)
        os.close(master)

    return process, finish


def measure(
    server: Any,
    start: Callable[[], tuple[subprocess.Popen[bytes], Callable[[], None]]],
    chunks: int = CHUNKS,
    sample: bool = True,
) -> tuple[float, float]:
    """(share of one core while streaming, seconds from the server's last byte to the process's exit);
    with `sample` False, a short reply and the exit only (the share is 0)."""
    server.push(paced_reply(chunks))
    posts, finished = len(server.posts), len(server.finished)
    process, finish = start()
    while len(server.posts) == posts:
        if process.poll() is not None:
            raise RuntimeError(f"exited {process.returncode} before asking")
        time.sleep(0.005)
    cpu0 = cpu1 = t0 = 0
    t1 = 1.0
    if sample:
        asked = time.monotonic()
        time.sleep(SAMPLE_FROM)
        cpu0, t0 = process_cpu_ns(process.pid), time.monotonic()
        time.sleep(max(0.0, asked + SAMPLE_TO - time.monotonic()))
        cpu1, t1 = process_cpu_ns(process.pid), time.monotonic()
    watchdog = threading.Timer(60, process.kill)
    watchdog.start()
    process.wait()  # blocking: a wait with a timeout polls (every 50 ms at worst) and blurs the exit time
    exited = time.monotonic()
    watchdog.cancel()
    finish()
    if process.returncode != 0:
        raise RuntimeError(f"exited {process.returncode}")
    last_byte = server.finished[finished] if len(server.finished) > finished else exited
    return (cpu1 - cpu0) / 1e9 / (t1 - t0), exited - last_byte


def main(row: Callable[..., None], server: Any, env: dict[str, str], runs: int) -> None:
    import statistics

    base = server.base_url
    # stdout buffered as it is for users (a test runner's PYTHONUNBUFFERED would make every write a system call)
    env = {name: value for name, value in env.items() if name != "PYTHONUNBUFFERED"}
    contenders: dict[str, Callable[[], tuple[subprocess.Popen[bytes], Callable[[], None]]]] = {
        "floor": lambda: start_piped([PY, str(ROOT / "bench" / "httpx_floor.py"), base], env),
        "sdk": lambda: start_piped([PY, str(ROOT / "bench" / "floor.py"), base, "chat"], env),
        "piped": lambda: start_piped([PY, CHATBOT, "--no-save"], env),
        "terminal": lambda: start_on_terminal([PY, CHATBOT, "--no-save", "go"], env),
    }
    shares: dict[str, list[float]] = {name: [] for name in contenders}
    exits: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(runs):
        for name, start in contenders.items():  # alternately: load on the machine hits each alike
            share, exit_after = measure(server, start)
            shares[name].append(share)
            exits[name].append(exit_after)
    # The exit, from short replies (1 s) and more of them: where the last read falls is a matter of chance.
    for _ in range(3 * runs):
        for name in ("floor", "piped", "terminal"):
            exits[name].append(measure(server, contenders[name], CHUNKS_PER_SECOND, sample=False)[1])
    # The same from a server that holds small writes until the last is acknowledged (Nagle's algorithm, as
    # llama.cpp's does): a paced reader acknowledges only when it reads, so the end waits for that read.
    nagle: dict[str, list[float]] = {"floor": [], "piped": []}
    server.nagle = True
    for _ in range(3 * runs):
        for name, values in nagle.items():
            values.append(measure(server, contenders[name], CHUNKS_PER_SECOND, sample=False)[1])
    server.nagle = False
    median = {name: statistics.median(values) for name, values in shares.items()}
    floor = median["floor"]
    pace = f"{CHUNKS_PER_SECOND} chunks/s"
    row(
        f"CPU while streaming at {pace}, piped (% of a core)",
        f"{median['piped'] * 100:.2f}",
        f"{floor * 100:.2f} (httpx iter_lines floor)",
        f"{median['piped'] / floor:.2f}",
        "<= 0.6x",
        median["piped"] / floor <= 0.6,
    )
    row(
        f"CPU while streaming at {pace}, Markdown on a terminal (% of a core)",
        f"{median['terminal'] * 100:.2f}",
        f"{floor * 100:.2f} (httpx iter_lines floor)",
        f"{median['terminal'] / floor:.2f}",
        "<= 1.2x",
        median["terminal"] / floor <= 1.2,
    )
    row(
        f"CPU while streaming at {pace}, raw SDK loop (% of a core)",
        f"{median['sdk'] * 100:.2f}",
        f"{floor * 100:.2f} (httpx iter_lines floor)",
        f"{median['sdk'] / floor:.2f}",
        "(reference)",
        True,
    )
    for name, label in (("piped", "piped"), ("terminal", "on a terminal")):
        after = statistics.median(exits[name]) * 1000
        row(
            f"exit after the last byte, one-shot {label} (ms)",
            f"{after:.0f}",
            f"{statistics.median(exits['floor']) * 1000:.0f} (httpx floor)",
            "-",
            "<= 50 ms",
            after <= 50,
        )
    row(
        "exit after the last byte, one-shot piped, server with Nagle's algorithm (ms)",
        f"{statistics.median(nagle['piped']) * 1000:.0f}",
        f"{statistics.median(nagle['floor']) * 1000:.0f} (httpx floor)",
        "-",
        "(reference)",
        True,
    )
