"""The Telegram assistant under load: the real bot process, a fake Bot API and a fake model, all on 127.0.0.1.

- 50 private chats send a message at the same moment to a model that takes about 2 s a reply:
  the time until all 50 finished replies have arrived, against one reply's time alone.
- Telegram calls per chat per second while those replies stream (drafts at most about 3 a second),
  with 429s injected for some chats: no call may land inside a retry_after window.
- The bot process's memory with 1,000 chats' histories (20 messages each) loaded.
- A restart: SIGKILL with 20 chats mid-reply, then a new process: all 20 answered, and how long it
  took; SIGTERM with replies streaming and messages queued: how long until the process exits.
- Flood control with Telegram's per-chat limit enforced by the fake: 20 strangers writing at once
  and a user flooding the bot: 429s answered and calls inside retry_after windows (both 0).
- The bot's CPU per model chunk with 50 chats streaming, against a plain httpx stream's.
- A 10-photo album: from the last photo to the first draft, against a text message.
- Rich messages: the messages a 20,000-character reply takes, and until it is all shown, as rich
  messages against text with entities (TELEGRAM_RICH=0); from the Stop button to the model request
  being closed, against /cancel.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

import pace  # noqa: E402
from pace import process_cpu_ns  # noqa: E402
from server import FakeServer, chat_reply  # noqa: E402
from telegram_server import TOKEN, FakeTelegram  # noqa: E402

REPLY = "A reply that takes about two seconds to stream, word by word, as a real model would. " * 2
PIECES, DELAY = 20, 0.1  # 20 deltas, 0.1 s apart: about 2 s


def start_bot(home: Path, telegram: FakeTelegram, model: FakeServer, **extra: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "CHATBOT_", "TELEGRAM_", "XDG_"))}
    env.update(
        HOME=str(home),
        XDG_DATA_HOME=str(home / "data"),
        XDG_STATE_HOME=str(home / "state"),
        XDG_CACHE_HOME=str(home / "cache"),
        TIKTOKEN_CACHE_DIR=str(home / "tiktoken"),
        TELEGRAM_BOT_TOKEN=TOKEN,
        TELEGRAM_API_URL=telegram.api_url,
        TELEGRAM_ALLOWED_USERS="*",
        TELEGRAM_RATE_LIMIT="1000",
        OPENAI_BASE_URL=model.base_url,
        OPENAI_MODEL="test-model",
        OPENAI_MAX_RETRIES="0",
        CHATBOT_LOCAL_PORTS="",
        NO_PROXY="127.0.0.1",
    )
    env.update(extra)
    polls = len(telegram.calls_to("getUpdates"))
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "telegram_bot.py")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(os.environ.get("BENCH_BOT_LOG", os.devnull), "a"),
        cwd=str(home),
    )
    telegram.wait_for(lambda: len(telegram.calls_to("getUpdates")) > polls, timeout=30)
    return process


def floor_cpu_per_chunk(model: FakeServer) -> float:
    """What a plain httpx stream costs a chunk at a model's pace: bench/pace.py's measurement of it."""
    floor = [sys.executable, str(ROOT / "bench" / "httpx_floor.py"), model.base_url]
    share, _ = pace.measure(model, lambda: pace.start_piped(floor, dict(os.environ)))
    return share * 1e6 / pace.CHUNKS_PER_SECOND


def stop(bot: subprocess.Popen, telegram: FakeTelegram, model: FakeServer) -> None:
    """The end of every part: the bot stopped as a user would (SIGTERM), the fakes closed."""
    bot.send_signal(signal.SIGTERM)
    bot.wait(30)
    telegram.close()
    model.close()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def final_at(telegram: FakeTelegram, chat_id: int) -> float | None:
    sends = [c for c in telegram.calls_to("sendMessage", chat_id) if c.status == 200]
    return sends[-1].at if sends else None


def one_round(telegram: FakeTelegram, chats: list[int], timeout: float = 60) -> tuple[float, dict[int, float]]:
    """Send one message from each chat at once; (seconds until every final reply, per-chat start)."""
    sent_at = {}
    for chat in chats:
        sent_at[chat] = time.monotonic()
        telegram.send_text(chat, "tell me something")
    telegram.wait_for(lambda: all(final_at(telegram, c) for c in chats), timeout=timeout, interval=0.01)
    return max(final_at(telegram, c) for c in chats) - min(sent_at.values()), sent_at


def bench_concurrency(row, runs: int) -> None:
    telegram, model = FakeTelegram(poll_cap=0.5), FakeServer()
    model.default_chat = lambda: chat_reply(REPLY, pieces=PIECES, delay=DELAY)
    home = Path(tempfile.mkdtemp())
    bot = start_bot(home, telegram, model)
    try:
        next_chat = iter(range(10_000, 1_000_000))
        singles, fifties = [], []
        cpu_per_chunk: list[float] = []  # the bot process's CPU (every thread) over a 50-chat round
        limited: list[int] = []
        for run in range(runs):  # alternate: one chat alone, then fifty at once
            singles.append(one_round(telegram, [next(next_chat)])[0])
            chats = [next(next_chat) for _ in range(50)]
            if run == 0:  # Telegram's flood control for five of them, mid-stream
                limited = chats[:5]
                for chat in limited:
                    telegram.fail(
                        "sendMessageDraft", 429, "Too Many Requests: retry after 1", chat_id=chat, retry_after=1
                    )
            cpu_before = process_cpu_ns(bot.pid)
            fifties.append(one_round(telegram, chats)[0])
            cpu_per_chunk.append((process_cpu_ns(bot.pid) - cpu_before) / 1e3 / (len(chats) * PIECES))
        # The same 50 chats at the pace models really stream (the floor's 90 chunks a second), replies
        # of 3 s: what a chunk costs once a turn's fixed calls (typing, the final message, the inbox)
        # are spread over a reply as long as real ones.
        paced_chunks = 3 * pace.CHUNKS_PER_SECOND
        model.default_chat = lambda: chat_reply(REPLY * 4, pieces=paced_chunks, delay=1 / pace.CHUNKS_PER_SECOND)
        paced: list[float] = []
        for _ in range(runs):
            chats = [next(next_chat) for _ in range(50)]
            cpu_before = process_cpu_ns(bot.pid)
            one_round(telegram, chats)
            paced.append((process_cpu_ns(bot.pid) - cpu_before) / 1e3 / (len(chats) * paced_chunks))
        single, fifty = statistics.median(singles), statistics.median(fifties)
        ours, floor = statistics.median(cpu_per_chunk), floor_cpu_per_chunk(model)
        row(
            "bot: CPU per chunk with 50 chats streaming, whole turn, 20-chunk replies at 10/s (µs)",
            f"{ours:.0f}",
            f"{floor:.0f} (httpx iter_lines floor, one stream)",
            f"{ours / floor:.2f}",
            "(reference)",
            True,
        )
        at_pace = statistics.median(paced)
        row(
            f"bot: CPU per chunk with 50 chats streaming at {pace.CHUNKS_PER_SECOND}/s, 3 s replies, whole turn (µs)",
            f"{at_pace:.0f}",
            f"{floor:.0f} (httpx iter_lines floor, one stream)",
            f"{at_pace / floor:.2f}",
            "<= 0.5x",
            at_pace / floor <= 0.5,
        )
        row(
            "bot: 50 chats at once, all final replies vs one reply (s)",
            f"{fifty:.2f}",
            f"{single:.2f} (one chat)",
            f"{fifty / single:.2f}",
            "< 1.5x",
            fifty / single < 1.5,
        )
        # Calls per chat per second while a reply streams, over every chat of every round.
        rates, gaps = [], []
        for chat in {c.chat_id for c in telegram.calls if c.chat_id}:
            calls = [c for c in telegram.calls if c.chat_id == chat and c.method != "getUpdates"]
            drafts = [c.at for c in calls if c.method == "sendMessageDraft"]
            span = calls[-1].at - calls[0].at
            if span > 0.5:
                rates.append(len(calls) / span)
            gaps += [b - a for a, b in zip(drafts, drafts[1:], strict=False)]
        row(
            "bot: Telegram calls per chat per second while streaming (max over chats)",
            f"{max(rates):.2f}",
            f"min gap between drafts {min(gaps):.2f}s",
            "-",
            "drafts <= ~3/s, gap >= 0.33 s",
            min(gaps) >= 0.33,
        )
        row(
            "bot: calls inside a retry_after window (5 chats given 429)",
            str(len(telegram.violations)),
            f"{sum(1 for c in telegram.calls if c.status == 429)} 429s answered",
            "-",
            "0",
            not telegram.violations and all(final_at(telegram, c) for c in limited),
        )
    finally:
        stop(bot, telegram, model)


def seed_histories(path: Path, chats: int, messages: int) -> None:
    """1,000 chats' saved histories, written straight into the bot's database format."""
    from chatcore.conversation import Message
    from chatcore.store import SessionStore

    path.parent.mkdir(parents=True, exist_ok=True)
    store = SessionStore(str(path))
    for chat in range(chats):
        session_id, _ = store.open(f"telegram-{chat + 1}", "test-model", "127.0.0.1", "You are helpful.")
        store.db.execute("BEGIN")
        for n in range(messages):
            role = "user" if n % 2 == 0 else "assistant"
            store.add_message(session_id, Message(role, f"message {n} of chat {chat}: " + "some words " * 20))
        store.db.execute("COMMIT")
        store.release(session_id)
    store.close()


def bench_memory(row) -> None:
    telegram, model = FakeTelegram(poll_cap=0.5), FakeServer()
    home = Path(tempfile.mkdtemp())
    seed_histories(home / "data" / "chatbot" / "telegram.db", 1000, 20)
    bot = start_bot(home, telegram, model)
    try:
        time.sleep(1.0)
        idle = rss_kib(bot.pid)
        for chat in range(1, 1001):  # /stats loads a chat's history and asks nothing of the model
            telegram.send_text(chat, "/stats")
        telegram.wait_for(lambda: len(telegram.calls_to("sendMessage")) >= 1000, timeout=120, interval=0.1)
        loaded = rss_kib(bot.pid)
        kept = sum("Messages kept: 20" in m.text for m in telegram.messages.values())
        row(
            "bot: memory with 1,000 chats' histories loaded (MiB)",
            f"{loaded / 1024:.1f}",
            f"{idle / 1024:.1f} idle",
            f"+{(loaded - idle) / 1000:.0f} KiB/chat",
            "< 200 MiB, all loaded",
            loaded / 1024 < 200 and kept == 1000,
        )
        assert not model.posts  # /stats never reached the model
    finally:
        stop(bot, telegram, model)


def bench_restart(row) -> None:
    telegram, model = FakeTelegram(poll_cap=0.5), FakeServer()
    home = Path(tempfile.mkdtemp())
    model.default_chat = lambda: chat_reply("word " * 200, size=5, delay=0.1)  # about 4 s
    bot = start_bot(home, telegram, model)
    chats = list(range(20_001, 20_021))
    try:
        for chat in chats:
            telegram.send_text(chat, "a question that will be cut by a crash")
        telegram.wait_for(  # every chat mid-reply (or, on a slow machine, already answered: then it shows)
            lambda: all(telegram.calls_to("sendMessageDraft", c) or telegram.sent_texts(c) for c in chats), timeout=60
        )
        bot.kill()
        bot.wait(10)
        model.default_chat = lambda: chat_reply(REPLY, pieces=PIECES, delay=DELAY)
        restarted = time.monotonic()
        bot = start_bot(home, telegram, model)
        telegram.wait_for(lambda: all(final_at(telegram, c) for c in chats), timeout=60, interval=0.01)
        recovered = max(final_at(telegram, c) for c in chats) - restarted
        answered = sum(1 for c in chats if len(telegram.sent_texts(c)) == 1)
        row(
            "bot: SIGKILL with 20 chats mid-reply, then restart: chats answered (once)",
            f"{answered}/20",
            f"{recovered:.2f}s from restart to the last reply",
            "-",
            "20/20",
            answered == 20,
        )
        # SIGTERM with 20 replies streaming and one message queued behind each.
        model.default_chat = lambda: chat_reply("word " * 200, size=5, delay=0.1)
        for chat in chats:
            telegram.send_text(chat, "a long one")
        telegram.wait_for(lambda: len(model.posts) >= 40, timeout=30)
        for chat in chats:
            telegram.send_text(chat, "and one queued behind it")
        time.sleep(0.5)
        asked = time.monotonic()
        bot.send_signal(signal.SIGTERM)
        status = bot.wait(30)
        took = time.monotonic() - asked
        row(
            "bot: SIGTERM with 20 replies streaming and 20 queued: time to exit (s)",
            f"{took:.2f}",
            f"exit {status}",
            "-",
            "< 3 s, exit 0",
            took < 3 and status == 0,
        )
        model.default_chat = lambda: chat_reply(REPLY, pieces=2, delay=0.01)
        bot = start_bot(home, telegram, model)
        telegram.wait_for(lambda: all(len(telegram.sent_texts(c)) >= 3 for c in chats), timeout=60)
        queued = sum(len(telegram.sent_texts(c)) == 3 for c in chats)  # the first, the stopped one, the queued
        row("bot: ...then restart: the queued messages answered", f"{queued}/20", "-", "-", "20/20", queued == 20)
    finally:
        stop(bot, telegram, model)


def bench_flood(row) -> None:
    telegram, model = FakeTelegram(poll_cap=0.5), FakeServer()
    telegram.flood = True  # Telegram's per-chat limit: a burst of 3, then one a second
    home = Path(tempfile.mkdtemp())
    bot = start_bot(home, telegram, model, TELEGRAM_ALLOWED_USERS="100,101", TELEGRAM_RATE_LIMIT="10")
    strangers = list(range(30_001, 30_021))
    try:
        for n in range(5):
            for chat in strangers:
                telegram.send_text(chat, f"let me in {n}")
        for n in range(20):  # a user sending 20 messages in about 2 s
            telegram.send_text(100, f"message {n}")
            time.sleep(0.1)
        for _ in range(6):  # six /help in a fresh chat
            telegram.send_text(101, "/help")
        telegram.wait_for(
            lambda: len(telegram.sent_texts(100)) >= 11 and len(telegram.sent_texts(101)) >= 6, timeout=90
        )
        time.sleep(2.0)
        notes = sum(len(telegram.sent_texts(c)) for c in strangers)
        too_many, inside = len(telegram.too_many()), len(telegram.violations)
        row(
            "bot: 429s / calls inside retry_after (20 strangers x5, a user sending 20 in 2 s, 6 x /help)",
            f"{too_many} / {inside}",
            f"{notes} notes to 20 strangers, {len(telegram.sent_texts(100))} messages to the flooder",
            "-",
            "0 / 0, 20 notes",
            too_many == 0 and inside == 0 and notes == 20,
        )
    finally:
        stop(bot, telegram, model)


def bench_album(row, runs: int) -> None:
    """A 10-photo album (ten updates sharing a media_group_id): from the last photo to the first draft,
    against a text message's time to its first draft."""
    from test_attachments_files import png

    telegram, model = FakeTelegram(poll_cap=0.5), FakeServer()
    model.default_chat = lambda: chat_reply(REPLY, pieces=PIECES, delay=DELAY)
    bot = start_bot(Path(tempfile.mkdtemp()), telegram, model)

    def first_draft_after(chat: int, sent: float) -> float:
        telegram.wait_for(lambda: telegram.calls_to("sendMessageDraft", chat), timeout=30, interval=0.01)
        return telegram.calls_to("sendMessageDraft", chat)[0].at - sent

    try:
        album, text = [], []
        for run in range(runs):
            chat = 500_000 + 2 * run
            for n in range(10):
                image = png(400 + n, 300, marker=b"album-bench-%d" % n)
                size = telegram.add_file(image, width=400 + n, height=300)
                fields = {"caption": "what do these show?"} if n == 0 else {}
                telegram.send_text(chat, None, photo=[size], media_group_id=f"bench-{run}", **fields)
            album.append(first_draft_after(chat, time.monotonic()))
            telegram.send_text(chat + 1, "what does this show?")
            text.append(first_draft_after(chat + 1, time.monotonic()))
        a, t = statistics.median(album), statistics.median(text)
        row(
            "bot: 10-photo album, last photo to first draft (s)",
            f"{a:.2f}",
            f"{t:.2f} (a text message)",
            f"+{a - t:.2f} s",
            "< 2.5 s more than text (1 s album wait)",
            a - t < 2.5,
        )
    finally:
        stop(bot, telegram, model)


