"""The request log (one line per request, no content, no key), redaction, and reporting our own bugs."""

from __future__ import annotations

import os
import re

from .files import open_private, private_dir, user_dir


def write_log(line: str) -> None:
    """Append one line to the request log (front-ends show it themselves where they want, e.g. -v)."""
    try:
        with open_private(os.path.join(private_dir(user_dir("log")), "chatbot.log")) as log_file:
            log_file.write(line + "\n")
    except OSError:
        pass


def report_bug(exc: BaseException) -> str:
    """Log the traceback of an unexpected exception; return one line that says where to find it."""
    import traceback

    details = "".join(traceback.format_exception(exc))
    write_log("internal error\n" + details.rstrip())
    where = os.path.join(user_dir("log"), "chatbot.log")
    return f"{type(exc).__name__}: {one_line(str(exc), 160)} (traceback in {where})"


def redact(text: str, secret: str | None) -> str:
    if secret and len(secret) >= 4:
        text = text.replace(secret, "***")
    return re.sub(r"\b(sk-[A-Za-z0-9_-]{3})[A-Za-z0-9_*-]{8,}", r"\1***", text)


def one_line(text: str, limit: int = 240) -> str:
    text = re.sub(r"<[^>]+>", " ", text) if "<" in text and ">" in text else text
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
