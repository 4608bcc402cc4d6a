"""The ledger at scale: ingest rate into SQLite, `report --by model --since 30d` over a million
records, and the time a configured ledger adds to a metered call.

    python bench/ledger.py [--records 1000000] [--json]

Ingest is the writer's whole path: Call objects -> rows (to_row) -> batched INSERTs in one
transaction per 10,000, as the background writer does. The report runs the CLI's query on the
resulting file. The per-call figure alternates the same openai SDK call inside ``track()`` with
and without a SQLite ledger configured (the writer thread settling and writing in the background).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from decimal import Decimal
from typing import Any

import _common as C

MODELS = ["gpt-4o", "gpt-4o-mini", "claude-sonnet-4-5", "o3", "gpt-4.1", "gemini-2.5-pro"]


NOW = time.time()
SINCE = NOW - 30 * 86400  # "30d", fixed once so the expected total does not drift while we run


def make_calls(n: int) -> list[Any]:
    import llmtally
    from llmtally._core.usage import Call, Usage

    rng = random.Random(1)
    now = NOW
    prices = {}
    calls = []
    for i in range(n):
        model = MODELS[i % len(MODELS)]
        call = Call("openai", "chat.completions", model)
        call.started_at = now - rng.uniform(0, 60 * 86400)
        call.latency = 0.8
        prompt, completion = 1000 + (i % 500), 100 + (i % 50)
        call.usage = Usage(prompt, completion)
        key = (model, prompt, completion)
        if key not in prices:
            prices[key] = llmtally.cost_of(model, input_tokens=prompt, output_tokens=completion)
        call.cost = prices[key]
        call.scope_path = ("job", f"step-{i % 7}")
        calls.append(call)
    # A ledger receives calls in the order they happen; spread over 60 days, they arrive sorted.
    calls.sort(key=lambda c: c.started_at)
    return calls


def ingest(path: str, calls: list[Any], batch: int = 10_000) -> float:
    from llmtally.ledger import to_row
    from llmtally.ledger.sqlite import SQLiteLedger

    ledger = SQLiteLedger(path)
    start = time.perf_counter()
    for i in range(0, len(calls), batch):
        ledger.write([to_row(c) for c in calls[i : i + batch]])
    elapsed = time.perf_counter() - start
    ledger.close()
    return elapsed


def ingest_postgres(calls: list[Any], batch: int = 10_000) -> float:
    """The same ingest into a real PostgreSQL (the test suite's embedded server, on loopback)."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
    from _postgres import running_postgres

    from llmtally.ledger import to_row
    from llmtally.ledger.postgres import PostgresLedger

    with running_postgres() as server:
        ledger = PostgresLedger(server.url)
        start = time.perf_counter()
        for i in range(0, len(calls), batch):
            ledger.write([to_row(c) for c in calls[i : i + batch]])
        elapsed = time.perf_counter() - start
        ledger.close()
    return elapsed


def report_time(path: str, repeats: int = 5) -> tuple[float, list[float], Decimal]:
    import llmtally

    times = []
    total = Decimal(0)
    for _ in range(repeats):
        start = time.perf_counter()
        rows = llmtally.report(ledger=f"sqlite:///{path}", since=SINCE, by=["model"])
        times.append(time.perf_counter() - start)
        total = sum((r.cost for r in rows), Decimal(0))
    return statistics.median(times), times, total


def per_call(rounds: int, calls: int) -> dict[str, float]:
    import httpx2
    import openai

    import llmtally
    from llmtally.testing import FakeProvider, Reply

    fake = FakeProvider(
        handler=lambda req: Reply(text="ok", prompt_tokens=11, completion_tokens=13, model="gpt-4")
    )
    client = openai.OpenAI(
        api_key="x", base_url="http://fake/v1", http_client=httpx2.Client(transport=fake.httpx2_transport())
    )
    tmp = tempfile.mkdtemp()

    def one() -> None:
        with llmtally.track() as t:
            client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}])
        t.total_tokens  # noqa: B018

    for _ in range(20):
        one()
    off, on = [], []
    for r in range(rounds):
        for mode in (0, 1) if r % 2 else (1, 0):
            llmtally.configure(ledger=f"sqlite:///{tmp}/ledger.db" if mode else "none")
            xs = []
            for _ in range(calls):
                t0 = time.thread_time_ns()
                one()
                xs.append(time.thread_time_ns() - t0)
            (on if mode else off).append(statistics.median(xs) / 1000)
    llmtally.configure(ledger="none")
    return {
        "off_us": statistics.median(off),
        "on_us": statistics.median(on),
        "added_us": statistics.median([b - a for a, b in zip(off, on, strict=True)]),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--postgres", action="store_true", help="also ingest into a real PostgreSQL on loopback")
    args = ap.parse_args()
    path = os.path.join(tempfile.mkdtemp(), "bench.db")
    calls = make_calls(args.records)
    seconds = ingest(path, calls)
    pg_seconds = ingest_postgres(calls) if args.postgres else None
    expected = sum((c.cost for c in calls if c.started_at >= SINCE), Decimal(0))
    del calls
    med, times, total = report_time(path)
    call = per_call(args.rounds, 20)
    res = {
        "benchmark": "ledger",
        "machine": C.machine(),
        "records": args.records,
        "ingest_seconds": round(seconds, 2),
        "ingest_records_per_s": round(args.records / seconds),
        "postgres_ingest_records_per_s": round(args.records / pg_seconds) if pg_seconds else None,
        "report_seconds_median": round(med, 3),
        "report_seconds": [round(t, 3) for t in times],
        "report_total_cost": str(total),
        "per_call": {k: round(v, 1) for k, v in call.items()},
    }
    if total != expected:
        raise SystemExit(f"report total {total} differs from the ingested {expected}")
    text = "\n".join(
        [
            f"ledger: {args.records:,} records; Python {res['machine']['python']}, {res['machine']['cores']} cores",
            f"ingest into SQLite: {seconds:.2f} s = {res['ingest_records_per_s']:,} records/s (goal >= 100,000)",
            *(
                [
                    f"ingest into PostgreSQL (COPY): {pg_seconds:.2f} s = {res['postgres_ingest_records_per_s']:,} records/s"
                ]
                if pg_seconds
                else []
            ),
            f"report --by model --since 30d: median {med:.3f} s over {len(times)} runs {res['report_seconds']} (goal < 1 s)",
            f"per tracked openai SDK call: ledger off {call['off_us']:.0f} us, on {call['on_us']:.0f} us, "
            f"added {call['added_us']:+.1f} us (median over {args.rounds} rounds)",
        ]
    )
    C.emit(res, text, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
