"""Baseline for time-to-prompt: a prompt_toolkit REPL that imports the SDK before showing its prompt."""

import openai  # noqa: F401  (the usual way: everything imported up front)
from prompt_toolkit import PromptSession
from rich.console import Console

Console().print("naive chatbot")
session = PromptSession()
while True:
    try:
        session.prompt("❯ ")
    except (EOFError, KeyboardInterrupt):
        break
