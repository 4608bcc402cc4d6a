"""The pytest plugin: what each test spent on LLM calls, budgets per test, and fixtures.

Registered through the ``pytest11`` entry point (``-p no:llmtally`` turns it off), it is **off
unless asked**: loading it imports pytest and llmtally's light facade, nothing else, and changes no
test. It adds:

- ``pytest --llmtally``: every test runs inside a scope named by its node id (setup, call and
  teardown: a fixture's calls count for the test that set it up). The terminal summary lists the
  costliest tests (``--llmtally-top N``, 0 for all) and the session's totals, and every call is
  recorded in the ledger (``--llmtally-ledger URL``, else the one configured, else
  ``LLMTALLY_LEDGER``, else the default SQLite file, as ``llmtally run`` does; ``none`` records
  nothing) with the test's id as its scope. Under pytest-xdist each worker sends its tests' spend to
  the controller (``workeroutput``), which adds them up.
- ``@pytest.mark.llm_budget(max_cost=..., max_tokens=..., max_requests=..., preflight=...)``: the
  test's scope gets those limits, with or without ``--llmtally`` (a budget is a guard, and a guard
  that works only when a flag is given is none). A request past a limit is refused
  (``BudgetExceeded`` inside the test); the test fails, naming the spend, if a request was refused
  (even if the test caught the exception) or if its calls went past a limit.
- fixtures: ``llm_tally``, the test's own ``Tally``; ``llm_fake``, ``llmtally.testing``'s
  ``FakeProvider`` serving on loopback for the test (``llm_fake.url``).

Every step of the plugin's own bookkeeping is guarded: a fault of llmtally's is logged and never
changes a test's outcome (the budget is the one thing allowed to fail a test).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Generator, Iterator

    from .._core.tally import Tally
    from ..testing import FakeProvider
    from ._spend import Totals

__all__ = ["llm_fake", "llm_tally"]

log = logging.getLogger("llmtally")

#: The limits ``llm_budget`` accepts, as ``llmtally.track`` names them.
_LIMITS = ("max_cost", "max_tokens", "max_requests", "preflight")

_TALLY = pytest.StashKey["Tally"]()  # the test's scope, while it runs
_BUDGET = pytest.StashKey[dict[str, object]]()  # the marker's limits, when it has any
_MISUSE = pytest.StashKey[str]()  # a marker that could not be used: the setup fails with this
_REPORTED = pytest.StashKey[tuple[object, bool]]()  # (refusal, overspent) the test already failed for
_METERING = pytest.StashKey["_Metering"]()  # on the config, with --llmtally


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("llmtally", "llmtally: the LLM spend of each test")
    group.addoption(
        "--llmtally",
        action="store_true",
        default=False,
        help="meter each test's LLM calls: print the cost, tokens and requests of the costliest tests and of "
        "the session, and record every call in the ledger with the test's id as its scope",
    )
    group.addoption(
        "--llmtally-top",
        type=int,
        default=10,
        metavar="N",
        help="with --llmtally: how many tests to list, costliest first (0 for all; default 10)",
    )
    group.addoption(
        "--llmtally-ledger",
        default=None,
        metavar="URL",
        help="with --llmtally: the ledger to record to (sqlite:///path.db, postgresql://..., none); default: "
        "the one configured, else LLMTALLY_LEDGER, else the default SQLite file",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "llm_budget(max_cost=None, max_tokens=None, max_requests=None, preflight=False): run the test in "
        "an llmtally scope with these limits (max_cost in USD); a request past one is refused with "
        "llmtally.BudgetExceeded and the test fails, even if it catches it (works without --llmtally)",
    )
    if not config.getoption("llmtally"):
        return
    top = config.getoption("llmtally_top")
    if top < 0:
        raise pytest.UsageError(f"--llmtally-top wants a number of tests, 0 or more (0 for all), not {top}")
    metering = _Metering(config)
    metering.start(config.getoption("llmtally_ledger"))
    config.stash[_METERING] = metering


# -- each test in its scope ---------------------------------------------------------------------


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(
    item: pytest.Item, nextitem: pytest.Item | None
) -> Generator[None, object, object]:
    metering = item.config.stash.get(_METERING, None)
    marker = item.get_closest_marker("llm_budget")
    if metering is None and marker is None and "llm_tally" not in getattr(item, "fixturenames", ()):
        return (yield)  # off: nothing of llmtally is loaded, nothing changes
    try:
        limits = _limits(marker) if marker is not None else {}
        import llmtally

        tally = llmtally.track(item.nodeid, **limits)  # type: ignore[call-overload]
    except (TypeError, ValueError) as exc:
        item.stash[_MISUSE] = f"llm_budget: {exc}"
        return (yield)
    item.stash[_TALLY] = tally
    if limits:
        item.stash[_BUDGET] = limits
    try:
        with tally:
            return (yield)
    finally:
        del item.stash[_TALLY]
        if metering is not None:
            metering.record(item.nodeid, tally)


def _limits(marker: pytest.Mark) -> dict[str, object]:
    """The marker's keyword arguments, as ``track`` takes them (it checks their values)."""
    if marker.args:
        raise TypeError(f"takes keyword arguments only ({', '.join(_LIMITS)}), not {marker.args!r}")
    unknown = sorted(set(marker.kwargs) - set(_LIMITS))
    if unknown:
        raise TypeError(f"unknown argument(s) {', '.join(unknown)}; it takes {', '.join(_LIMITS)}")
    limits = {k: v for k, v in marker.kwargs.items() if v is not None}
    if not set(limits) - {"preflight"}:
        raise TypeError("give at least one limit: max_cost, max_tokens or max_requests")
    return limits


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, object, object]:
    misuse = item.stash.get(_MISUSE, None)
    if misuse is not None:
        pytest.fail(misuse, pytrace=False)
    try:
        return (yield)
    except BaseException:
        _settled(item)  # the setup failed (a refusal too): that is the test's error, said once
        raise


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    try:
        result = yield
    except BaseException:
        _settled(item)  # the test failed already: an uncaught refusal names the spend itself
        raise
    _enforce(item)
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(
    item: pytest.Item, nextitem: pytest.Item | None
) -> Generator[None, object, object]:
    result = yield
    _enforce(item)  # a refusal in a fixture's teardown
    return result


