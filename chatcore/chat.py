"""A chat: one conversation with one provider, prepare -> stream -> record, saved when it has a session.

The chat owns its conversation: every change to it (a message sent, a retry, an undo, clearing,
switching model or system prompt) happens here, behind a method with a plain name, and is saved
here. Front-ends show the conversation; they never edit it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .attachments import (
    Attachment,
    Kind,
    check_message,
    fit_to_window,
    image_tokens,
    images_in,
    refuses_images,
    transcribe,
)
from .budget import Budget, Payer
from .conversation import (
    DEFAULT_CONTEXT_TOKENS,
    Conversation,
    Message,
    PromptTooLarge,
    Request,
    Status,
    build_request,
    token_budget,
)
from .log import write_log
from .provider import Failure, Provider, rejected_parameter, shown_models
from .roles import DEFAULT, Role
from .saving import NOT_SAVED, SavedSession
from .serverinfo import Window, ask_window, cached_scale, cached_window, remember_scale, remember_window
from .settings import Settings, is_local_url
from .store import SessionStore, StoreError
from .streams import TEXT, Event
from .tokens import TokenCounter, encoding_for_model
from .turn import Cancel, Outcome, TurnResult, stream_turn
from .usage import TurnStats, Usage, model_info, total_usage, turn_cost

OnEvent = Callable[[Event, str], None]


class Refused(Exception):
    """A change the conversation cannot take now ("nothing to undo"); the message says why."""


class NoVision(Failure):
    """The model (and the fallback, if any) cannot see images: the message is taken back, to resend."""


@dataclass
class ChatStats:
    """What /stats shows, in both front-ends: each formats it in its own words."""

    messages: int  # in memory, the system prompt included
    exchanges: int  # user messages
    requests: int  # model calls made, fallbacks and our own retries included
    usage: Usage  # summed over the requests
    money: str  # the cost as text: a total, a known part, or "cost unknown"
    estimated: Literal["", "some", "all"]  # which of the token counts are estimates
    last: TurnStats | None  # the newest request's figures
    last_sent: int | None  # messages the newest request sent, the system prompt included
    last_dropped: int  # history messages it left out
    window: Window | None  # the context window, if known (or asked, when the caller allows)
    model: str  # the model of this chat; `last.model` says which one answered last
    image_tokens: int = 0  # what the newest request's images count for (included in its input tokens)
    image_rule: str = ""  # how they were counted: "OpenAI's tile rule", or an estimate


@dataclass
class Attempt:
    """What a turn's own retries change: the model (a fallback) and a tighter budget (an overflow)."""

    model: str
    cap: int | None = None  # a tighter token budget, after the server said the context overflowed
    tried_fallback: bool = False


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
        *,
        provider: Provider | None = None,
        store: SessionStore | None = None,
        label: str = "",
        log_sink: Callable[[str], None] | None = None,
        wants_cost: bool = True,
        budget: Budget | None = None,
        saved_choices_win: bool = False,
    ):
        self.settings = settings
        self.model = settings.model
        self.temperature = settings.temperature  # the conversation's own, once it chooses one (a role)
        self.chosen: set[str] = set()  # which of model, system and temperature this conversation chose
        # Whose word counts when a saved session is opened: the session's own choices (the Telegram
        # assistant: each chat its own), or what the settings set explicitly (the terminal: -m, -s, -t).
        self.saved_choices_win = saved_choices_win
        self.conversation = Conversation(settings.system)
        self.provider = provider or Provider(settings, notify)
        self.notify = notify
        self.store = store  # the sessions database, when this chat is saved
        self.session: SavedSession = NOT_SAVED  # where changes are written, once a session is opened
        self.label = label  # who this conversation is, for the request log: "chat=12345"
        self.log_sink = log_sink  # where request log lines go besides the log file
        self.wants_cost = wants_cost  # plain one-shot output shows no cost: the price table is not loaded
        self.budget = budget  # per-user spending caps (the Telegram assistant): checked before every call
        self._payer: Payer | None = None  # whom the turn in progress is counted for
        self.requests: list[TurnStats] = []  # one per model call
        self.last_request: Request | None = None
        self._counter: TokenCounter | None = None
        self.window: Window | None = None  # the model's context window and where the figure came from
        self._window_asked = False
        self._use_model(self.model)
        self._partial: Message | None = None  # the reply as checkpointed so far, while it streams
        self._unsaved = ""  # why a checkpoint of the reply streaming could not be saved (said once it ends)
        self._replacing: Message | None = None  # the reply a /retry replaces, until the new one has text
        self.blind_models: set[str] = set()  # models that refused images, for the rest of the session

    @property
    def saved(self) -> bool:
        return self.session is not NOT_SAVED

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
                bound = min(settings.timeout, 3.0)  # what asking may add before the first request
                self.window = ask_window(settings.base_url, self.model, settings.api_key, local, bound)
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

    def _use_model(self, model: str) -> None:
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
        request.temperature = self.temperature
        return request

    # -- summaries of dropped turns -------------------------------------------

    SUMMARY_BATCH = 4  # messages that must drop out before a stored summary is brought up to date

    def summarize_dropped(self, request: Request) -> Request | None:
        """Summarise the turns trimming drops, once; the summary is stored and reused."""
        conversation = self.conversation
        covered = len(conversation.history) - len(request.kept)
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
            kept=[Message("user", previous + transcript[-20_000:])],
        )
        self._check_budget(summary_request, self.model)
        try:
            result = stream_turn(self.provider, summary_request, self.model, lambda _kind, _text: None)
        except Failure as exc:
            self.notify(f"could not summarise older turns: {exc}")
            return None
        result.usage = self._usage(result, summary_request)
        self._account(result)  # a request like any other: /stats and the cost count it
        if not result.reply.strip():
            return None
        conversation.summary, conversation.summary_covers = result.reply.strip(), covered
        self.session.save_summary(conversation.summary, covered)
        self.notify(f"summarised {len(new_turns)} older messages")
        return build_request(
            conversation,
            self.settings.max_messages,
            token_budget(self.context_tokens(False), self.settings.max_tokens),
            self.counter,
        )

    # -- the conversation's edits: each one saved here --------------------------

    def send(
        self,
        text: str,
        on_event: OnEvent,
        stream: bool = True,
        cancel: Cancel | None = None,
        attachments: Sequence[Attachment] = (),
        on_added: Callable[[Message], None] | None = None,
        payer: Payer | None = None,
        in_place_of: int | None = None,
    ) -> TurnResult:
        """Add the user's message (with any attachments) and answer it. `on_added` hears of the
        message once it is saved, before the request (the Telegram front-end ties it to the updates
        it answers). `payer`: whom the turn's model calls are counted for, with the chat's budget.
        `in_place_of`: the history row of a message the user edited: its exchange is taken out and
        this one takes its place; a redo that fails, is refused or comes back empty puts it back.

        Whatever ends the turn without a reply (a Failure, PromptTooLarge, Ctrl-C while the request
        is prepared, a bug) takes the message back out: the history never keeps a message that got
        no answer, and the saved session says the same. Attachments are checked first
        (AttachmentError, TranscriptionError, NoVision for a model known to refuse images): then
        nothing is added and nothing is sent. OverBudget (the payer reached a cap) is raised before
        any model call, and the message is taken back out."""
        attached = self.ready_attachments(attachments)
        replaced = self.take_back({in_place_of}) if in_place_of is not None else []
        try:
            message = self._add_user(text, attached)
            if on_added is not None:
                on_added(message)
            result = self._answer(on_event, stream, cancel, payer)
        except BaseException:
            self._put_back(replaced, on_added)
            raise
        if not result.reply:
            self._put_back(replaced, on_added)
        return result

    def _put_back(self, exchange: list[Message], on_added: Callable[[Message], None] | None) -> None:
        """An edit's redo that got no reply: the exchange it was to replace comes back, saved anew
        (`on_added` hears of its user message: the edited message is that one again)."""
        if not exchange:
            return
        history = self.conversation.history
        if history and history[-1].role == "user" and all(history[-1] is not m for m in exchange):
            self.session.delete([history.pop()])  # the edited message, answered with nothing: the old one stands
        for message in exchange:
            history.append(message)
            self.session.add(message)
        if on_added is not None and exchange[0].role == "user":
            on_added(exchange[0])

    def ready_attachments(self, attachments: Sequence[Attachment]) -> list[Attachment]:
        """The attachments as they will be sent: checked against the limits and the model, voice
        transcribed, text trimmed to what the window allows (with a note). Nothing is sent to the model."""
        attached = list(attachments)
        if not attached:
            return attached
        check_message(attached, self.settings)
        if images_in(attached) and self.model in self.blind_models and self._fallback_for_images() is None:
            raise self._no_vision(self.model, remembered=True)
        for index, attachment in enumerate(attached):
            if not attachment.transcribed:
                attached[index] = self.transcribe(attachment)
        return self._fit_text(attached)

    def transcribe(self, attachment: Attachment) -> Attachment:
        """A voice attachment with its transcript (TranscriptionError if it cannot be had); the audio is let go."""
        if attachment.kind is not Kind.AUDIO or attachment.text:
            return attachment
        text = transcribe(self.settings, attachment.data, attachment.name)
        return Attachment(Kind.AUDIO, attachment.name, attachment.mime, text=text, size=attachment.size)

    def _fit_text(self, attached: list[Attachment]) -> list[Attachment]:
        """Text, PDF and transcripts larger than the window allows are cut to fit, with a note saying so."""
        size = sum(len(a.text.encode("utf-8", "surrogatepass")) for a in attached if a.kind is not Kind.IMAGE)
        if size < 4 * 2048:
            return attached  # far below any window: not worth counting
        counter = self.counter
        room = token_budget(self.context_tokens(True), self.settings.max_tokens)
        room -= counter.count_text(self.conversation.system) + 200  # the typed text and overheads
        room -= sum(image_tokens(image, self.model)[0] for image in images_in(attached))
        fitted, notes = fit_to_window(attached, room, counter.count_text)
        for note in notes:
            self.notify(note)
        return fitted

    def _no_vision(self, model: str, remembered: bool = False) -> NoVision:
        self.blind_models.add(model)
        why = " (it refused images earlier in this session)" if remembered else ""
        return NoVision(
            f"the model {model} cannot see images{why}: pick one that can with /model NAME or --model "
            f"(e.g. gpt-4o-mini; on a local server, a vision model loaded with its projector, such as llava "
            f"or qwen2.5-vl); your message is kept",
            "no_vision",
        )

    def retry(
        self, on_event: OnEvent, stream: bool = True, cancel: Cancel | None = None, payer: Payer | None = None
    ) -> TurnResult:
        """Answer the last message again, in place of its reply (if it has one).

        The old reply goes only once the new one has text (saved, even if it is cut short later):
        a retry that fails, is stopped before it begins, comes back empty or dies with the process
        leaves the conversation as it was, the old reply included."""
        history = self.conversation.history
        if not history:
            raise Refused("nothing to retry yet")
        self._replacing = history.pop() if history[-1].role == "assistant" else None
        try:
            result = self.respond(on_event, stream, cancel, payer)
        except BaseException:
            self._settle_retry(replaced=False)
            raise
        self._settle_retry(replaced=bool(result.reply))
        return result

    def _settle_retry(self, replaced: bool) -> None:
        old, self._replacing = self._replacing, None
        if old is None:
            return
        if replaced:
            self.session.delete([old])
            return
        history = self.conversation.history
        if history and history[-1].status is Status.UNANSWERED:  # the empty retry does not count
            history[-1].status = Status.COMPLETE
            self.session.update(history[-1])
        history.append(old)  # never deleted on disk

    def undo(self) -> list[Message]:
        """Remove the last exchange (the last user message and what followed it); returns it."""
        start = self.conversation.last_exchange_start()
        if start is None:
            raise Refused("nothing to undo")
        removed = self.conversation.history[start:]
        del self.conversation.history[start:]
        self.session.delete(removed)
        self.last_request = None  # what it sent is no longer the conversation's
        return removed

    def clear(self) -> None:
        """Forget the conversation, from memory and from the saved session (the system prompt stays)."""
        self.conversation.clear()
        self.session.clear()
        self.last_request = None

    def switch_model(self, model: str) -> None:
        """Answer with another model from now on; refused when the server lists its models and this is not one."""
        models = self.provider.list_models()
        if models and model not in models:
            raise Refused(f"unknown model {model!r}: the server offers {shown_models(models)}")
        self._use_model(model)
        self._choose("model", model=model)

    def set_system(self, text: str) -> None:
        self.conversation.system = text
        self._choose("system", system=text)

    def set_temperature(self, temperature: float) -> None:
        """Sample at this temperature (0 to 2) from now on."""
        self.temperature = temperature
        self._choose("temperature", temperature=temperature)

    def reset_system(self) -> None:
        """Back to the configured system prompt."""
        self.conversation.system = self.settings.system
        self._unchoose("system", system=self.settings.system)

    def reset_model(self) -> None:
        """Back to the configured model (no request: the configured model needs no checking)."""
        if self.model != self.settings.model:
            self._use_model(self.settings.model)
        self._unchoose("model", model=self.model)

    def apply_role(self, role: Role) -> None:
        """Take on a role: its system prompt, and its model and temperature when it sets them (a role
        without them keeps the current ones). The default role is the configured prompt, model and
        temperature. Refused (and nothing changed) if the server does not list the role's model."""
        if role.name == DEFAULT:
            self.reset_model()
            self.reset_system()
            self.temperature = self.settings.temperature
            self._unchoose("temperature", temperature=None)
            return
        if role.model and role.model != self.model:
            self.switch_model(role.model)
        self.set_system(role.system)
        if role.temperature is not None:
            self.set_temperature(role.temperature)

    def _choose(self, name: str, **values: Any) -> None:
        self.chosen.add(name)
        self.session.set_meta(chosen=",".join(sorted(self.chosen)), **values)

    def _unchoose(self, name: str, **values: Any) -> None:
        self.chosen.discard(name)
        self.session.set_meta(chosen=",".join(sorted(self.chosen)), **values)

    def rename_session(self, name: str) -> None:
        self.session.rename(name)  # StoreError when the name is taken

    def take_back(self, row_ids: set[int]) -> list[Message]:
        """Take out the first saved message of `row_ids` and everything after it (an earlier run's
        unfinished turn, to be answered anew); returns what was taken out."""
        history = self.conversation.history
        start = next((i for i, m in enumerate(history) if m.row_id is not None and m.row_id in row_ids), None)
        if start is None:
            return []
        removed = history[start:]
        del history[start:]
        self.session.delete(removed)
        return removed

    def take_back_unanswered(self) -> str | None:
        """A resumed conversation ending in a message that never got its reply (the last run ended
        first): the message is taken out and returned, for the front-end to offer again. (One the
        model answered with nothing stays: the next message joins it.)"""
        message = self.take_back_unanswered_message()
        return message.content if message is not None else None

    def take_back_unanswered_message(self) -> Message | None:
        """As take_back_unanswered, the whole message: its attachments too, to queue for the resend."""
        history = self.conversation.history
        if not history or history[-1].role != "user" or history[-1].status is Status.UNANSWERED:
            return None
        message = history.pop()
        self.session.delete([message])
        return message

    def _add_user(self, text: str, attachments: list[Attachment] | None = None) -> Message:
        message = Message("user", text, attachments=attachments or [])
        history = self.conversation.history
        if history and history[-1].role == "user":
            # Never two user turns in a row: the model answered the last one with nothing, or a previous
            # run ended before its reply (a front-end that answers such a message anew calls
            # take_back_unanswered first). Merge: the question goes with what follows it.
            joined = history[-1]
            joined.content += "\n\n" + text
            joined.tokens, joined.status = None, Status.COMPLETE
            self.session.update(joined)
            if attachments:
                joined.attachments += attachments
                self.session.attach(joined, attachments)
            return joined
        history.append(message)
        self.session.add(message)  # write-ahead: saved before the request
        return message

    def _drop_unanswered(self) -> None:
        history = self.conversation.history
        if history and history[-1].role == "user":
            self.session.delete([history.pop()])

    def _answer(self, on_event: OnEvent, stream: bool, cancel: Cancel | None, payer: Payer | None) -> TurnResult:
        try:
            result = self.respond(on_event, stream, cancel, payer)
        except BaseException:
            self._drop_unanswered()
            raise
        if not result.reply and result.outcome is not Outcome.EMPTY:
            self._drop_unanswered()  # stopped before the first word: the message is offered again
        return result

    # -- one turn, with the retries of our own ------------------------------------

    def respond(
        self, on_event: OnEvent, stream: bool = True, cancel: Cancel | None = None, payer: Payer | None = None
    ) -> TurnResult:
        """Send the history (ending with a user message) and record the reply.

        Retries what a retry of our own can fix: a rejected optional parameter, an overflowing
        context (once, with a tighter budget) and, for a retryable failure, the fallback model.
        A failure before any text raises Failure (the caller takes the message back out); so does
        OverBudget, checked before each model call (the summary's and the retries' too), when the
        chat has a budget and the payer reached a cap."""
        self._payer = payer
        try:
            return self._respond(on_event, stream, cancel)
        finally:
            self._payer = None

    def _respond(self, on_event: OnEvent, stream: bool, cancel: Cancel | None) -> TurnResult:
        attempt = Attempt(self.model)
        if self.saved:
            on_event = self._checkpointing(on_event)
        while True:
            request = self.prepare(attempt.cap)
            self._say_dropped(request)
            self._around_blind_model(request, attempt)
            self.last_request = request
            self._check_budget(request, attempt.model)
            try:
                result = stream_turn(self.provider, request, attempt.model, on_event, stream, cancel)
                break
            except Failure as failure:
                self.log(attempt.model, failure.status or "error", None, failure.latency, None, failure.kind)
                self._charge_unanswered(failure, request, attempt.model)
                failure = self._as_overflow(failure, request, attempt)
                if self._images_refused(failure, request, attempt):
                    continue
                if not self._retry_helps(failure, request, attempt, stream):
                    raise self._explained(failure) from None
        self.record(result, request)
        return result

    def _fallback_for_images(self) -> str | None:
        fallback = self.settings.fallback_model
        return fallback if fallback and fallback not in self.blind_models else None

    def _around_blind_model(self, request: Request, attempt: Attempt) -> None:
        """A request with images for a model that refused them this session goes to the fallback at once."""
        fallback = self._fallback_for_images()
        if attempt.model not in self.blind_models or fallback is None or attempt.tried_fallback:
            return
        if any(images_in(m.attachments) for m in request.kept if m.attachments):
            attempt.model, attempt.tried_fallback = fallback, True
            self.notify(f"{self.model} cannot see images (it refused them earlier): asking {fallback}")

    def _images_refused(self, failure: Failure, request: Request, attempt: Attempt) -> bool:
        """A model that cannot see images: True when the fallback model is to be tried; NoVision when
        there is none left to try (remembered, so the next message with an image is not sent to it)."""
        if not any(images_in(m.attachments) for m in request.kept if m.attachments):
            return False
        if not refuses_images(failure.status, str(failure)):
            return False
        self.blind_models.add(attempt.model)
        fallback = self.settings.fallback_model
        if fallback and not attempt.tried_fallback and attempt.model != fallback and fallback not in self.blind_models:
            attempt.tried_fallback = True
            self.notify(f"{attempt.model} cannot see images; trying the fallback model {fallback}")
            attempt.model = fallback
            return True
        raise self._no_vision(attempt.model) from None

    def _say_dropped(self, request: Request) -> None:
        if request.dropped:
            about = "about " if request.estimated else ""
            tokens = f" ({about}{request.dropped_tokens:,} tokens)" if request.dropped_tokens else ""
            self.notify(f"{request.dropped} older message{'s' if request.dropped != 1 else ''} not sent{tokens}")

    def _sent_size(self, failure: Failure, request: Request, attempt: Attempt) -> int:
        """The request's size, counted only when an overflow is in question."""
        if failure.kind not in ("no_finish", "context_length") or attempt.cap is not None:
            return 0
        return self.counter.count_messages([Message("system", request.system), *request.kept])

    def _as_overflow(self, failure: Failure, request: Request, attempt: Attempt) -> Failure:
        """Some servers (llama-cpp-python) answer a prompt larger than their window with an empty
        stream: nothing at all came back, for a large prompt. That is an overflow."""
        if failure.kind != "no_finish":
            return failure
        sent = self._sent_size(failure, request, attempt)
        if not sent or (sent < 1024 and sent < self.context_tokens(False) // 2):
            return failure
        if len(request.kept) == 1:  # nothing older to leave out: the message alone is too large
            return failure.retold(
                f"the server sent back nothing for your message of about {sent:,} tokens: it is probably "
                f"larger than the model's context window, so shorten it",
                "message_too_long",
            )
        return failure.retold(
            f"the server sent back nothing for a prompt of about {sent:,} tokens: it is "
            f"probably larger than the model's context window",
            "context_length",
        )

    def _retry_helps(self, failure: Failure, request: Request, attempt: Attempt, stream: bool) -> bool:
        """True when a retry of our own can fix the failure: `attempt` is changed for it."""
        if self.unsupported_parameter(failure, request, attempt.model, stream):
            return True
        if failure.kind == "context_length" and attempt.cap is None and len(request.kept) > 1:
            sent = self._sent_size(failure, request, attempt)
            if failure.window:
                self.learn_window(failure.window, "the server's context-length error")
            elif sent >= 1024:  # a large prompt that did not fit: the window is no bigger than it
                self.learn_window(min(sent, self.context_tokens(False)), f"an overflow at {sent:,} tokens")
            attempt.cap = int(sent * 0.75)
            self.notify(
                f"the context window ({self.context_tokens(False):,} tokens) overflowed: retrying "
                f"once with fewer older turns"
            )
            return True
        fallback = self.settings.fallback_model
        if failure.retryable and fallback and not attempt.tried_fallback and attempt.model != fallback:
            attempt.tried_fallback = True
            self.notify(f"{attempt.model} failed ({failure}); trying the fallback model {fallback}")
            attempt.model = fallback
            return True
        return False

    def _explained(self, failure: Failure) -> Failure:
        """The failure to report, with what the user can do about it when we know."""
        if failure.kind != "unknown_model":
            return failure
        models = self.provider.list_models()
        if models:
            return failure.retold(f"{failure}. The server offers: {shown_models(models)}")
        return failure.retold(f"{failure}. Check the provider's model list, or GET {self.settings.base_url}/models")

    def unsupported_parameter(self, failure: Failure, request: Request, model: str, stream: bool) -> bool:
        """True when the failure rejected an optional parameter we sent: the retry goes without it."""
        if failure.status not in (400, 422):
            return False
        parameter = rejected_parameter(str(failure), failure.param)
        if not self.provider.reject(parameter, self.provider.request_params(request, model, stream)):
            return False
        self.notify(f"the provider rejected {parameter}: retrying without it (remembered for this session)")
        return True

    # -- sessions ----------------------------------------------------------------

    def open_session(self, name: str) -> bool:
        """Claim a saved session (StoreError if another process has it) and load it; True if it existed.

        On a read-only store the session (if it exists) is loaded and nothing is saved: the chat goes on."""
        store = self.store
        if store is None:
            raise StoreError("sessions are off")
        if store.readonly:
            row = store.find(name)
            if row is not None:
                self._load(*store.load(row.id))
            else:
                self._load(Conversation(self.conversation.system), [], "")
            self.session = NOT_SAVED
            return row is not None
        session_id, existed = store.open(name, self.model, self.settings.host, self.conversation.system)
        if self.saved and self.session.id != session_id:
            self.session.leave()
        self.session = SavedSession(store, session_id)
        if not existed:
            self._load(Conversation(self.conversation.system), [], "")
            if self.chosen:  # chosen before the session began (--role): the new session has them too
                temperature = self.temperature if "temperature" in self.chosen else None
                self.session.set_meta(temperature=temperature, chosen=",".join(sorted(self.chosen)))
            return False
        conversation, requests, model = store.load(session_id)
        temperature, self.chosen = store.load_choices(session_id)
        if not self._keeps_saved("system") and conversation.system != self.settings.system:
            conversation.system = self.settings.system  # -s given (or no prompt of its own): it replaces the saved one
            self.session.set_meta(system=self.settings.system)
        saved = temperature if self._keeps_saved("temperature") else None  # None: the configured one
        self.temperature = saved if saved is not None else self.settings.temperature
        self._load(conversation, requests, model)
        return True

    def _keeps_saved(self, name: str) -> bool:
        """Whether a resumed session keeps its saved model, system prompt or temperature (see __init__)."""
        return name in self.chosen if self.saved_choices_win else name not in self.settings.sources

    def _load(self, conversation: Conversation, requests: list[TurnStats], model: str) -> None:
        self.conversation, self.requests, self.last_request = conversation, requests, None
        if model and model != self.model and self._keeps_saved("model"):
            self._use_model(model)

    def leave(self) -> None:
        """Let go of the session (an empty one is not kept, the claim is released); the store stays
        open: whoever opened it closes it."""
        self.session.leave()
        self.session = NOT_SAVED

    CHECKPOINT_SECONDS = 0.5

    def _checkpointing(self, on_event: OnEvent) -> OnEvent:
        """Save the reply while it streams, marked incomplete until it completes, so a process
        killed mid-reply (even by SIGKILL) leaves the text it had shown in the session."""
        parts: list[str] = []
        saved_at = [0.0]
        self._partial = None

        def on_event_saving(kind: Event, text: str) -> None:
            on_event(kind, text)
            if kind is TEXT:
                parts.append(text)
                now = time.monotonic()
                if now - saved_at[0] >= self.CHECKPOINT_SECONDS:
                    saved_at[0] = now
                    self._checkpoint("".join(parts))

        return on_event_saving

    def _checkpoint(self, text: str) -> None:
        """Save the reply so far. A database that refuses (another program holding it past the busy
        timeout) costs this checkpoint only: the reply streams on, and the next one (or its end) saves."""
        try:
            if self._partial is None:
                partial = Message("assistant", text, Status.INCOMPLETE)
                self.session.add(partial)
                self._partial = partial
                if self._replacing is not None:  # /retry: the new reply has begun, on disk too
                    self.session.delete([self._replacing])
                    self._replacing = None
            else:
                self._partial.content = text
                self.session.update(self._partial)
        except StoreError as exc:
            self._unsaved = str(exc)

    # -- after the reply -----------------------------------------------------------

    def record(self, result: TurnResult, request: Request) -> None:
        """Append the reply (partial replies marked) and account for usage and cost."""
        partial, self._partial = self._partial, None
        if self._unsaved:
            self.notify(f"the reply could not be saved while it streamed ({self._unsaved}); saving it now")
            self._unsaved = ""
        history = self.conversation.history
        if result.reply:
            reply = Message("assistant", result.reply, result.status)
            history.append(reply)
            if partial is not None:
                reply.row_id = partial.row_id
                self.session.update(reply)
            else:
                self.session.add(reply)
        elif result.outcome is Outcome.EMPTY and history and history[-1].role == "user":
            history[-1].status = Status.UNANSWERED  # kept: "try again" or the next message carries it
            self.session.update(history[-1])
        result.usage = self._usage(result, request)
        self._window_full_yet(result, result.usage)
        self._account(result)

    def _check_budget(self, request: Request, model: str) -> None:
        """Before a model call: OverBudget if the turn's payer has reached a cap, or would pass one with
        this request's prompt alone (its size, and so its cost, is known before it is sent)."""
        if self.budget is None or self._payer is None or not self.budget.binds(self._payer):
            return
        prompt = TurnResult(model=model, sent_messages=len(request.kept) + 1)
        prompt.usage = self._usage(prompt, request)  # the prompt, estimated; no reply yet
        self.budget.check(self._payer, self._stats_of(prompt)[0])

    def _account(self, result: TurnResult) -> None:
        """One request's usage and cost: counted in /stats and the payer's budget, saved with the
        session, logged."""
        stats, source = self._stats_of(result)
        self._charge(stats, source)
        usage, cost = stats.usage, stats.cost
        self.requests.append(stats)
        self.session.add_usage(stats, result.finish_reason)
        status = "interrupted" if result.interrupted else (result.failure.kind if result.failure else "ok")
        self.log(result.model, 200, result.ttft, result.latency, usage, None if status == "ok" else status, cost)

    def _stats_of(self, result: TurnResult) -> tuple[TurnStats, str]:
        """A request's figures, and where its cost came from ("provider", "settings", ... or "")."""
        usage = result.usage or Usage(estimated=True)
        cost, source = turn_cost(usage, self.settings, result.model) if self.wants_cost else (None, "")
        return TurnStats(result.model, usage, cost, result.ttft, result.latency, result.sent_messages), source

    def _charge(self, stats: TurnStats, source: str) -> None:
        """Count a model call for the turn's payer, when the chat has a budget."""
        if self.budget is not None and self._payer is not None:
            self.budget.record(self._payer, stats, reported=source == "provider")

    def _charge_unanswered(self, failure: Failure, request: Request, model: str) -> None:
        """A request the server had and did not answer in time (a deadline, a stalled stream) may be
        billed all the same: the payer's budget counts its prompt, estimated, as for a /cancel. One
        the server refused (an error status) or never got (no connection) costs nothing."""
        if failure.kind not in ("deadline", "stall"):
            return
        result = TurnResult(model=model, latency=failure.latency or 0.0, sent_messages=len(request.kept) + 1)
        result.usage = self._usage(result, request)
        self._charge(*self._stats_of(result))

    def _window_full_yet(self, result: TurnResult, usage: Usage) -> None:
        """A "length" finish well below the output limit: the context window ran out, not the limit.
        Its size is now known (the prompt and the reply filled it): learned and remembered, so the
        next turn sends fewer older messages."""
        limit = self.settings.max_tokens * (0.5 if usage.estimated else 0.9)  # estimates are rougher
        if result.finish_reason != "length" or usage.output_tokens >= limit:
            return
        filled = usage.input_tokens + usage.output_tokens
        if filled < 1024:  # no model's window is this small: a limit of the server's own, not the window
            result.below_limit = True
            return
        result.window_full = True
        if filled < self.context_tokens(False):
            about = "about " if usage.estimated else ""
            self.learn_window(filled, f"a reply cut off at {about}{filled:,} tokens")

    def _usage(self, result: TurnResult, request: Request) -> Usage:
        """The server's counts, or estimates (labelled) where it sent none."""
        usage, counter = result.usage, self.counter
        if usage is None or (usage.input_tokens == 0 and usage.output_tokens == 0):
            return Usage(
                counter.count_messages([Message("system", request.system), *request.kept]),
                # an estimate never exceeds the limit the reply was bounded by
                min(counter.count_text(result.reply), self.settings.max_tokens) if result.reply else 0,
                estimated=True,
            )
        # The request was counted (it came near the window) with an estimate, and the server counted
        # it too: later estimates follow the server's tokenizer, here and in later runs. Only then:
        # a request far from the window is never tokenised, and tiktoken is never loaded for it.
        if (
            request.tokens is not None
            and request.estimated
            and usage.input_tokens
            and not usage.estimated
            and counter.calibrate(request.tokens, usage.input_tokens)
        ):
            remember_scale(self.settings.base_url, self.model, counter.scale)
        return usage

    def stats(self, ask_window: bool = False) -> ChatStats:
        """The chat's figures for /stats. `ask_window` may ask the server (a blocking request)."""
        requests, history = self.requests, self.conversation.history
        usage, money = total_usage(requests)
        estimated: Literal["", "some", "all"] = ""
        if usage.estimated:
            estimated = "all" if all(t.usage.estimated for t in requests) else "some"
        last = self.last_request
        images = [(m, a) for m in (last.kept if last is not None else []) for a in images_in(m.attachments)]
        counted = [image_tokens(a, requests[-1].model if requests else self.model) for _, a in images]
        return ChatStats(
            messages=len(history) + 1,
            exchanges=sum(1 for m in history if m.role == "user"),
            requests=len(requests),
            usage=usage,
            money=money,
            estimated=estimated,
            last=requests[-1] if requests else None,
            last_sent=len(last.kept) + 1 if last is not None else None,
            last_dropped=last.dropped if last is not None else 0,
            window=self.context_window(False) if ask_window and requests else self.window,
            model=self.model,
            image_tokens=sum(tokens for tokens, _ in counted),
            image_rule=counted[0][1] if counted else "",
        )

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
        request = self.last_request
        attached = [a for m in request.kept[-1:] for a in m.attachments] if request is not None else []
        # by type and size only: never a name (it can say as much as the content) nor the content
        attachments = f" attachments={','.join(a.describe().replace(' ', '_') for a in attached)}" if attached else ""
        window = self.window
        window_text = f" window={window.tokens}({window.source.replace(' ', '_')})" if window else ""
        fields = (
            f"model={model}{label} host={self.settings.host}{window_text} status={status} "
            f"ttft={'-' if ttft is None else f'{ttft:.3f}s'} latency={latency:.3f}s tokens={tokens} "
            f"cost={'-' if cost is None else f'{cost:.6f}'} error={error or '-'}{attachments}"
        )
        write_log(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {fields}")
        if self.log_sink is not None:
            self.log_sink(fields)  # a logger that stamps its own time
