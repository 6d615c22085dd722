"""The conversation: messages, the system prompt kept apart, and trimming to fit the window (pure)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from .attachments import Attachment, model_text, wire_content
from .tokens import TokenCounter, estimate_tokens, upper_bound_tokens


class Status(StrEnum):
    """A message's state (the sessions database keeps the value)."""

    COMPLETE = ""
    INTERRUPTED = "interrupted"
    INCOMPLETE = "cut short"  # failed mid-reply or ended early: the text may stop mid-way
    UNANSWERED = "unanswered"  # a user message the model answered with nothing: kept, the next one joins it

    @classmethod
    def parse(cls, text: str | None) -> Status:
        """A saved or imported value; one this version does not know is taken as incomplete."""
        try:
            return cls(text or "")
        except ValueError:
            return cls.INCOMPLETE


@dataclass
class Message:
    """One turn of the conversation. `tokens` caches its count: never re-tokenised."""

    role: str
    content: str
    status: Status = Status.COMPLETE
    tokens: tuple[str, int] | None = None  # (encoding key, count)
    created: float = field(default_factory=time.time)
    row_id: int | None = None  # its row in the sessions database, once saved
    attachments: list[Attachment] = field(default_factory=list)  # images, files, voice: see attachments.py

    @property
    def text(self) -> str:
        """What the model reads as text: the content, then any attached file's text."""
        return model_text(self.content, self.attachments) if self.attachments else self.content

    def as_dict(self, api: str = "chat") -> dict[str, Any]:
        if not self.attachments:
            return {"role": self.role, "content": self.content}
        return {"role": self.role, "content": wire_content(self.content, self.attachments, api)}


@dataclass
class Conversation:
    """The message array: the system prompt kept apart from the growing history."""

    system: str
    history: list[Message] = field(default_factory=list)
    summary: str | None = None  # summary of turns dropped by trimming
    summary_covers: int = 0  # how many of the oldest history messages the summary covers
    # see tokens_before: (counter key, n, tokens in the oldest n messages, the n-th message)
    _running: tuple[str, int, int, Message] | None = field(default=None, repr=False, compare=False)

    def tokens_before(self, n: int, counter: TokenCounter | None) -> int:
        """Tokens in the oldest n history messages (character estimate without a counter).

        Kept as a running total, so a long conversation that drops a little more each turn
        adds only the newly dropped messages instead of re-summing the whole history.
        """
        if n <= 0:
            return 0
        key = counter.key if counter is not None else "estimate"
        start, total = 0, 0
        cached = self._running
        if cached and cached[0] == key and 0 < cached[1] <= n and self.history[cached[1] - 1] is cached[3]:
            start, total = cached[1], cached[2]
        for message in self.history[start:n]:
            total += (
                counter.count_message(message)
                if counter is not None
                else TokenCounter.TOKENS_PER_MESSAGE + estimate_tokens(message.text)
            )
        self._running = (key, n, total, self.history[n - 1])
        return total

    def clear(self) -> None:
        self.history.clear()
        self.summary, self.summary_covers = None, 0

    def last_user_text(self) -> str:
        return next((m.content for m in reversed(self.history) if m.role == "user"), "")

    def last_exchange_start(self) -> int | None:
        for index in range(len(self.history) - 1, -1, -1):
            if self.history[index].role == "user":
                return index
        return None


DEFAULT_CONTEXT_TOKENS = 8192