def _settled(item: pytest.Item) -> None:
    """Note what the test has already failed for, so that it fails for it once."""
    tally, limits = item.stash.get(_TALLY, None), item.stash.get(_BUDGET, None)
    if tally is None or limits is None:
        return
    try:
        item.stash[_REPORTED] = (tally.refused, _overspent(tally, limits) is not None)
    except Exception:
        log.exception("llmtally: could not read the spend of test %r", item.nodeid)


def _enforce(item: pytest.Item) -> None:
    """Fail the test if its budget refused a request (caught or not) or its calls went past a limit."""
    tally, limits = item.stash.get(_TALLY, None), item.stash.get(_BUDGET, None)
    if tally is None or limits is None:
        return
    try:
        refused, over = tally.refused, _overspent(tally, limits)
    except Exception:
        log.exception("llmtally: could not read the spend of test %r", item.nodeid)
        return
    seen_refusal, seen_over = item.stash.get(_REPORTED, (None, False))
    item.stash[_REPORTED] = (refused, over is not None)
    from .._core.text import printable

    if refused is not None and refused is not seen_refusal:
        pytest.fail(
            printable(f"{refused} (the test went on after the refusal: its budget is spent)"), pytrace=False
        )
    if over is not None and not seen_over:
        pytest.fail(printable(over), pytrace=False)


def _overspent(tally: Tally, limits: dict[str, object]) -> str | None:
    """What went past a limit without a refusal (the call that crossed it was sent under it), or None."""
    from .._core.money import format_usd, parse_amount
    from .._limits import parse_count

    requests = tally.successful_requests + tally.failed_requests
    unpriced = " and unpriced calls" if tally.unpriced_requests else ""
    spent = f"{requests} request(s), {tally.total_tokens} tokens, ${format_usd(tally.cost)}{unpriced}"
    name = tally.name
    max_cost = limits.get("max_cost")
    if max_cost is not None:
        allowed = parse_amount(max_cost, "max_cost")
        if tally.cost > allowed:
            return (
                f"llmtally: test {name!r} went past its cost limit: ${format_usd(tally.cost)} of "
                f"${format_usd(allowed)} (spent: {spent})"
            )
    for key, what, used in (
        ("max_tokens", "token limit", tally.total_tokens),
        ("max_requests", "request limit", requests),
    ):
        value = limits.get(key)
        if value is not None and used > parse_count(value, key):
            return f"llmtally: test {name!r} went past its {what}: {used} of {value} (spent: {spent})"
    return None


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture
def llm_tally(request: pytest.FixtureRequest) -> Iterator[Tally]:
    """The test's own ``llmtally.Tally``: every LLM call of the test so far (its ``llm_budget``'s limits
    included). With ``--llmtally`` it is the scope the summary and the ledger report."""
    tally = request.node.stash.get(_TALLY, None)
    if tally is not None:
        yield tally
        return
    # Asked for late (request.getfixturevalue): a scope from here to the test's teardown.
    import llmtally

    with llmtally.track(request.node.nodeid) as tally:
        yield tally


