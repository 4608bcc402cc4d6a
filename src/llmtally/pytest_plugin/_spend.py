"""What one test spent, and the session summary the plugin prints from it.

A ``Spend`` is a plain record made from a test's ``Tally`` when the test ends. Under pytest-xdist
each worker sends its records to the controller as JSON-able dicts (``workeroutput``: execnet
carries only builtins, so money travels as its exact decimal text), and the controller adds up
every worker's. Nothing here reads a ledger or knows about pytest's terminal: ``summary()``
returns lines.

Money is exact (``Decimal``, printed without rounding, as ``str(tally)`` does); a cost that is
partly unknown is shown as a floor (``≥ $0.0011``) and one wholly unknown as ``unknown``, never
as $0, as ``llmtally report`` does. Test ids and model names come from users' code and servers:
every one is escaped before it reaches the terminal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING

from .._core.money import ZERO, format_usd
from .._core.text import printable

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from .._core.tally import Tally

__all__ = ["Spend", "Totals", "summary"]


@dataclass(frozen=True)
class Spend:
    """The LLM calls of one test (its setup, call and teardown)."""

    test: str
    requests: int  # successful and failed
    failed: int
    prompt_tokens: int
    completion_tokens: int
    cost: Decimal  # the priced calls' exact sum, in the display currency
    unpriced: int  # calls whose price is unknown: not in ``cost``
    unpriced_models: tuple[str, ...] = ()
    estimated: int = 0  # calls whose tokens were counted offline

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @classmethod
    def of(cls, test: str, tally: Tally) -> Spend | None:
        """The test's spend, or None if it made no LLM call."""
        requests = tally.successful_requests + tally.failed_requests
        if not requests:
            return None
        return cls(
            test=test,
            requests=requests,
            failed=tally.failed_requests,
            prompt_tokens=tally.prompt_tokens,
            completion_tokens=tally.completion_tokens,
            cost=tally.cost,
            unpriced=tally.unpriced_requests,
            unpriced_models=tuple(tally.unpriced_models),
            estimated=tally.estimated_requests,
        )

    def to_json(self) -> dict[str, object]:
        return {
            "test": self.test,
            "requests": self.requests,
            "failed": self.failed,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost": str(self.cost),
            "unpriced": self.unpriced,
            "unpriced_models": list(self.unpriced_models),
            "estimated": self.estimated,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> Spend:
        """The record ``to_json`` made (in a worker); ``ValueError`` / ``TypeError`` if it is not one."""

        def count(key: str) -> int:
            value = data[key]
            if type(value) is not int or value < 0:
                raise ValueError(f"{key} is not a count: {value!r}")
            return value

        test, cost, models = data["test"], data["cost"], data["unpriced_models"]
        if not isinstance(test, str) or not isinstance(cost, str) or not isinstance(models, list):
            raise TypeError(f"not a test's spend: {data!r}")
        return cls(
            test=test,
            requests=count("requests"),
            failed=count("failed"),
            prompt_tokens=count("prompt_tokens"),
            completion_tokens=count("completion_tokens"),
            cost=Decimal(cost),
            unpriced=count("unpriced"),
            unpriced_models=tuple(str(m) for m in models),
            estimated=count("estimated"),
        )


@dataclass
class Totals:
    """The session: every test's spend added up (a re-run test's runs count once each)."""

    by_test: dict[str, Spend] = field(default_factory=dict)

    def add(self, spend: Spend) -> None:
        before = self.by_test.get(spend.test)
        if before is not None:  # the same test run again (pytest-rerunfailures, a flaky retry)
            spend = Spend(
                test=spend.test,
                requests=before.requests + spend.requests,
                failed=before.failed + spend.failed,
                prompt_tokens=before.prompt_tokens + spend.prompt_tokens,
                completion_tokens=before.completion_tokens + spend.completion_tokens,
                cost=before.cost + spend.cost,
                unpriced=before.unpriced + spend.unpriced,
                unpriced_models=tuple(sorted({*before.unpriced_models, *spend.unpriced_models})),
                estimated=before.estimated + spend.estimated,
            )
        self.by_test[spend.test] = spend

    def session(self) -> Spend:
        """All the tests' spend as one record (named ``session``)."""
        spends = self.by_test.values()
        return Spend(
            test="session",
            requests=sum(s.requests for s in spends),
            failed=sum(s.failed for s in spends),
            prompt_tokens=sum(s.prompt_tokens for s in spends),
            completion_tokens=sum(s.completion_tokens for s in spends),
            cost=sum((s.cost for s in spends), ZERO),
            unpriced=sum(s.unpriced for s in spends),
            unpriced_models=tuple(sorted({m for s in spends for m in s.unpriced_models})),
            estimated=sum(s.estimated for s in spends),
        )

    def costliest(self, top: int) -> list[Spend]:
        """The ``top`` costliest tests (all for 0): known cost, then tokens, then requests; ties by id."""
        ranked = sorted(self.by_test.values(), key=lambda s: (-s.cost, -s.tokens, -s.requests, s.test))
        return ranked[:top] if top else ranked


def money(amount: Decimal, currency: str) -> str:
    """An exact amount: ``$0.00111`` in USD, ``0.0081 CNY`` otherwise."""
    text = format_usd(amount)
    return f"${text}" if currency == "USD" else f"{text} {printable(currency)}"


def cost_text(spend: Spend, currency: str) -> str:
    """The cost as known: exact; ``≥ amount`` when some calls have no price; ``unknown`` when none has."""
    if not spend.unpriced:
        return money(spend.cost, currency)
    if spend.unpriced >= spend.requests - spend.failed and not spend.cost:
        return "unknown"
    return "≥ " + money(spend.cost, currency)


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def _notes(spend: Spend) -> str:
    notes = []
    if spend.failed:
        notes.append(f"{spend.failed:,} failed")
    if spend.unpriced:
        notes.append(f"{spend.unpriced:,} unpriced: {', '.join(map(printable, spend.unpriced_models))}")
    if spend.estimated:
        notes.append(f"{spend.estimated:,} estimated")
    return f"  ({'; '.join(notes)})" if notes else ""


def summary(totals: Totals, *, top: int, tests_run: int, currency: str, where: Iterable[str]) -> list[str]:
    """The lines of the session's summary: the costliest tests, then the session's totals."""
    lines: list[str] = []
    shown = totals.costliest(top)
    if shown:
        rows = [
            (cost_text(s, currency), f"{s.tokens:,}", f"{s.requests:,}", printable(s.test) + _notes(s))
            for s in shown
        ]
        ranked = len(totals.by_test)
        what = f"top {len(shown)} of {ranked}" if len(shown) < ranked else f"all {ranked}"
        header = ("cost", "tokens", "requests", f"test ({what} that made LLM calls, costliest first)")
        widths = [max(len(r[i]) for r in (header, *rows)) for i in range(3)]
        for row in (header, *rows):
            cells = (cell.rjust(width) for cell, width in zip(row, widths, strict=False))
            lines.append("  ".join(cells) + "  " + row[3])
    session = totals.session()
    if not session.requests:
        lines.append(f"no LLM calls in {_plural(tests_run, 'test')}")
    else:
        failed = f" ({session.failed:,} failed)" if session.failed else ""
        lines.append(
            f"session: {cost_text(session, currency)}, {session.tokens:,} tokens "
            f"({session.prompt_tokens:,} prompt, {session.completion_tokens:,} completion), "
            f"{_plural(session.requests, 'request')}{failed} in {len(totals.by_test):,} of "
            f"{_plural(tests_run, 'test')}"
        )
        if session.unpriced:
            models = ", ".join(map(printable, session.unpriced_models))
            unpriced = _plural(session.unpriced, "request")
            lines.append(f"unpriced: {unpriced} ({models}): price unknown, not in the total")
        if session.estimated:
            lines.append(
                f"estimated: {_plural(session.estimated, 'request')} without usage in the response, "
                "tokens counted offline"
            )
    lines.extend(f"calls: {printable(w)}" for w in dict.fromkeys(where))
    return lines