def report(size: int) -> str:
    """A model's long report: headings, paragraphs, a table and code, about `size` characters."""
    sections, n = [], 0
    while sum(map(len, sections)) < size:
        rows = "\n".join(f"| {n}.{r} | value {r} | note <{r}> & more |" for r in range(12))
        sections.append(
            f"## Part {n}\n\n"
            + f"A paragraph of explanation for part {n}, long enough to read like one. " * 3
            + f"\n\n| id | value | note |\n|---|---|---|\n{rows}\n\n```python\nprint({n})\n```"
        )
        n += 1
    return "\n\n".join(sections)


def bench_rich(row, runs: int) -> None:
    """A 20,000-character reply as rich messages and as text with entities (two bots, one run,
    alternately); then Stop against /cancel, from the press to the model request being closed."""
    reply = report(20_000)
    last = "print(" + reply.rsplit("print(", 1)[1].split(")")[0] + ")"  # in the reply's last part
    rich = FakeTelegram(poll_cap=0.5), FakeServer()
    plain = FakeTelegram(poll_cap=0.5), FakeServer()
    rich[0].rich = plain[0].rich = True
    bots = [
        start_bot(Path(tempfile.mkdtemp()), *rich),
        start_bot(Path(tempfile.mkdtemp()), *plain, TELEGRAM_RICH="0"),
    ]
    try:
        counts: dict[str, list[int]] = {"rich": [], "plain": []}
        seconds: dict[str, list[float]] = {"rich": [], "plain": []}
        for run in range(runs):
            for name, (telegram, model), method in (
                ("rich", rich, "sendRichMessage"),
                ("plain", plain, "sendMessage"),
            ):
                chat = 600_000 + run
                model.push(chat_reply(reply, size=2000))
                sent = time.monotonic()
                telegram.send_text(chat, "write the report")
                telegram.wait_for(lambda t=telegram, c=chat: last in "".join(t.sent_texts(c)), timeout=60)
                calls = [c for c in telegram.calls_to(method, chat) if c.status == 200]
                counts[name].append(len(calls))
                seconds[name].append(calls[-1].at - sent)
        r, p = statistics.median(counts["rich"]), statistics.median(counts["plain"])
        row(
            "bot: 20,000-char reply with tables, messages sent",
            f"{r:.0f}",
            f"{p:.0f} (entities)",
            f"{r / p:.2f}x",
            "fewer",
            r < p,
        )
        rs, ps = statistics.median(seconds["rich"]), statistics.median(seconds["plain"])
        row(
            "bot: 20,000-char reply, message to last part shown (s)",
            f"{rs:.2f}",
            f"{ps:.2f} (entities)",
            f"{rs / ps:.2f}x",
            "< entities",
            rs < ps,
        )
        stop_s, cancel_s = [], []
        for run in range(runs):
            for waits, how in ((stop_s, "stop"), (cancel_s, "cancel")):
                telegram, model = rich
                chat = 610_000 + 2 * run + (how == "cancel")
                model.push(chat_reply("word " * 2000, size=5, delay=0.01))
                telegram.send_text(chat, "talk")
                draft = telegram.wait_for(
                    lambda t=telegram, c=chat: next(
                        (
                            d
                            for d in t.calls_to("sendRichMessageDraft", c)
                            if "word" in d.params["rich_message"].get("markdown", "")
                        ),
                        None,
                    ),
                    timeout=30,
                    interval=0.01,
                )
                closed = len(model.disconnects)
                pressed = time.monotonic()
                if how == "stop":
                    telegram.stop_generation(chat, draft.params["draft_id"])
                else:
                    telegram.send_text(chat, "/cancel")
                telegram.wait_for(lambda m=model, n=closed: len(m.disconnects) > n, timeout=30, interval=0.005)
                waits.append(model.disconnects[closed] - pressed)
                telegram.wait_for(lambda t=telegram, c=chat: t.sent_texts(c), timeout=30)
        st, ct = statistics.median(stop_s), statistics.median(cancel_s)
        row(
            "bot: Stop pressed to model request closed (s)",
            f"{st:.3f}",
            f"{ct:.3f} (/cancel)",
            f"{st / ct:.2f}x",
            "< 1.5x /cancel",
            st < 1.5 * ct,
        )
    finally:
        for bot, (telegram, model) in zip(bots, (rich, plain), strict=True):
            stop(bot, telegram, model)


def main(row, runs: int) -> None:
    bench_concurrency(row, runs)
    bench_memory(row)
    bench_restart(row)
    bench_flood(row)
    bench_album(row, runs)
    bench_rich(row, runs)


if __name__ == "__main__":  # python bench/telegram_bench.py: this part alone

    def show(*cells: object) -> None:
        print(" | ".join(str(c) for c in cells), flush=True)

    if len(sys.argv) > 1:  # one part by name: restart, flood, memory, concurrency, album, rich
        part = globals()[f"bench_{sys.argv[1]}"]
        part(show, 3) if sys.argv[1] in ("concurrency", "album", "rich") else part(show)
    else:
        main(show, 3)
