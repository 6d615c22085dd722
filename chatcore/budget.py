"""Spending caps: what each user of a shared assistant spent today and this month, and whether the
next model call may go.

A Chat given a `Budget` records every model call it makes for the turn's `Payer` (replies, those
stopped or cut short, summaries of dropped turns, its own retries), as it happens, from the same
usage and cost as /stats (`Chat._account`): the provider's reported cost when there is one, else
the estimate from prices, counted as an estimate. It checks the budget before each call, so a cap
is overshot by at most the calls already under way when it was reached (one user's chats
answering at once). Days are UTC days, months calendar months in UTC. The spending lives in the
`spending` table of the sessions database: a crash or a restart does not reset it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Literal, NamedTuple

from .settings import Settings, is_local_url
from .usage import TurnStats, Usage, format_money, turn_cost

if TYPE_CHECKING:
    from .store import SessionStore

log = logging.getLogger("chatbot.budget")
SpendingRow = tuple[str, float, str, int, int, float | None, int]  # a row of the spending table, as inserted
INSERT = (
    "INSERT INTO spending (user, at, model, tokens, tokens_estimated, cost, cost_estimated) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)


class Period(StrEnum):
    """The window a cap counts over; it resets at its end."""

    DAY = "daily"  # a UTC day: resets at 00:00 UTC
    MONTH = "monthly"  # a calendar month in UTC: resets on the 1st at 00:00 UTC


@dataclass(frozen=True)
class Cap:
    """One limit: so much per period, in USD or in tokens (input and output together)."""

    period: Period
    unit: Literal["usd", "tokens"]
    limit: float
    setting: str  # the variable that set it, for the start-up line

    def amount(self, value: float) -> str:
        if self.unit == "tokens":
            return f"{int(value):,} tokens"
        return format_money(value) if value else "$0"


@dataclass(frozen=True)
class Payer:
    """Whom a model call is counted for: one user, across all their chats and topics."""

    user: str
    exempt: bool = False  # the bot's owners (TELEGRAM_ADMINS): counted, never capped


@dataclass(frozen=True)
class Spent:
    """One cap as it stands for one user."""

    cap: Cap
    spent: float
    estimated: bool  # some of what is counted is an estimate (tokens, or cost from prices)
    resets: datetime
    ahead: float = 0.0  # what the call about to be made adds before its reply: its prompt, estimated

    @property
    def reached(self) -> bool:
        """Nothing is left, or the next call's prompt alone would pass the cap."""
        return self.spent >= self.cap.limit or self.spent + self.ahead > self.cap.limit

    @property
    def passed_by_prompt(self) -> bool:
        return self.spent < self.cap.limit < self.spent + self.ahead

    @property
    def left(self) -> float:
        return max(0.0, self.cap.limit - self.spent)

    def used(self, value: float) -> str:
        return ("~" if self.estimated else "") + self.cap.amount(value)


@dataclass(frozen=True)
class Standing:
    """What a user has spent and has left, at one moment: the engine's decision, in plain words."""

    exempt: bool
    spent: tuple[Spent, ...]  # one per cap in force; none: no cap
    unpriced: int  # calls this month whose cost is unknown: not in the USD figures
    now: datetime

    @property
    def reached(self) -> Spent | None:
        """The cap that stops the next call (the one that resets last, if several), or None."""
        if self.exempt:
            return None
        reached = [s for s in self.spent if s.reached]
        return max(reached, key=lambda s: (s.cap.limit == 0, s.resets)) if reached else None  # 0 never resets

    def note(self) -> str:
        """The polite note in place of a reply: which cap, what was spent, when it resets."""
        over = self.reached
        if over is None:
            return ""
        cap = over.cap
        if cap.limit == 0:
            return "Sorry, only this assistant's owners may use the model here: your messages are not sent to it."
        kind = "spending" if cap.unit == "usd" else "token"
        estimate = " (estimated)" if over.estimated else ""
        if over.passed_by_prompt:
            verb = "cost" if cap.unit == "usd" else "use"
            return (
                f"Sorry, this message would take you past your {cap.period} {kind} limit: "
                f"{over.used(over.spent)} used of {cap.amount(cap.limit)}{estimate}, and sending it (with the "
                f"conversation so far) would {verb} about {cap.amount(over.ahead)}. A shorter message, or /clear "
                f"first, costs less. The limit resets {when(over.resets, self.now)}."
            )
        return (
            f"Sorry, you've reached your {cap.period} {kind} limit: {over.used(over.spent)} used of "
            f"{cap.amount(cap.limit)}{estimate}. It resets {when(over.resets, self.now)}; until then "
            f"your messages are not sent to the model."
        )

    def before(self, prompt: TurnStats) -> Standing:
        """This standing with the call about to be made counted ahead: its prompt's tokens or cost."""
        tokens, cost = prompt.usage.total_tokens, prompt.cost or 0.0
        ahead = tuple(replace(s, ahead=tokens if s.cap.unit == "tokens" else cost) for s in self.spent)
        return replace(self, spent=ahead)

    def lines(self) -> list[str]:
        """For /stats: what is left today and this month, or why there is no cap."""
        if self.exempt:
            return ["Spending cap: none for you (the bot's owners, TELEGRAM_ADMINS, are exempt)"]
        if not self.spent:
            return ["Spending cap: none"]
        lines = []
        for spent in self.spent:
            period = "today" if spent.cap.period is Period.DAY else "this month"
            if spent.cap.limit == 0:
                lines.append(
                    f"Left {period}: none: only the bot's owners may use the model (a cap of {spent.cap.amount(0)})"
                )
                continue
            estimate = " (~ estimated)" if spent.estimated else ""
            lines.append(
                f"Left {period}: {spent.used(spent.left)} of {spent.cap.amount(spent.cap.limit)}{estimate}"
                f" · resets {when(spent.resets, self.now, short=True)}"
            )
        if self.unpriced and any(s.cap.unit == "usd" for s in self.spent):
            lines.append(f"({self.unpriced} requests of unknown cost this month are not counted in dollars)")
        return lines


