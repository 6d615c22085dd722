"""A rich draft's CPU as a reply grows, in-process: `RichDrafts.message` (the settled units converted
once) against `draft_message` (the whole reply split again for every draft), side by side in one run.

`python bench/rich_drafts.py [runs]`. For each size the reply is streamed to RichDrafts 150
characters at a time, as the bot's drafts see it about 3 times a second; the last 15 drafts before
that size are timed for both, alternately, and the medians printed in ms per draft. Replies: a
report (headings, paragraphs with `<` and `&`, tables, code blocks) and one long code block (one
unit: what RichDrafts cannot settle, shown as it is).
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from telegram_rich import RichDrafts, draft_message  # noqa: E402

STEP = 150  # characters between two drafts
TIMED = 15  # drafts timed at each size


def report(size: int) -> str:
    """About `size` characters of the kind of report a model writes."""
    sections = []
    n = 0
    while sum(map(len, sections)) < size:
        rows = "\n".join(f"| {n}.{r} | a < b | c & d |" for r in range(8))
        sections.append(
            f"## Section {n}\n\nSome text for section {n}, with a < b & c, and `Vec<String>` in code.\n\n"
            f"| n | x | y |\n|---|---|---|\n{rows}\n\n```python\nprint({n})  # <done>\n```"
        )
        n += 1
    return "\n\n".join(sections)[:size]


def code_block(size: int) -> str:
    lines = [f"    value_{n} = compute({n}) < limit and flags & {n}" for n in range(size // 40 + 1)]
    return ("```python\n" + "\n".join(lines))[:size]


def timed(call: Callable[[], Any]) -> float:
    start = time.perf_counter()
    call()
    return (time.perf_counter() - start) * 1000


def measure(text: str) -> tuple[float, float]:
    """(ms per draft for RichDrafts, for draft_message), medians over the last drafts."""
    drafts = RichDrafts()
    ends = list(range(STEP, len(text), STEP)) + [len(text)]
    for end in ends[:-TIMED]:
        drafts.message(text[:end])
    ours, whole = [], []
    for end in ends[-TIMED:]:
        prefix = text[:end]
        ours.append(timed(lambda prefix=prefix: drafts.message(prefix)))
        whole.append(timed(lambda prefix=prefix: draft_message(prefix)))
        assert drafts.message(prefix) == draft_message(prefix)
    return statistics.median(ours), statistics.median(whole)


def main(runs: int) -> None:
    print(f"{'reply':<29} | {'RichDrafts (ms/draft)':>22} | {'draft_message (ms/draft)':>24} | ratio")
    for name, make in (("report", report), ("one code block", code_block)):
        for size in (1_000, 30_000, 200_000):
            results = [measure(make(size)) for _ in range(runs)]
            ours = statistics.median(r[0] for r in results)
            whole = statistics.median(r[1] for r in results)
            label = f"{name}, {size:,} chars"
            print(f"{label:<29} | {ours:>22.3f} | {whole:>24.3f} | {ours / whole:.3f}x", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
