"""Usage and cost: provider-reported usage, estimates when missing, and prices from settings or genai-prices."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from .settings import Settings, is_local_url


@dataclass
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    cost: float | None = None  # provider-reported cost (OpenRouter), USD
    estimated: bool = False

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


def _int(value: Any) -> int:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


def _usage(raw: dict[str, Any], given: str, produced: str) -> Usage:
    """Usage from a payload whose counts are named `{given}_tokens` and `{produced}_tokens`."""
    details = raw.get(f"{given}_tokens_details") or {}
    out_details = raw.get(f"{produced}_tokens_details") or {}
    cost = raw.get("cost")
    return Usage(
        _int(raw.get(f"{given}_tokens")),
        _int(raw.get(f"{produced}_tokens")),
        _int(details.get("cached_tokens")),
        _int(out_details.get("reasoning_tokens")),
        float(cost) if isinstance(cost, (int, float)) else None,
    )


def usage_from_chat(raw: dict[str, Any]) -> Usage:
    return _usage(raw, "prompt", "completion")


def usage_from_responses(raw: dict[str, Any]) -> Usage:
    return _usage(raw, "input", "output")


def estimate_cost(input_tokens: int, output_tokens: int, input_price: float, output_price: float) -> float:
    """USD for a turn, with prices per million tokens."""
    return input_tokens / 1_000_000 * input_price + output_tokens / 1_000_000 * output_price


_price_lock = threading.Lock()


def model_info(model: str, base_url: str) -> tuple[Any, int | None]:
    """(genai-prices model info or None, context window or None). Imports genai-prices lazily."""
    with _price_lock:
        try:
            from genai_prices import Usage as PriceUsage
            from genai_prices import calc_price

            try:
                calculation = calc_price(PriceUsage(input_tokens=0, output_tokens=0), model, provider_api_url=base_url)
            except LookupError:
                calculation = calc_price(PriceUsage(input_tokens=0, output_tokens=0), model.rsplit("/", 1)[-1])
            return calculation, calculation.model.context_window
        except Exception:
            return None, None


def turn_cost(usage: Usage, settings: Settings, model: str) -> tuple[float | None, str]:
    """(USD or None, source): provider-reported, else env prices, else the price table, else unknown."""
    if usage.cost is not None and not usage.estimated:
        return usage.cost, "provider"
    if settings.price_in is not None or settings.price_out is not None:
        return estimate_cost(
            usage.input_tokens, usage.output_tokens, settings.price_in or 0.0, settings.price_out or 0.0
        ), "configured prices"
    if is_local_url(settings.base_url):
        return None, "unknown"
    try:
        from genai_prices import Usage as PriceUsage
        from genai_prices import calc_price

        price_usage = PriceUsage(
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cache_read_tokens=usage.cached_tokens or None,
        )
        with _price_lock:
            try:
                calculation = calc_price(price_usage, model, provider_api_url=settings.base_url)
            except LookupError:
                calculation = calc_price(price_usage, model.rsplit("/", 1)[-1])
        return float(calculation.total_price), "genai-prices table"
    except Exception:
        return None, "unknown"


@dataclass
class TurnStats:
    """What one turn cost: tokens, money and time."""

    model: str
    usage: Usage
    cost: float | None
    ttft: float | None
    latency: float
    sent_messages: int

    @property
    def tokens_per_second(self) -> float | None:
        if self.ttft is None or self.latency - self.ttft < 0.05 or not self.usage.output_tokens:
            return None
        return self.usage.output_tokens / (self.latency - self.ttft)


def format_money(cost: float | None) -> str:
    if cost is None:
        return "cost unknown"
    return f"${cost:.6f}" if cost < 0.01 else f"${cost:.4f}"


def usage_line(stats: TurnStats) -> str:
    usage = stats.usage
    about = "~" if usage.estimated else ""
    parts = [f"{about}{usage.input_tokens:,} in", f"{about}{usage.output_tokens:,} out"]
    if usage.cached_tokens:
        parts.append(f"{usage.cached_tokens:,} cached")
    if usage.reasoning_tokens:
        parts.append(f"{usage.reasoning_tokens:,} reasoning")
    line = " · ".join(parts) + f" · {format_money(stats.cost)}"
    if stats.ttft is not None:
        line += f" · first token {stats.ttft:.2f}s"
    line += f" · {stats.latency:.2f}s"
    if stats.tokens_per_second:
        line += f" · {stats.tokens_per_second:.0f} tok/s"
    if usage.estimated:
        line += " (estimated)"
    return line


def total_usage(turns: list[TurnStats]) -> tuple[Usage, str]:
    """Usage summed over turns, and the money as text: a total, a known part, or unknown."""
    usage = Usage(
        sum(t.usage.input_tokens for t in turns),
        sum(t.usage.output_tokens for t in turns),
        sum(t.usage.cached_tokens for t in turns),
        sum(t.usage.reasoning_tokens for t in turns),
        estimated=any(t.usage.estimated for t in turns),
    )
    costs = [t.cost for t in turns]
    known = sum(c for c in costs if c is not None)
    if costs and all(c is not None for c in costs):
        return usage, format_money(known)
    return usage, f"{format_money(known)} known, some turns' cost unknown" if known else "cost unknown"
