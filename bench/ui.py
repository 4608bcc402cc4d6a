"""The dashboard over a 1,000,000-call ledger: the overview's first load and each filter change.

    python bench/ui.py [--records 1000000] [--rounds 5] [--ledger PATH] [--json]

Builds (or reuses, with ``--ledger`` naming an existing file) a SQLite ledger of a million calls over
60 days through the ledger's own ``write`` (rows and hourly rollup in one transaction per 10,000, as
the background writer does): 8 models of 3 providers (one unpriced), 12 scope paths, a tag ``team``
(6 values), 2% failures, 1% estimated; with ``--users N`` every call is also tagged with one of N
users, which makes nearly every call its own row of the hourly rollup (it is keyed by the whole
tag set), the worst case for the rollup. Then serves the dashboard on loopback
(uvicorn in a thread, as ``llmtally ui`` does) and times, over HTTP, what the page asks for:

- first load: ``/api/overview`` (every query of the overview: 3 periods and the spans before them,
  totals and latency, the chart, top models / scopes / providers / tags, failures, budgets) and
  ``/api/calls?limit=10`` (the latest calls), for the 7- and 30-day windows;
- a filter change: the same two requests with one filter (a model, a tag, a scope, a provider, a
  stack), over 30 days.

Wall time, median of ``--rounds`` rounds, after one warm-up request (the very first, cold one is
reported too). Nothing is asserted on time.
"""

from __future__ import annotations

import argparse
import http.client
import os
import random
import sys
import tempfile
import time
from typing import Any
from urllib.parse import urlencode

import _common as C

MODELS = [
    ("openai", "gpt-4o"),
    ("openai", "gpt-4o-mini"),
    ("openai", "o3"),
    ("openai", "gpt-4.1"),
    ("anthropic", "claude-sonnet-4-5"),
    ("anthropic", "claude-haiku-4-5"),
    ("google", "gemini-2.5-pro"),
    ("openai", "my-finetune"),  # no price: counted apart
]
TEAMS = ["search", "ads", "support", "growth", "infra", "eval"]
DAY = 86400


def build(path: str, n: int, users: int = 0) -> float:
    """Write ``n`` calls into a new SQLite ledger at ``path``; the seconds it took."""
    import llmtally
    from llmtally._core.usage import Call, Usage
    from llmtally.ledger import to_row
    from llmtally.ledger.sqlite import SQLiteLedger

    rng = random.Random(7)
    now = time.time()
    scopes = [("job", f"step-{i}") for i in range(8)] + [(f"agent-{i}",) for i in range(4)]
    prices: dict[tuple[str, int, int], Any] = {}
    starts = sorted(now - rng.uniform(0, 60 * DAY) for _ in range(n))
    ledger = SQLiteLedger(path)
    began = time.perf_counter()
    batch: list[tuple[Any, ...]] = []
    for i, started in enumerate(starts):
        provider, model = MODELS[i % len(MODELS)]
        call = Call(provider, "chat.completions", model)
        call.started_at = started
        call.latency = 0.2 + (i % 97) / 25
        prompt, completion = 500 + (i % 700), 50 + (i % 90)
        call.usage = Usage(prompt, completion)
        call.ok = i % 50 != 0
        call.status = 200 if call.ok else 500
        call.estimated = i % 100 == 7
        key = (model, prompt, completion)
        if key not in prices:
            prices[key] = llmtally.cost_of(model, input_tokens=prompt, output_tokens=completion)
        call.cost = prices[key] if call.ok else (None if prices[key] is None else prices[key] * 0)
        call.scope_path = scopes[i % len(scopes)]
        call.tags = {"team": TEAMS[i % len(TEAMS)]}
        if users:
            call.tags["user"] = f"u{i % users}"
        batch.append(to_row(call))
        if len(batch) == 10_000:
            ledger.write(batch)
            batch = []
    if batch:
        ledger.write(batch)
    ledger.close()
    return time.perf_counter() - began


def timed(conn: http.client.HTTPConnection, path: str, query: dict[str, Any]) -> float:
    began = time.perf_counter()
    conn.request("GET", path + "?" + urlencode(query, doseq=True))
    response = conn.getresponse()
    body = response.read()
    if response.status != 200:
        raise SystemExit(f"{path} {query}: {response.status} {body[:300]!r}")
    return time.perf_counter() - began


def load(conn: http.client.HTTPConnection, query: dict[str, Any]) -> float:
    """What the page requests when it shows a view: the overview and the latest calls."""
    return timed(conn, "/api/overview", query) + timed(conn, "/api/calls", {**query, "limit": 10})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--ledger", help="a ledger file to use, built there if missing and kept (else built, then deleted)"
    )
    parser.add_argument("--users", type=int, default=0, help="tag every call with one of N users")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from llmtally.ledger import open_ledger
    from llmtally.ui.server import Dashboard

    built = None
    path = args.ledger or os.path.join(tempfile.mkdtemp(), "ledger.db")
    if not os.path.exists(path):
        print(f"building a ledger of {args.records:,} calls in {path} ...", file=sys.stderr)
        built = build(path, args.records, args.users)
    ledger = open_ledger(f"sqlite:///{path}", create=False)
    assert ledger is not None
    dash = Dashboard(ledger, port=0).start()
    while not dash.server.started:
        time.sleep(0.01)
    conn = http.client.HTTPConnection("127.0.0.1", dash.port, timeout=120)
    results: dict[str, Any] = {}
    try:
        results["cold first load, 7 days"] = [load(conn, {"since": "7d"})]
        views = {
            "first load, 7 days": {"since": "7d"},
            "first load, 30 days": {"since": "30d"},
            "filter: model=gpt-4o (30 d)": {"since": "30d", "model": "gpt-4o"},
            "filter: tag team=ads (30 d)": {"since": "30d", "tag": "team=ads"},
            "filter: scope=job > step-3 (30 d)": {"since": "30d", "scope": "job > step-3"},
            "filter: provider=anthropic (30 d)": {"since": "30d", "provider": "anthropic"},
            "filter: model + tag (30 d)": {"since": "30d", "model": "o3", "tag": "team=eval"},
            "stack by scope (30 d)": {"since": "30d", "stack": "scope"},
            "window: 24 hours": {"since": "24h"},
        }
        for name in views:
            results[name] = []
        for _ in range(args.rounds):
            for name, query in views.items():
                results[name].append(load(conn, query))
        drill = {"since": "30d", "model": "gpt-4o"}
        results["drill-down: 50 calls of a model"] = [
            timed(conn, "/api/calls", {**drill, "limit": 50}) for _ in range(args.rounds)
        ]
    finally:
        conn.close()
        dash.stop()
        ledger.close()
    if args.ledger is None:
        os.remove(path)
    doc = {
        "machine": C.machine(),
        "records": args.records,
        "ingest_s": built,
        "results": {k: C.summary([v * 1000 for v in vs]) for k, vs in results.items()},
    }
    if args.json:
        import json

        print(json.dumps(doc, indent=2))
        return 0
    if built is not None:
        print(f"ledger: {args.records:,} calls written in {built:.1f} s ({args.records / built:,.0f}/s)")
    print(f"{'view (overview + latest calls)':40} {'median ms [p25..p75]':>28}")
    for name, values in results.items():
        print(f"{name:40} {C.spread([v * 1000 for v in values], '{:.0f}'):>28}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