def token_budget(context_tokens: int, max_output: int) -> int:
    """What a request may use: the context window less the reply and a safety margin."""
    margin = max(64, context_tokens // 20)
    return max(0, context_tokens - max_output - margin)


class PromptTooLarge(Exception):
    """The newest user message alone does not fit the token budget."""

    def __init__(self, tokens: int, budget: int, estimated: bool):
        self.tokens, self.budget, self.estimated = tokens, budget, estimated
        about = "about " if estimated else ""
        super().__init__(
            f"your message is {about}{tokens:,} tokens but the model has room for {budget:,} "
            f"(context window less --max-tokens and a margin): shorten it, or raise --context-tokens"
        )


@dataclass
class Request:
    """What one call sends: the system message (with any summary merged in) and kept turns."""

    system: str
    kept: list[Message]  # the newest history messages, the ones sent
    dropped: int = 0  # history messages not sent
    dropped_tokens: int = 0
    tokens: int | None = None  # counted size of the request, when it was counted
    estimated: bool = True
    temperature: float | None = None  # the conversation's own; None: the configured one

    def messages(self, api: str = "chat") -> list[dict[str, Any]]:
        return [{"role": "system", "content": self.system}] + [m.as_dict(api) for m in self.kept]


def newest_exchanges(history: list[Message]) -> Iterator[list[Message]]:
    """Exchanges from the newest back, each starting with a user message; walks only as far as asked."""
    end = len(history)
    for index in range(len(history) - 1, -1, -1):
        if history[index].role == "user" or index == 0:
            yield history[index:end]
            end = index


def system_with_summary(system: str, summary: str | None) -> str:
    # One system message only: many servers reject a second one, so the summary is merged in.
    if not summary:
        return system
    return f"{system}\n\nSummary of the earlier conversation (older turns are not shown):\n{summary}"


def build_request(conversation: Conversation, max_messages: int, budget: int, counter: TokenCounter | None) -> Request:
    """Choose the newest whole exchanges that fit both the message limit and the token budget.

    The system prompt always goes first; the kept window starts with a user turn and
    never splits an exchange; the newest user message is always sent, or PromptTooLarge.
    Only when a cheap byte bound says the request might not fit is anything tokenised,
    and the work done is bounded by what is kept, not by the length of the history.
    """
    history = conversation.history
    system = system_with_summary(conversation.system, conversation.summary)
    newest = history[-1].text if history else ""
    if len(newest) > 2 * budget and estimate_tokens(newest) // 2 > budget:
        # Far too large to be worth tokenising (10 MB on stdin): say so at once.
        raise PromptTooLarge(estimate_tokens(newest), budget, True)
    trimming = Trimming(history, Message("system", system), max_messages, budget, counter)
    kept, used, by_budget = trimming.select(exact=False)
    exact = False
    if counter is not None and (used > budget or by_budget):
        kept, used, _ = trimming.select(exact=True)  # the byte bound is too pessimistic to decide: count for real
        exact = True
    elif counter is None and used > budget:
        raise PromptTooLarge(used, budget, True)
    dropped, dropped_tokens = not_sent(conversation, len(history) - len(kept), counter if exact else None)
    return Request(
        system=system,
        kept=kept,
        dropped=dropped,
        dropped_tokens=dropped_tokens,
        tokens=used if exact else None,
        estimated=not exact or counter is None or counter.estimated,
    )


class Trimming:
    """Choosing what a request keeps: newest exchanges first, sized by a byte bound or by counting."""

    def __init__(
        self, history: list[Message], system: Message, max_messages: int, budget: int, counter: TokenCounter | None
    ):
        self.history, self.system, self.max_messages, self.budget, self.counter = (
            history,
            system,
            max_messages,
            budget,
            counter,
        )
        self._key: str | None = None  # the counter's key, looked up only once counting is needed (it loads tiktoken)

    def size(self, message: Message, exact: bool) -> int:
        counter = self.counter
        if not exact or counter is None:
            return upper_bound_tokens(message)
        if self._key is None:
            self._key = counter.key
        cached = message.tokens  # the common case, inlined: every message is counted only once
        return cached[1] if cached is not None and cached[0] == self._key else counter.count_message(message)

    def select(self, exact: bool) -> tuple[list[Message], int, bool]:
        """(kept messages, their size with the system prompt, whether the budget stopped the walk)."""
        budget, size = self.budget, self.size
        used = size(self.system, exact) + TokenCounter.REPLY_PRIMING
        kept: list[list[Message]] = []
        count, by_budget = 0, False
        for number, group in enumerate(newest_exchanges(self.history)):
            group_size = sum(size(m, exact) for m in group)
            if number == 0:
                if exact and used + group_size > budget:
                    counter = self.counter
                    raise PromptTooLarge(group_size + used, budget, counter is None or counter.estimated)
            elif group[0].role != "user" or count + len(group) > self.max_messages:
                break
            elif used + group_size > budget:
                by_budget = True
                break
            kept.append(group)
            used += group_size
            count += len(group)
        return [m for group in reversed(kept) for m in group], used, by_budget


def not_sent(conversation: Conversation, left_out: int, counter: TokenCounter | None) -> tuple[int, int]:
    """(messages dropped, their tokens): the oldest `left_out`, less those the summary covers."""
    covered = min(conversation.summary_covers, left_out) if conversation.summary is not None else 0
    dropped = left_out - covered
    if not dropped:
        return 0, 0
    return dropped, conversation.tokens_before(left_out, counter) - conversation.tokens_before(covered, counter)
