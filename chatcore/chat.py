"""A chat: one conversation with one provider, prepare -> stream -> record, saved when a store is attached."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .conversation import (
    DEFAULT_CONTEXT_TOKENS,
    Conversation,
    Message,
    PromptTooLarge,
    Request,
    build_request,
    token_budget,
)
from .log import write_log
from .provider import Failure, Provider, rejected_parameter
from .serverinfo import Window, ask_window, cached_scale, cached_window, remember_scale, remember_window
from .settings import Settings, is_local_url
from .streams import TEXT
from .tokens import TokenCounter, encoding_for_model
from .turn import Cancel, TurnResult, stream_turn
from .usage import TurnStats, Usage, model_info, turn_cost


class Chat:
    """One conversation's state: settings, the message array, the provider, and per-turn stats.

    Everything a conversation owns lives here, never in module globals, so one process can hold
    many at once (the Telegram assistant keeps one per chat, all sharing one `provider`). A Chat is
    used by one thread at a time; `respond` may be stopped from another thread with a Cancel.
    """

    def __init__(
        self,
        settings: Settings,
        notify: Callable[[str], None],
        provider: Provider | None = None,
        label: str = "",
        log_sink: Callable[[str], None] | None = None,
    ):
        self.settings = settings
        self.model = settings.model
        self.conversation = Conversation(settings.system)
        self.provider = provider or Provider(settings, notify)
        self.notify = notify
        self.label = label  # who this conversation is, for the request log: "chat=12345"
        self.log_sink = log_sink  # where request log lines go besides the log file
        self.turns: list[TurnStats] = []
        self.last_request: Request | None = None
        self._counter: TokenCounter | None = None
        self.window: Window | None = None  # the model's context window and where the figure came from
        self._window_asked = False
        self.set_model(self.model)
        self.store: Any = None  # a SessionStore when saving
        self.session_id: int | None = None
        self.wants_cost = True  # plain one-shot output shows no cost: skip loading the price table
        self._partial: Message | None = None  # the reply as checkpointed so far, while it streams

    @property
    def counter(self) -> TokenCounter:
        if self._counter is None or encoding_for_model(self.model)[0] != self._counter.encoding_name:
            self._counter = TokenCounter(self.model)
            # Cheap checks first: deciding whether to scale must not load tiktoken on its own.
            if is_local_url(self.settings.base_url) and not self._counter.exact_family:
                self._counter.scale = cached_scale(self.settings.base_url, self.model) or 1.0
        return self._counter

    def context_tokens(self, need_exact: bool) -> int:
        return self.context_window(need_exact).tokens

    def context_window(self, need_exact: bool = True) -> Window:
        """The model's context window and its source. A setting wins; a local server is asked before the
        first request (once per server and model, then remembered), since guessing too big a window
        dead-ends a small model; for a cloud model the price table (or OpenRouter's listing) is read
        only when a request might not fit the default."""
        settings = self.settings
        local = is_local_url(settings.base_url)
        if self.window is None and not self._window_asked and (local or need_exact):
            self._window_asked = True
            asked, self.window = cached_window(settings.base_url, self.model)
            if not asked and (local or "openrouter.ai" in settings.host):
                self.window = ask_window(settings.base_url, self.model, settings.api_key, local)
                remember_window(settings.base_url, self.model, self.window)  # an unanswered ask is kept too
            if self.window is None and not local:
                _, tokens = model_info(self.model, settings.base_url)
                if tokens:
                    self.window = Window(tokens, "genai-prices table")
        return self.window or Window(DEFAULT_CONTEXT_TOKENS, "a guess: the server does not say")

    def learn_window(self, tokens: int, source: str) -> None:
        """A smaller window learned the hard way (an overflow): used from now on, and remembered."""
        if self.settings.context_tokens is not None:
            return
        self.window, self._window_asked = Window(tokens, source), True
        remember_window(self.settings.base_url, self.model, self.window)

    def set_model(self, model: str) -> None:
        self.model = model
        tokens = self.settings.context_tokens
        self.window = Window(tokens, "--context-tokens / OPENAI_CONTEXT_TOKENS") if tokens else None
        self._window_asked = tokens is not None

    def prepare(self, cap: int | None = None) -> Request:
        """Build the request from the history; look up the real context window only when it matters."""
        conversation = self.conversation

        def budget(need_exact: bool) -> int:
            full = token_budget(self.context_tokens(need_exact), self.settings.max_tokens)
            return full if cap is None else min(full, cap)

        try:
            request = build_request(conversation, self.settings.max_messages, budget(False), self.counter)
        except PromptTooLarge:
            if self._window_asked:
                raise
            request = build_request(conversation, self.settings.max_messages, budget(True), self.counter)
        if request.dropped and self.settings.summarize:
            request = self.summarize_dropped(request) or request
        return request

    # -- summaries of dropped turns -------------------------------------------

    SUMMARY_BATCH = 4  # messages that must drop out before a stored summary is brought up to date

    def summarize_dropped(self, request: Request) -> Request | None:
        """Summarise the turns trimming drops, once; the summary is stored and reused."""
        conversation = self.conversation
        covered = len(conversation.history) - len(request.turns)
        if covered <= conversation.summary_covers or (
            conversation.summary and covered - conversation.summary_covers < self.SUMMARY_BATCH
        ):
            return None  # reuse the stored summary until enough new turns have dropped out of the window
        new_turns = conversation.history[conversation.summary_covers : covered]
        transcript = "\n".join(f"{m.role}: {m.content}" for m in new_turns)
        previous = f"Earlier summary: {conversation.summary}\n\n" if conversation.summary else ""
        summary_request = Request(
            system="Summarise this conversation in a few short bullet points. Keep names, numbers, decisions "
            "and open questions. Reply with the summary only.",
            turns=[Message("user", previous + transcript[-20_000:])],
        )
        try:
            result = stream_turn(self.provider, summary_request, self.model, lambda kind, text: None)
        except Failure as exc:
            self.notify(f"could not summarise older turns: {exc}")
            return None
        if not result.reply.strip():
            return None
        conversation.summary, conversation.summary_covers = result.reply.strip(), covered
        if self.store is not None and self.session_id is not None:
            self.store.save_summary(self.session_id, conversation.summary, covered)
        self.notify(f"summarised {len(new_turns)} older messages")
        return build_request(
            conversation,
            self.settings.max_messages,
            token_budget(self.context_tokens(False), self.settings.max_tokens),
            self.counter,
        )

    # -- a turn ------------------------------------------------------------------

    def add_user(self, text: str) -> Message:
        message = Message("user", text)
        history = self.conversation.history
        if history and history[-1].role == "user":
            # Never two user turns in a row: a previous turn left no reply. Merge.
            history[-1].content += "\n\n" + text
            history[-1].tokens = None
            message = history[-1]
            if self.store is not None and message.row_id is not None:
                self.store.update_message(message)
            return message
        history.append(message)
        if self.store is not None and self.session_id is not None:
            self.store.add_message(self.session_id, message)  # write-ahead: saved before the request
        return message

    def drop_last_user(self) -> None:
        history = self.conversation.history
        if history and history[-1].role == "user":
            message = history.pop()
            if self.store is not None and message.row_id is not None:
                self.store.delete_messages([message.row_id])

    def respond(
        self, on_event: Callable[[str, str], None], stream: bool = True, cancel: Cancel | None = None
    ) -> TurnResult:
        """Send the history (ending with a user message) and record the reply.

        Handles what a retry of our own can fix: unsupported parameters, an
        overflowing context (once, with a tighter budget), and the fallback model.
        On a failure before any text, the user message is removed and Failure raised.
        """
        model = self.model
        cap: int | None = None  # a tighter token budget, after the server said the context overflowed
        tried_fallback = False
        if self.store is not None and self.session_id is not None:
            on_event = self.checkpointing(on_event)
        while True:
            request = self.prepare(cap)
            if request.dropped:
                about = "about " if request.estimated else ""
                tokens = f" ({about}{request.dropped_tokens:,} tokens)" if request.dropped_tokens else ""
                self.notify(f"{request.dropped} older message{'s' if request.dropped != 1 else ''} not sent{tokens}")
            self.last_request = request
            try:
                result = stream_turn(self.provider, request, model, on_event, stream, cancel)
                break
            except Failure as failure:
                self.log(model, failure.status or "error", None, failure.latency, None, failure.kind)
                if self.unsupported_parameter(failure, request, model, stream):
                    continue
                sent = (  # the request's size, counted only when an overflow is in question
                    self.counter.count_messages([Message("system", request.system), *request.turns])
                    if failure.kind in ("no_finish", "context_length") and cap is None and len(request.turns) > 1
                    else 0
                )
                if failure.kind == "no_finish" and sent and (sent >= 1024 or sent >= self.context_tokens(False) // 2):
                    # Some servers (llama-cpp-python) answer a prompt larger than their window with an
                    # empty stream: nothing at all came back, for a large prompt. Treat it as an overflow.
                    failure.kind = "context_length"
                    failure.args = (
                        f"the server sent back nothing for a prompt of about {sent:,} tokens: it is "
                        f"probably larger than the model's context window",
                    )
                if failure.kind == "context_length" and cap is None and len(request.turns) > 1:
                    if failure.window:
                        self.learn_window(failure.window, "the server's context-length error")
                    elif sent >= 1024:  # a large prompt that did not fit: the window is no bigger than it
                        self.learn_window(min(sent, self.context_tokens(False)), f"an overflow at {sent:,} tokens")
                    cap = int(sent * 0.75)
                    self.notify(
                        f"the context window ({self.context_tokens(False):,} tokens) overflowed: retrying "
                        f"once with fewer older turns"
                    )
                    continue
                if (
                    failure.retryable
                    and self.settings.fallback_model
                    and not tried_fallback
                    and model != self.settings.fallback_model
                ):
                    tried_fallback = True
                    self.notify(f"{model} failed ({failure}); trying the fallback model {self.settings.fallback_model}")
                    model = self.settings.fallback_model
                    continue
                if failure.kind == "unknown_model":
                    models = self.provider.list_models()
                    if models:
                        shown = ", ".join(models[:12]) + (" …" if len(models) > 12 else "")
                        failure.args = (f"{failure}. The server offers: {shown}",)
                    else:
                        failure.args = (
                            f"{failure}. Check the provider's model list, or GET {self.settings.base_url}/models",
                        )
                self.drop_last_user()
                raise
        self.record(result, request)
        return result

    def unsupported_parameter(self, failure: Failure, request: Request, model: str, stream: bool) -> bool:
        """True when the failure rejected an optional parameter we sent: the retry goes without it."""
        if failure.status not in (400, 422):
            return False
        parameter = rejected_parameter(failure.code, str(failure), failure.param)
        if not self.provider.reject(parameter, self.provider.request_params(request, model, stream)):
            return False
        self.notify(f"the provider rejected {parameter}: retrying without it (remembered for this session)")
        return True

    def use_session(self, name: str) -> bool:
        """Claim a saved session (StoreError if another process has it) and load it; True if it existed.

        On a read-only store the session (if it exists) is loaded and the store detached: the chat
        goes on, and nothing tries to write."""
        store = self.store
        if store.readonly:
            row = store.find(name)
            if row is not None:
                self.conversation, self.turns, model = store.load(row[0])
                if model and model != self.model and "model" not in self.settings.sources:
                    self.set_model(model)
            self.store, self.session_id = None, None
            return row is not None
        session_id, existed = store.open(name, self.model, self.settings.host, self.conversation.system)
        if self.session_id is not None and self.session_id != session_id:
            store.drop_if_empty(self.session_id)
            store.release(self.session_id)
        self.session_id = session_id
        if not existed:
            self.conversation, self.turns = Conversation(self.conversation.system), []
            return False
        conversation, turns, model = store.load(session_id)
        if "system" in self.settings.sources and conversation.system != self.settings.system:
            conversation.system = self.settings.system  # -s given: it replaces the saved prompt
            store.set_meta(session_id, system=self.settings.system)
        self.conversation, self.turns = conversation, turns
        if model and model != self.model and "model" not in self.settings.sources:
            self.set_model(model)
        return True

    CHECKPOINT_SECONDS = 0.5

    def checkpointing(self, on_event: Callable[[str, str], None]) -> Callable[[str, str], None]:
        """Save the reply while it streams, marked "cut short" until it completes, so a
        process killed mid-reply (even by SIGKILL) leaves the text it had shown in the session."""
        parts: list[str] = []
        saved_at = [0.0]
        self._partial = None

        def on_event_saving(kind: str, text: str) -> None:
            on_event(kind, text)
            if kind is TEXT:
                parts.append(text)
                now = time.monotonic()
                if now - saved_at[0] >= self.CHECKPOINT_SECONDS:
                    saved_at[0] = now
                    if self._partial is None:
                        self._partial = Message("assistant", "".join(parts), flags="cut short")
                        self.store.add_message(self.session_id, self._partial)
                    else:
                        self._partial.content = "".join(parts)
                        self.store.update_message(self._partial)

        return on_event_saving

    def record(self, result: TurnResult, request: Request) -> None:
        """Append the reply (partial replies marked) and account for usage and cost."""
        history = self.conversation.history
        partial, self._partial = self._partial, None
        if result.reply:
            reply = Message("assistant", result.reply, flags=result.flags)
            history.append(reply)
            if partial is not None:
                reply.row_id = partial.row_id
                self.store.update_message(reply)
            elif self.store is not None and self.session_id is not None:
                self.store.add_message(self.session_id, reply)
        elif history and history[-1].role == "user":
            # Nothing arrived (interrupted before the first token): the user turn is not left dangling.
            self.drop_last_user()
        usage = result.usage
        counter = self.counter
        if usage is None or (usage.input_tokens == 0 and usage.output_tokens == 0):
            usage = Usage(
                counter.count_messages(Message(m["role"], m["content"]) for m in request.messages()),
                # an estimate never exceeds the limit the reply was bounded by
                min(counter.count_text(result.reply), self.settings.max_tokens) if result.reply else 0,
                estimated=True,
            )
        elif request.tokens is not None and request.estimated and usage.input_tokens and not usage.estimated:
            # The request was counted (it came near the window) with an estimate, and the server counted
            # it too: later estimates follow the server's tokenizer, here and in later runs. Only then:
            # a request far from the window is never tokenised, and tiktoken is never loaded for it.
            if counter.calibrate(request.tokens, usage.input_tokens):
                remember_scale(self.settings.base_url, self.model, counter.scale)
        result.usage = usage
        if (
            result.finish_reason == "length"
            and not usage.estimated
            and usage.output_tokens < self.settings.max_tokens * 0.9
        ):
            result.window_full = True
        cost, _ = turn_cost(usage, self.settings, result.model) if self.wants_cost else (None, "")
        stats = TurnStats(result.model, usage, cost, result.ttft, result.latency, result.sent_messages)
        self.turns.append(stats)
        if self.store is not None and self.session_id is not None:
            self.store.add_usage(self.session_id, stats, result.finish_reason)
        status = "interrupted" if result.interrupted else (result.failure.kind if result.failure else "ok")
        self.log(result.model, 200, result.ttft, result.latency, usage, None if status == "ok" else status, cost)

    def warm_up(self) -> None:
        """Load the SDK and build the client (and, when it will be needed, the price table)."""
        try:
            _ = self.provider.client
            settings = self.settings
            if settings.price_in is None and settings.price_out is None and not is_local_url(settings.base_url):
                import genai_prices  # noqa: F401
        except Exception:
            pass  # the real use will report any problem

    def log(
        self,
        model: str,
        status: Any,
        ttft: float | None,
        latency: float,
        usage: Usage | None,
        error: str | None,
        cost: float | None = None,
    ) -> None:
        """One line per request: no content, never the key. Estimated token counts end in "~"."""
        tokens = (
            "-" if usage is None else f"{usage.input_tokens}/{usage.output_tokens}" + ("~" if usage.estimated else "")
        )
        label = f" {self.label}" if self.label else ""
        window = self.window
        window_text = f" window={window.tokens}({window.source.replace(' ', '_')})" if window else ""
        fields = (
            f"model={model}{label} host={self.settings.host}{window_text} status={status} "
            f"ttft={'-' if ttft is None else f'{ttft:.3f}s'} latency={latency:.3f}s tokens={tokens} "
            f"cost={'-' if cost is None else f'{cost:.6f}'} error={error or '-'}"
        )
        write_log(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {fields}")
        if self.log_sink is not None:
            self.log_sink(fields)  # a logger that stamps its own time