class OverBudget(Exception):
    """A model call refused before it was made: the payer reached a cap (`standing` says which)."""

    def __init__(self, standing: Standing):
        super().__init__(standing.note())
        self.standing = standing


def when(resets: datetime, now: datetime, short: bool = False) -> str:
    """A reset time in words, in UTC: "at 00:00 UTC, in 3 h 12 min" or "on 1 January at 00:00 UTC"."""
    left = max(0, -int((now - resets).total_seconds() // 60))  # whole minutes, rounded up
    hours, minutes = divmod(left, 60)
    wait = f"{round(left / 1440)} days" if hours >= 48 else f"{hours} h {minutes} min" if hours else f"{minutes} min"
    if resets - now <= timedelta(days=1):
        return "00:00 UTC" if short else f"at 00:00 UTC, in {wait}"
    day = f"{resets.day} {resets:%B}"
    return f"{day} 00:00 UTC" if short else f"on {day} at 00:00 UTC, in {wait}"


def day_start(now: datetime) -> datetime:
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


def month_start(now: datetime) -> datetime:
    return day_start(now).replace(day=1)


def next_month(start: datetime) -> datetime:
    return start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)


def prices_known(settings: Settings) -> bool:
    """Whether calls can have a cost: prices configured, or a cloud provider (its reported cost or the
    price table). A local server without configured prices has none."""
    return settings.price_in is not None or settings.price_out is not None or not is_local_url(settings.base_url)


def caps_in_force(settings: Settings) -> tuple[tuple[Cap, ...], list[str]]:
    """The caps that apply, and what to say of them once in the log at start."""
    rows: tuple[tuple[Period, Literal["usd", "tokens"], float | None, str], ...] = (
        (Period.DAY, "usd", settings.telegram_budget_daily, "TELEGRAM_BUDGET_DAILY"),
        (Period.MONTH, "usd", settings.telegram_budget_monthly, "TELEGRAM_BUDGET_MONTHLY"),
        (Period.DAY, "tokens", settings.telegram_budget_daily_tokens, "TELEGRAM_BUDGET_DAILY_TOKENS"),
        (Period.MONTH, "tokens", settings.telegram_budget_monthly_tokens, "TELEGRAM_BUDGET_MONTHLY_TOKENS"),
    )
    given = [Cap(period, unit, limit, setting) for period, unit, limit, setting in rows if limit is not None]
    usd = [cap for cap in given if cap.unit == "usd"]
    tokens = [cap for cap in given if cap.unit == "tokens"]
    notes = []
    named = " and ".join(cap.setting for cap in usd)
    if usd and not prices_known(settings):
        instead = "only the token caps apply" if tokens else "no spending cap"
        notes.append(
            f"{instead}: {named} is in USD, and prices at {settings.host} (a local server) are unknown; set "
            f"INPUT_PRICE_PER_MILLION and OUTPUT_PRICE_PER_MILLION, or TELEGRAM_BUDGET_DAILY_TOKENS / "
            f"TELEGRAM_BUDGET_MONTHLY_TOKENS"
        )
        usd = []
    elif usd and turn_cost(Usage(1000, 1000, estimated=True), settings, settings.model)[0] is None:
        notes.append(
            f"{settings.model} is not in the price table: only requests whose cost {settings.host} reports "
            f"count toward {named}; set INPUT_PRICE_PER_MILLION and OUTPUT_PRICE_PER_MILLION to count them all"
        )
    caps = (*usd, *tokens)
    if caps:
        listed = ", ".join(f"{cap.amount(cap.limit)} {cap.period}" for cap in caps)
        notes.insert(0, f"spending caps per user: {listed} (UTC days and months; TELEGRAM_ADMINS exempt)")
    if caps and "*" in settings.telegram_admins:
        notes.append(
            "TELEGRAM_ADMINS is *: everyone is an owner, so no one is capped; name the owners by user id or @username"
        )
    return caps, notes


class Sums(NamedTuple):
    """One user's spending over part of a month, as the database sums it."""

    tokens: int
    tokens_estimated: bool
    cost: float
    cost_estimated: bool
    unpriced: int  # calls whose cost is unknown

    def plus(self, row: SpendingRow) -> Sums:
        """These sums and one more call (a row the database has not taken yet)."""
        _user, _at, _model, tokens, tokens_estimated, cost, cost_estimated = row
        return Sums(
            self.tokens + tokens,
            self.tokens_estimated or bool(tokens_estimated),
            self.cost + (cost or 0.0),
            self.cost_estimated or bool(cost_estimated),
            self.unpriced + (cost is None),
        )


class Budget:
    """Per-user spending in the sessions database, and the caps it is held to. Thread-safe: it uses the
    store's connection under the store's lock."""

    KEEP_MONTHS = 2  # rows older than the start of the previous month are deleted

    def __init__(self, settings: Settings, store: SessionStore, clock: Callable[[], float] = time.time):
        """`clock`: seconds since the epoch (a test moves it across a day or a month)."""
        self.caps, self.notes = caps_in_force(settings)
        self.db, self.lock, self.clock = store.db, store.lock, clock
        self.unsaved: list[SpendingRow] = []  # rows the database refused, oldest first: counted all the same
        with self.lock:
            previous = month_start(month_start(self.now()) - timedelta(days=1))
            self.db.execute("DELETE FROM spending WHERE at < ?", (previous.timestamp(),))

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    def record(self, payer: Payer, stats: TurnStats, reported: bool) -> None:
        """One model call's usage and cost (reported by the provider, or else an estimate), counted at once.
        A row the database refuses (a full or failing disk, a lock held too long) is kept in memory and
        still counted, and written with the next call's: the call was made and paid for, so its reply
        is not lost for it, and the cap still holds."""
        import sqlite3  # the store has loaded it already; importing the engine loads nothing

        usage = stats.usage
        row: SpendingRow = (
            payer.user,
            self.clock(),
            stats.model,
            usage.total_tokens,
            int(usage.estimated),
            stats.cost,
            int(stats.cost is not None and not reported),
        )
        with self.lock:
            self.unsaved.append(row)
            try:
                while self.unsaved:
                    self.db.execute(INSERT, self.unsaved[0])
                    self.unsaved.pop(0)
            except sqlite3.Error as exc:
                log.warning("spending not saved (%s): counted in memory, written with the next call", exc)

    def standing(self, payer: Payer) -> Standing:
        """What the payer has spent against each cap, and has left."""
        now = self.now()
        day, month = day_start(now), month_start(now)
        with self.lock:
            rows = self.db.execute(
                "SELECT at >= ?, SUM(tokens), MAX(tokens_estimated), TOTAL(cost), MAX(cost_estimated), "
                "SUM(cost IS NULL) FROM spending WHERE user = ? AND at >= ? GROUP BY at >= ?",
                (day.timestamp(), payer.user, month.timestamp(), day.timestamp()),
            ).fetchall()
            unsaved = [row for row in self.unsaved if row[0] == payer.user and row[1] >= month.timestamp()]
        sums = {bool(today): Sums(*row) for today, *row in rows}
        for row in unsaved:
            today = row[1] >= day.timestamp()
            sums[today] = sums.get(today, Sums(0, False, 0.0, False, 0)).plus(row)
        spent = tuple(self._spent(cap, sums, day, month) for cap in self.caps)
        return Standing(payer.exempt, spent, sum(s.unpriced for s in sums.values()), now)

    @staticmethod
    def _spent(cap: Cap, sums: dict[bool, Sums], day: datetime, month: datetime) -> Spent:
        """One cap against the sums of today (True) and of the month's earlier days (False)."""
        counted = [sums[today] for today in ((True,) if cap.period is Period.DAY else (True, False)) if today in sums]
        value: float
        if cap.unit == "tokens":
            value, estimated = sum(s.tokens for s in counted), any(s.tokens_estimated for s in counted)
        else:
            value, estimated = sum(s.cost for s in counted), any(s.cost_estimated for s in counted)
        return Spent(cap, value, estimated, day + timedelta(days=1) if cap.period is Period.DAY else next_month(month))

    def binds(self, payer: Payer) -> bool:
        """Whether any cap applies to the payer (none does to an owner, or with no cap set)."""
        return not payer.exempt and bool(self.caps)

    def check(self, payer: Payer, prompt: TurnStats | None = None) -> None:
        """OverBudget if the payer may not make another model call now: nothing is left, or the call's
        `prompt` (its estimated tokens and cost, known before it is sent) would pass a cap by itself.
        So a cap is overshot only by what a reply adds (at most OPENAI_MAX_OUTPUT_TOKENS each)."""
        if not self.binds(payer):
            return
        standing = self.standing(payer)
        if prompt is not None:
            standing = standing.before(prompt)
        if standing.reached is not None:
            raise OverBudget(standing)
