"""SQLite's coarser hourly rollups (schema 12): ``calls_hourly_untagged`` (no tags) and
``calls_hourly_narrow`` (no tags, no scope). A report whose groups and filters they keep reads them
instead of the wide rollup, and must give exactly what the calls give: the same sums to the last
picodollar and the same latency histogram, at any window, after a migration from schema 11, after
pruning, and ``ledger check`` must catch a row of theirs that disagrees with the calls."""

from __future__ import annotations

import itertools
import random
import sqlite3
from collections.abc import Iterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from _postgres import PostgresServer, postgres_fixture
from test_report import DAY, T0

from llmtally._core.usage import Call, Usage
from llmtally.cli import cli_logic
from llmtally.ledger import to_row
from llmtally.ledger._read import Where, merge
from llmtally.ledger._records import COST_HI, NAMES, ROLLUP_NARROW, SCHEMA_VERSION, SUMS, columns_at
from llmtally.ledger.sqlite import _MIGRATIONS, COARSER, SQLiteLedger, _add_rollup, rollup

postgres = postgres_fixture()

NARROW, UNTAGGED = (c.table for c in COARSER)
MODELS = [("openai", "gpt-4o"), ("openai", "o3"), ("anthropic", "claude-sonnet-4-5"), ("openai", "")]
SCOPES = [("job",), ("job", "step"), ()]
#: Window edges: none, whole hours, inside hours, one hour's inside, across a day.
WINDOWS = [
    (None, None),
    (T0, T0 + 2 * DAY),
    (T0 + 1234.5, T0 + DAY + 77.25),
    (T0 + 3600 * 5 + 10, T0 + 3600 * 5 + 3000),
    (T0 - 3600 * 2 + 1, None),
    (None, T0 + 3600 * 30 + 1799),
]


def calls(n: int, seed: int = 5) -> list[Call]:
    """Calls over two and a half days: four models (one with no model name), three scopes, a tag
    unique per call, two endpoints and currencies, failures, unknown prices, estimates, latencies
    from under 1 ms to minutes, and a few calls of $0.6M whose hour of one model passes ``COST_HI``
    only when its tags are summed together."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        provider, model = MODELS[i % len(MODELS)]
        call = Call(provider, ("chat.completions", "embeddings")[i % 7 == 0], model or None)
        if not model:
            call.requested_model = "my-model" if i % 2 else None
        call.started_at = T0 - 3 * 3600 + rng.uniform(0, 2.5 * DAY)
        call.latency = rng.choice(
            [rng.lognormvariate(-0.5, 1.2), rng.uniform(0.0001, 0.002), rng.uniform(30, 99)]
        )
        call.usage = Usage(rng.randrange(1, 5000), rng.randrange(0, 900))
        call.ok = i % 23 != 0
        call.status = 200 if call.ok else 500
        call.estimated = i % 17 == 3
        call.cost = None if i % 11 == 4 else Decimal(rng.randrange(0, 10**9)) / 10**9
        if i % 5 == 1:
            call.cost, call.currency = (call.cost and call.cost * Decimal("0.92")), "EUR"
        call.scope_path = SCOPES[i % len(SCOPES)]
        call.tags = {"user": f"u{i}", "team": ("search", "ads")[i % 2]} if i % 9 else {}
        out.append(call)
    for k in range(4):  # one hour, one model, four tag sets: 4 x 6e17 pico, past COST_HI when summed
        call = Call("openai", "chat.completions", "gpt-4o")
        call.started_at, call.latency = T0 + 3600 * 7 + 60 * k, 0.25
        call.usage, call.cost, call.tags = Usage(10, 1), Decimal(600_000), {"user": f"big{k}"}
        out.append(call)
    return out


def write(path: Path, rows: Sequence[Call], batch: int = 97) -> SQLiteLedger:
    led = SQLiteLedger(str(path))
    for i in range(0, len(rows), batch):  # batches that cut hours and groups in two
        led.write([to_row(c) for c in rows[i : i + batch]])
    return led


def tables_read(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records the rollup each read of the SQLite ledger chooses."""
    seen: list[str] = []
    real = SQLiteLedger._rollup_for

    def spy(self: SQLiteLedger, conn: sqlite3.Connection, keys: Sequence[str]) -> tuple[str, set[str]]:
        table, columns = real(self, conn, keys)
        seen.append(table)
        return table, columns

    monkeypatch.setattr(SQLiteLedger, "_rollup_for", spy)
    return seen