@pytest.fixture
def llm_fake() -> Iterator[FakeProvider]:
    """``llmtally.testing.FakeProvider`` serving on loopback for this test: script it with ``add()``,
    point clients at ``llm_fake.url`` (``+ "/v1"`` for OpenAI's), read ``llm_fake.requests``."""
    from ..testing import FakeProvider

    provider = FakeProvider()
    with provider.serve():
        yield provider


# -- the session --------------------------------------------------------------------------------


class _Metering:
    """``--llmtally``'s state in one pytest process: the ledger, the tests' spend, the summary."""

    def __init__(self, config: pytest.Config) -> None:
        from ._spend import Totals

        self.config = config
        self.totals: Totals = Totals()
        self.tests_run = 0
        self.where: list[str] = []  # where the calls went: this process's, or each worker's
        self.currency = "USD"
        config.pluginmanager.register(self, "llmtally-metering")

    def start(self, explicit: str | None) -> None:
        """Record every call of this process in the ledger (``llmtally run``'s rule for which one)."""
        import llmtally

        from .._runtime import RUNTIME

        url = RUNTIME.ledger_url(explicit, default="sqlite://")
        assert url is not None
        if RUNTIME.configured_ledger() == url:
            return  # configured already (a conftest): keep its writer
        try:
            llmtally.configure(ledger=url)
        except llmtally.LedgerError as exc:
            raise pytest.UsageError(f"--llmtally: {exc}") from None

    def record(self, test: str, tally: Tally) -> None:
        from ._spend import Spend

        try:
            spend = Spend.of(test, tally)
        except Exception:
            log.exception("llmtally: could not read the spend of test %r", test)
            return
        if spend is not None:
            self.totals.add(spend)

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "teardown":  # once per test run here, or by any worker
            self.tests_run += 1

    @pytest.hookimpl
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        """Write the calls, note where they went; a worker hands its tests' spend to the controller."""
        import llmtally

        from .._core import currency
        from .._runtime import RUNTIME

        try:
            llmtally.flush(timeout=30)
            self.currency = currency.display()
            if RUNTIME.configured_ledger():
                here = f"{RUNTIME.where()}, each under its test's id (llmtally report --by scope)"
            else:
                here = "not recorded in a ledger (the ledger is none)"
        except Exception:
            log.exception("llmtally: could not write the session's calls to the ledger")
            here = "could not be written to the ledger (see the log)"
        output = getattr(self.config, "workeroutput", None)
        if output is not None:  # an xdist worker
            output["llmtally"] = {
                "spends": [s.to_json() for s in self.totals.by_test.values()],
                "currency": self.currency,
                "where": here,
            }
        elif not self.where:
            self.where.append(here)

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: object, error: object) -> None:
        """pytest-xdist, in the controller: a worker finished; add its tests' spend."""
        from ._spend import Spend

        data = getattr(node, "workeroutput", {}).get("llmtally")
        if not isinstance(data, dict):
            return  # a worker that crashed, or ran without the plugin
        try:
            for item in data["spends"]:
                self.totals.add(Spend.from_json(item))
            self.currency = str(data["currency"])
            self.where.append(str(data["where"]))
        except (KeyError, TypeError, ValueError, ArithmeticError):
            log.exception("llmtally: a worker's spend could not be read")

    @pytest.hookimpl
    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        from ._spend import summary

        lines = summary(
            self.totals,
            top=self.config.getoption("llmtally_top"),
            tests_run=self.tests_run,
            currency=self.currency,
            where=self.where,
        )
        terminalreporter.write_sep("=", "llmtally: LLM spend per test")
        for line in lines:
            terminalreporter.write_line(line)