def read(led: SQLiteLedger, what: str, *args: Any) -> list[tuple[Any, ...]]:
    """``sums`` or ``latency``, sorted; sums as a report reads them (``merge``: an exact sum past
    2**63 comes back as its digits, an empty window as one row of nothing)."""
    rows = getattr(led, what)(*args)
    return sorted(merge(rows, len(args[0])) if what == "sums" else rows, key=repr)


def from_calls(led: SQLiteLedger, what: str, *args: Any) -> list[tuple[Any, ...]]:
    """``read`` from the calls alone, as when the ledger has no rollup."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(SQLiteLedger, "_rollup_for", lambda self, conn, keys: ("calls_hourly", set()))
        return read(led, what, *args)


def combos(led: SQLiteLedger) -> Iterator[tuple[list[str], Where]]:
    """Every set of up to two groups, and every filter, that a coarser rollup keeps."""
    groups = ["model", "provider", "endpoint", "currency", "day", "hour", "scope"]
    values = {
        "model": ("gpt-4o", "my-model"),
        "provider": ("anthropic",),
        "endpoint": ("embeddings",),
        "currency": ("EUR",),
        "scope": ("job > step", "(no scope)"),
    }
    for n in (0, 1, 2):
        for by in itertools.combinations(groups, n):
            yield list(by), ()
    for key, vals in values.items():
        for by in ([], ["model"], ["scope"], ["day", "provider"]):
            yield by, ((key, vals),)
    yield ["hour"], (("model", ("o3",)), ("scope", ("job",)), ("currency", ("USD",)))


def expected_table(by: Sequence[str], where: Where) -> str:
    keys = {*by, *(k for k, _ in where)}
    return NARROW if "scope" not in keys else UNTAGGED


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SQLiteLedger, list[Call]]]:
    made = calls(1500)
    led = write(tmp_path_factory.mktemp("coarse") / "l.db", made)
    yield led, made
    led.close()


def assert_same(led: SQLiteLedger, monkeypatch: pytest.MonkeyPatch, windows: Sequence[Any] = WINDOWS) -> int:
    """Each combination and window: the rollup chosen is the coarser one expected, and its sums and
    latency are the calls' exactly. Returns how many reads were compared."""
    seen = tables_read(monkeypatch)
    compared = 0
    for (by, where), (start, end) in itertools.product(list(combos(led)), windows):
        seen.clear()
        got = read(led, "sums", by, start, end, where)
        assert got == from_calls(led, "sums", by, start, end, where), (by, where, start, end)
        assert seen == [expected_table(by, where)], (by, where, seen)
        got = read(led, "latency", by, start, end, where)
        assert got == from_calls(led, "latency", by, start, end, where), (by, where, start, end)
        compared += 1
    return compared


class TestSameAsTheCalls:
    """Every group and filter a coarser rollup keeps, at every kind of window edge: exactly the calls'
    numbers (sums, picodollars, latency buckets), read from the rollup expected."""

    def test_every_combination(
        self, ledger: tuple[SQLiteLedger, list[Call]], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        led, made = ledger
        assert assert_same(led, monkeypatch) >= 300
        # The sums are not trivially equal: the calls' total is in them, past COST_HI in one row.
        (total,) = led.sums([], None, None)
        assert total[SUMS.index("requests")] == len(made)
        hi, lo = led.execute(f"SELECT MAX(cost_pico_hi), MAX(cost_pico) FROM {NARROW}")[0]
        assert hi >= 2 and lo < COST_HI
        assert led.execute("SELECT MAX(cost_pico_hi) FROM calls_hourly")[0][0] == 0

    def test_tags_and_price_source_read_wider(
        self, ledger: tuple[SQLiteLedger, list[Call]], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        led, _ = ledger
        seen = tables_read(monkeypatch)
        for by, where in [
            (["tag:team"], ()),
            (["model"], (("tag:user", ("u3",)),)),
            (["scope", "tag:team"], ()),
            (["price_source"], ()),
        ]:
            seen.clear()
            got = read(led, "sums", by, T0 + 100, T0 + DAY) if not where else None
            assert got is None or got == from_calls(led, "sums", by, T0 + 100, T0 + DAY, ())
            led.sums(by, None, None, where)
            assert seen and all(t == "calls_hourly" for t in seen), (by, seen)

    def test_rows_are_few(self, ledger: tuple[SQLiteLedger, list[Call]]) -> None:
        """With a tag unique per call the wide rollup has a row per call; the coarser ones do not."""
        led, made = ledger
        (wide,), (untagged,), (narrow,) = (
            led.execute(f"SELECT COUNT(*) FROM {t}")[0] for t in ("calls_hourly", UNTAGGED, NARROW)
        )
        assert wide > 0.85 * len(made) and narrow < untagged < wide


class TestPostgresUnaffected:
    """PostgreSQL keeps no rollup: the same calls give it the same sums SQLite reads from its coarser
    rollups (its migrations to schema 12 change nothing)."""

    def test_same_sums(
        self,
        postgres: PostgresServer,
        ledger: tuple[SQLiteLedger, list[Call]],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        from llmtally.ledger.postgres import _MIGRATIONS as PG_MIGRATIONS
        from llmtally.ledger.postgres import PostgresLedger

        assert PG_MIGRATIONS[ROLLUP_NARROW] == []
        led, made = ledger
        pg = PostgresLedger(postgres.new_database("coarse"))
        try:
            pg.write([to_row(c) for c in made])
            seen = tables_read(monkeypatch)
            for (by, where), (start, end) in itertools.product(list(combos(led)), WINDOWS[:3]):
                want = sorted((tuple(map(_plain, r)) for r in pg.sums(by, start, end, where)), key=repr)
                got = sorted((tuple(map(_plain, r)) for r in led.sums(by, start, end, where)), key=repr)
                assert got == want, (by, where, start, end)
            assert NARROW in seen and UNTAGGED in seen
        finally:
            pg.close()


def _plain(value: Any) -> Any:
    return int(value) if isinstance(value, (int, Decimal)) else value


def old_ledger(path: Path, made: Sequence[Call], version: int = ROLLUP_NARROW - 1) -> None:
    """A ledger of ``version`` (11) as that llmtally wrote it: the calls and the wide rollup only."""
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE llmtally_schema (version INTEGER NOT NULL, applied_at REAL NOT NULL)")
    for v in range(1, version + 1):
        for statement in _MIGRATIONS[v]:
            conn.execute(statement)
        conn.execute("INSERT INTO llmtally_schema VALUES (?, 0)", (v,))
    names = [n for n, _ in columns_at(version)]
    at = [NAMES.index(n) for n in names]
    rows = [to_row(c) for c in made]
    conn.executemany(
        f"INSERT INTO calls ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
        [tuple(row[i] for i in at) for row in rows],
    )
    _add_rollup(conn, rollup(rows))  # the wide rollup as that version's write() kept it
    conn.commit()
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    conn.close()
    assert NARROW not in tables and UNTAGGED not in tables


class TestMigration:
    """A schema-11 ledger: read as it is (read-only, not migrated) from its wide rollup; migrated in
    place, its coarser rollups filled from the wide one (hours pruned of their calls included) and
    then kept by the writer."""

    def test_from_schema_11(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        assert ROLLUP_NARROW == 12 <= SCHEMA_VERSION
        made = calls(600, seed=8)
        pruned, kept = [c for c in made if c.started_at < T0], [c for c in made if c.started_at >= T0]
        path = tmp_path / "v11.db"
        old_ledger(path, made)
        # Prune as `ledger prune --totals keep` did then: the hours before T0 keep only their totals.
        conn = sqlite3.connect(path)
        with conn:
            conn.execute("DELETE FROM calls WHERE started_at < ?", (T0,))
        conn.close()
        assert pruned and T0 % 3600 == 0

        reader = SQLiteLedger(str(path), create=False)
        seen = tables_read(monkeypatch)
        before = {w: sorted(reader.sums(["model", "currency"], *w), key=repr) for w in WINDOWS}
        lat_before = sorted(reader.latency(["model"], None, None), key=repr)
        assert set(seen) == {"calls_hourly"}  # no coarser rollup yet: the wide one answers
        reader.close()
        assert sqlite3.connect(path).execute("SELECT MAX(version) FROM llmtally_schema").fetchone() == (11,)

        led = SQLiteLedger(str(path))  # opened to write: migrated
        assert led.execute("SELECT MAX(version) FROM llmtally_schema")[0] == (SCHEMA_VERSION,)
        seen.clear()
        after = {w: sorted(led.sums(["model", "currency"], *w), key=repr) for w in WINDOWS}
        assert after == before
        assert sorted(led.latency(["model"], None, None), key=repr) == lat_before
        assert set(seen) == {NARROW}
        # The pruned hours' totals are in the coarser rollups as in the wide one.
        n_pruned = led.sums([], None, T0, ())[0][SUMS.index("requests")]
        assert n_pruned == len(pruned)
        # The hours with calls: exactly the calls', for every combination.
        assert assert_same(led, monkeypatch, [(T0, None), (T0 + 1000.5, T0 + DAY + 5)]) >= 100
        # Written on: the writer keeps them.
        more = calls(300, seed=9)
        for c in more:
            c.started_at = max(c.started_at, T0 + 1)
        led.write([to_row(c) for c in more])
        assert assert_same(led, monkeypatch, [(T0, None), (T0 + 3600 * 9 + 17, T0 + 2 * DAY - 3)]) >= 100
        led.close()
        assert ledger_check(path)[0] == 0
        assert len(kept) > 100


def ledger_check(path: Path) -> tuple[int, str]:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli_logic(["ledger", "check", "--ledger", f"sqlite:///{path}"])
    return code, out.getvalue()


class TestPrune:
    """``ledger prune``: ``--totals keep`` leaves every rollup's older hours (reports unchanged),
    ``--totals drop`` takes them out of every rollup; ``ledger check`` passes after both."""

    @pytest.mark.parametrize("totals", ["keep", "drop"])
    def test_prune(self, tmp_path: Path, totals: str, monkeypatch: pytest.MonkeyPatch) -> None:
        made = calls(800, seed=11)
        path = tmp_path / "p.db"
        write(path, made).close()
        cutoff = T0 + DAY  # whole hours
        url = f"sqlite:///{path}"
        led = SQLiteLedger(str(path), create=False)
        before = {g: read(led, "sums", list(g), None, None) for g in (("model",), ("scope",), ("tag:team",))}
        led.close()
        assert (
            cli_logic(
                ["ledger", "prune", "--ledger", url, "--before", "2026-11-02T12:00", "--totals", totals]
            )
            == 0
        )
        led = SQLiteLedger(str(path), create=False)
        after = {g: read(led, "sums", list(g), None, None) for g in before}
        if totals == "keep":
            assert after == before  # narrow (model), untagged (scope) and wide (tag) alike
        else:
            left = [c for c in made if c.started_at >= cutoff]
            assert after != before
            for table in ("calls_hourly", UNTAGGED, NARROW):
                assert led.execute(f"SELECT COUNT(*) FROM {table} WHERE hour < ?", (cutoff,))[0] == (0,)
                (n,) = led.execute(f"SELECT SUM(requests) FROM {table}")[0]
                assert n == len(left), table
        assert assert_same(led, monkeypatch, [(cutoff, None), (cutoff + 1800, cutoff + DAY / 3)]) >= 100
        led.close()
        assert ledger_check(path)[0] == 0


class TestCheck:
    """``ledger check`` compares each coarser rollup's rows with the calls: a tampered row of either
    is found and named, even one whose hour's total is right (calls moved between two models)."""

    @pytest.mark.parametrize("table", [NARROW, UNTAGGED])
    @pytest.mark.parametrize("how", ["requests", "cost", "moved"])
    def test_tampered_row(self, tmp_path: Path, table: str, how: str) -> None:
        path = tmp_path / "t.db"
        write(path, calls(300, seed=13)).close()
        code, out = ledger_check(path)
        assert code == 0 and "no problem found" in out, out
        conn = sqlite3.connect(path)
        hour, model = conn.execute(
            f"SELECT hour, model FROM {table} WHERE model = 'o3' ORDER BY hour LIMIT 1"
        ).fetchone()
        with conn:
            if how == "requests":
                conn.execute(
                    f"UPDATE {table} SET requests = requests + 1 WHERE hour = ? AND model = ?", (hour, model)
                )
            elif how == "cost":
                conn.execute(
                    f"UPDATE {table} SET cost_pico_hi = cost_pico_hi + 1 WHERE hour = ? AND model = ?",
                    (hour, model),
                )
            else:  # one call of o3 counted under another row of the same hour: its total is right
                keys = next(c.keys for c in COARSER if c.table == table)
                other = conn.execute(
                    f"SELECT {', '.join(keys)} FROM {table} WHERE hour = ? AND model <> ? LIMIT 1",
                    (hour, model),
                ).fetchone()
                match = " AND ".join(f"{k} = ?" for k in keys)
                conn.execute(f"UPDATE {table} SET requests = requests + 1 WHERE {match}", other)
                first = conn.execute(
                    f"SELECT {', '.join(keys)} FROM {table} WHERE hour = ? AND model = ? LIMIT 1",
                    (hour, model),
                ).fetchone()
                conn.execute(f"UPDATE {table} SET requests = requests - 1 WHERE {match}", first)
        conn.close()
        code, out = ledger_check(path)
        assert code == 1 and f"{table} of " in out and "o3" in out, out
        assert "hourly totals of" not in out  # the wide rollup is right
