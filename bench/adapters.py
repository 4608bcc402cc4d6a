"""Added time per call on each HTTP client llmtally hooks: requests, aiohttp, urllib3, urllib.request
(http.client) and boto3's bedrock-runtime (botocore on urllib3), against the openai SDK on httpx2
(issue 5's call path), all measured in one run, over loopback.

Every client sends the same raw POST of an OpenAI ``/v1/chat/completions`` JSON body (boto3:
``converse``, a Bedrock Converse body) to ``FakeProvider``, served over loopback HTTP from a child
process (``_fake.py``: in this process its server threads would take the GIL and the caches from
the client being timed), and decodes the JSON answer:

  openai     ``OpenAI(...).chat.completions.create`` (httpx2): the reference, issue 5's call path
  httpx2     ``httpx2.Client.post`` (the httpx adapter on a raw POST, for comparison)
  requests   ``requests.Session.post``
  aiohttp    ``aiohttp.ClientSession.post`` in one event loop for the whole run
  urllib3    ``urllib3.PoolManager.request``
  urllib     ``urllib.request.urlopen`` (http.client; a new connection each call, as urllib does)
  boto3      ``boto3.client("bedrock-runtime").converse`` (us-east-1, dummy credentials)

Three variants of each, in units of ``BATCH`` calls:

  bare       ``llmtally.uninstrument()`` in force: every client exactly as without llmtally;
  track      instrumented, the calls inside one ``llmtally.track()``, its totals read once at the
             end (llmtally settles lazily, on read, so the read is timed too), as overhead.py's
             "ten calls in one scope";
  no scope   instrumented, no scope open: what every untracked call pays.

Before every unit llmtally is instrumented and uninstrumented (or the other way round), so each unit
starts right after the same two patchings of the client classes whatever its variant; that is not
timed. A client's units alternate unit by unit in a fresh random order, clients are taken in a
rotated order each round, and each round keeps each variant's median unit. "added" is the
per-round difference to the bare unit, divided by ``BATCH``; the figures are medians over rounds
with p25..p75. Time is this thread's CPU time; wall time is recorded too.

Counted as well, since times are noisy: llmtally's own Python work per call (frames of its code
entered and the bytecodes they ran, under ``sys.settrace``, over one unit of each client), which is
the same in every run.

Correctness (``SystemExit`` otherwise): every tracked unit counts exactly ``BATCH`` successful
requests with the fake's tokens (11 in, 13 out) and the catalogue's cost, every answer decodes to
the fake's text, and the fake answered exactly as many requests as were sent.

    python bench/adapters.py [--rounds 48] [--units 6] [--only requests,boto3] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import sys
import time
import urllib.request
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import _common as C
from _fake import COMPLETION_TOKENS, JOKE, PROMPT_TOKENS, FakeServer

#: Calls per unit, all inside one scope for the tracked variant.
BATCH = 10
MODEL = "gpt-4"
BEDROCK_MODEL = "amazon.nova-pro-v1:0"
#: The catalogue's price of one answer of 11 input and 13 output tokens.
COST = {MODEL: Decimal("0.00111"), BEDROCK_MODEL: Decimal("0.0000504")}
MESSAGES = [{"role": "user", "content": "Tell me a joke"}]
BODY = json.dumps({"model": MODEL, "messages": MESSAGES}).encode()
HEADERS = {"content-type": "application/json", "authorization": "Bearer sk-bench"}
CONVERSE_MESSAGES = [{"role": "user", "content": [{"text": "Tell me a joke"}]}]

LABELS = {
    "openai": "openai SDK create (httpx2)",
    "httpx2": "httpx2 Client.post",
    "requests": "requests Session.post",
    "aiohttp": "aiohttp ClientSession.post",
    "urllib3": "urllib3 PoolManager.request",
    "urllib": "urllib.request.urlopen",
    "boto3": "boto3 converse (botocore)",
}
#: The client whose added time the others are compared with (issue 5's call path) and, for
#: information, the httpx adapter on the same raw POST as the others.
REFERENCE = "openai"
RAW_REFERENCE = "httpx2"
VARIANTS = ("bare", "track", "noscope")
#: What each client's module must be, for it to be benchmarked.
NEEDS = {
    "openai": "openai",
    "httpx2": "httpx2",
    "requests": "requests",
    "aiohttp": "aiohttp",
    "urllib3": "urllib3",
    "urllib": None,
    "boto3": "boto3",
}


class Client:
    """One client: ``call()`` makes one call and returns the answer's text (``acall`` for aiohttp)."""

    def __init__(self, name: str, model: str, call: Callable[[], str] | None = None, acall: Any = None):
        self.name = name
        self.model = model
        self.call = call
        self.acall = acall
        self.calls = 0  # requests sent, for the fake's count


def build(url: str, names: list[str]) -> tuple[dict[str, Client], Callable[[], None]]:
    """The clients in ``names``, and a function that closes them."""
    clients: dict[str, Client] = {}
    closers: list[Callable[[], None]] = []
    chat = url + "/v1/chat/completions"

    def text_of(answer: Any) -> str:
        return str(answer["choices"][0]["message"]["content"])

    if "openai" in names:
        import openai

        sdk = openai.OpenAI(base_url=url + "/v1", api_key="sk-bench", max_retries=0)
        closers.append(sdk.close)

        def openai_call() -> str:
            r = sdk.chat.completions.create(model=MODEL, messages=MESSAGES)  # type: ignore[arg-type]
            return str(r.choices[0].message.content)

        clients["openai"] = Client("openai", MODEL, openai_call)
    if "httpx2" in names:
        import httpx2

        hx = httpx2.Client(trust_env=False)
        closers.append(hx.close)
        clients["httpx2"] = Client(
            "httpx2", MODEL, lambda: text_of(hx.post(chat, content=BODY, headers=HEADERS).json())
        )
    if "requests" in names:
        import requests

        session = requests.Session()
        session.trust_env = False
        closers.append(session.close)
        clients["requests"] = Client(
            "requests", MODEL, lambda: text_of(session.post(chat, data=BODY, headers=HEADERS).json())
        )
    if "urllib3" in names:
        import urllib3

        pool = urllib3.PoolManager()
        closers.append(pool.clear)
        clients["urllib3"] = Client(
            "urllib3", MODEL, lambda: text_of(pool.request("POST", chat, body=BODY, headers=HEADERS).json())
        )
    if "urllib" in names:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

        def urllib_call() -> str:
            request = urllib.request.Request(chat, data=BODY, headers=HEADERS, method="POST")
            with opener.open(request) as response:
                return text_of(json.loads(response.read()))

        clients["urllib"] = Client("urllib", MODEL, urllib_call)
    if "boto3" in names:
        import boto3
        from botocore.config import Config

        bedrock = boto3.client(
            "bedrock-runtime",
            region_name="us-east-1",
            endpoint_url=url,
            aws_access_key_id="AKIAFAKEFAKEFAKE",
            aws_secret_access_key="not-a-secret",
            config=Config(retries={"total_max_attempts": 1}),
        )
        closers.append(bedrock.close)

        def boto3_call() -> str:
            r = bedrock.converse(modelId=BEDROCK_MODEL, messages=CONVERSE_MESSAGES)
            return str(r["output"]["message"]["content"][0]["text"])

        clients["boto3"] = Client("boto3", BEDROCK_MODEL, boto3_call)
    if "aiohttp" in names:
        import aiohttp

        loop = asyncio.new_event_loop()

        async def open_session() -> Any:
            return aiohttp.ClientSession()

        session_a = loop.run_until_complete(open_session())

        async def aiohttp_call() -> str:
            async with session_a.post(chat, data=BODY, headers=HEADERS) as response:
                return text_of(await response.json())

        client = Client("aiohttp", MODEL, acall=aiohttp_call)
        client.loop = loop  # type: ignore[attr-defined]
        clients["aiohttp"] = client

        def close_aiohttp() -> None:
            loop.run_until_complete(session_a.close())
            loop.close()

        closers.append(close_aiohttp)

    def close() -> None:
        for closer in closers:
            closer()

    return {n: clients[n] for n in names if n in clients}, close


def set_instrumented(on: bool) -> None:
    import llmtally

    if on:
        llmtally.instrument()
    else:
        llmtally.uninstrument()
    if llmtally.is_instrumented() != on:
        raise SystemExit("llmtally.instrument()/uninstrument() did not take")


def toggle_into(variant: str) -> None:
    """Leave llmtally in the state ``variant`` needs, having patched and unpatched the clients once
    each whatever the variant, so every unit starts after the same work on the client classes."""
    on = variant != "bare"
    set_instrumented(not on)
    set_instrumented(on)


def run_unit(client: Client, variant: str, trace: Any = None) -> tuple[int, int, Any]:
    """(CPU ns, wall ns, tally or None) of ``BATCH`` calls of ``variant``; the caller set the state.

    ``trace``, if given, is the ``sys.settrace`` function in force for the calls and the read (the
    times are then meaningless)."""
    import llmtally

    cpu, wall = time.thread_time_ns, time.perf_counter_ns
    texts: list[str] = []
    tally = None
    if client.acall is not None:
        acall = client.acall

        async def unit() -> tuple[int, int, Any]:
            sys.settrace(trace)
            w0, c0 = wall(), cpu()
            if variant == "track":
                with llmtally.track() as t:
                    for _ in range(BATCH):
                        texts.append(await acall())
                t.total_tokens  # noqa: B018 - read the totals, as a caller does
            else:
                t = None
                for _ in range(BATCH):
                    texts.append(await acall())
            c1, w1 = cpu(), wall()
            sys.settrace(None)
            return c1 - c0, w1 - w0, t

        c, w, tally = client.loop.run_until_complete(unit())  # type: ignore[attr-defined]
    else:
        call = client.call
        assert call is not None
        sys.settrace(trace)
        w0, c0 = wall(), cpu()
        if variant == "track":
            with llmtally.track() as tally:
                for _ in range(BATCH):
                    texts.append(call())
            tally.total_tokens  # noqa: B018
        else:
            for _ in range(BATCH):
                texts.append(call())
        c1, w1 = cpu(), wall()
        sys.settrace(None)
        c, w = c1 - c0, w1 - w0
    client.calls += BATCH
    if texts != [JOKE] * BATCH:
        raise SystemExit(f"{client.name}: the answers were not the fake's text: {texts[0]!r}")
    if tally is not None:
        verify(client, tally)
    return c, w, tally


def count_work(client: Client, variant: str) -> dict[str, float]:
    """llmtally's own Python work per call, counted (the same in every run, unlike times): frames of
    its code entered (a coroutine's resumptions included) and bytecodes they ran, over one unit.
    What its code calls in C (``json``, ``re``, ``zlib``) and in other packages is not counted."""
    import llmtally

    src = os.path.dirname(os.path.abspath(llmtally.__file__))
    ours, testing = src + os.sep, os.path.join(src, "testing") + os.sep
    counts = {"frames": 0, "bytecodes": 0}

    def local(frame: Any, event: str, arg: Any) -> Any:
        if event == "opcode":
            counts["bytecodes"] += 1
        return local

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        name = frame.f_code.co_filename
        if name.startswith(ours) and not name.startswith(testing):
            counts["frames"] += 1
            frame.f_trace_opcodes = True
            return local
        return None

    toggle_into(variant)
    run_unit(client, variant, trace=tracer)
    return {k: v / BATCH for k, v in counts.items()}


def verify(client: Client, t: Any) -> None:
    got = (t.successful_requests, t.failed_requests, t.prompt_tokens, t.completion_tokens, t.cost)
    want = (BATCH, 0, BATCH * PROMPT_TOKENS, BATCH * COMPLETION_TOKENS, BATCH * COST[client.model])
    if got != want:
        raise SystemExit(
            f"{client.name}: llmtally counted (requests, failed, in, out, cost) = {got}, expected {want}"
        )


def check_hooks(on: bool, names: list[str]) -> dict[str, bool]:
    """Whether each client's hook is in place; must be ``on`` for all of them."""
    import http.client

    seams: dict[str, Any] = {"urllib": http.client.HTTPConnection.request}
    if "requests" in names:
        import requests

        seams["requests"] = requests.Session.send
    if "aiohttp" in names:
        import aiohttp

        seams["aiohttp"] = aiohttp.ClientSession._request
    if "urllib3" in names or "boto3" in names:
        import urllib3.connectionpool

        seams["urllib3"] = urllib3.connectionpool.HTTPConnectionPool.urlopen
    if "httpx2" in names or "openai" in names:
        import httpx2

        seams["httpx2"] = httpx2.Client.send
    hooked = {name: hasattr(fn, "__llmtally_original__") for name, fn in seams.items()}
    if any(v != on for v in hooked.values()):
        raise SystemExit(f"hooks {'missing' if on else 'left in place'}: {hooked}")
    return hooked


def timed_block(
    client: Client, units: int, rng: random.Random, out: dict[str, dict[str, dict[str, list[float]]]]
) -> None:
    """``units`` units of each variant, alternating unit by unit in a fresh random order; keeps each
    variant's median, in microseconds per unit."""
    cpu: dict[str, list[int]] = {v: [] for v in VARIANTS}
    wall: dict[str, list[int]] = {v: [] for v in VARIANTS}
    order = list(VARIANTS)
    for _ in range(units):
        rng.shuffle(order)
        for variant in order:
            toggle_into(variant)
            c, w, _ = run_unit(client, variant)
            cpu[variant].append(c)
            wall[variant].append(w)
    for v in VARIANTS:
        out["cpu"][client.name][v].append(C.median(cpu[v]) / 1000.0)
        out["wall"][client.name][v].append(C.median(wall[v]) / 1000.0)


def stats(per_round: dict[str, dict[str, list[float]]]) -> dict[str, Any]:
    res: dict[str, Any] = {}
    for name, r in per_round.items():
        bare = [b / BATCH for b in r["bare"]]
        added = [(t - b) / BATCH for t, b in zip(r["track"], r["bare"], strict=True)]
        noscope = [(n - b) / BATCH for n, b in zip(r["noscope"], r["bare"], strict=True)]
        pct = [100 * a / b for a, b in zip(added, bare, strict=True)]
        res[name] = {
            "bare_us_per_call": C.summary(bare),
            "track_us_per_call": C.summary([t / BATCH for t in r["track"]]),
            "added_us_per_call": C.summary(added),
            "added_pct_of_bare": C.summary(pct),
            "noscope_added_us_per_call": C.summary(noscope),
            "noscope_added_pct_of_bare": C.summary([100 * a / b for a, b in zip(noscope, bare, strict=True)]),
        }
    ref, raw = res.get(REFERENCE), res.get(RAW_REFERENCE)
    for s in res.values():
        ours = s["added_us_per_call"]["median"]
        if ref is not None:
            theirs = ref["added_us_per_call"]["median"]
            s["added_over_reference"] = ours / theirs if theirs > 0 else float("nan")
            s["added_minus_reference_us"] = ours - theirs
            s["goal_met"] = ours <= theirs
            # Not met, but no more than the reference's own spread (its p75) above it.
            s["within_reference_spread"] = ours <= ref["added_us_per_call"]["p75"]
        if raw is not None:
            theirs = raw["added_us_per_call"]["median"]
            s["added_over_raw_httpx2"] = ours / theirs if theirs > 0 else float("nan")
    return res


def measure(clients: dict[str, Client], rounds: int, units: int) -> tuple[Any, float, Any]:
    import llmtally

    names = list(clients)
    # Correctness first, then warm every path (imports, the catalogue, plans, pools).
    set_instrumented(True)
    hooks = check_hooks(True, names)
    llmtally.flush()
    for client in clients.values():
        for variant in ("track", "noscope", "bare", "track"):
            toggle_into(variant)
            run_unit(client, variant)
    toggle_into("bare")
    check_hooks(False, names)
    for _ in range(2):
        for client in clients.values():
            for variant in VARIANTS:
                toggle_into(variant)
                run_unit(client, variant)
    counted = {name: {v: count_work(c, v) for v in ("track", "noscope")} for name, c in clients.items()}
    gc.collect()
    gc.freeze()  # the setup's objects stay out of the collector's way, for every variant alike

    rng = random.Random(20261130)
    per_round: dict[str, dict[str, dict[str, list[float]]]] = {
        clock: {n: {v: [] for v in VARIANTS} for n in names} for clock in ("cpu", "wall")
    }
    started = time.perf_counter()
    for r in range(rounds):
        for k in range(len(names)):
            timed_block(clients[names[(r + k) % len(names)]], units, rng, per_round)
    return {"hooks": hooks, "counted": counted}, time.perf_counter() - started, per_round


def run(rounds: int, units: int, names: list[str]) -> dict[str, Any]:
    os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    with FakeServer() as fake:
        clients, close = build(fake.url, names)
        try:
            info, elapsed, per_round = measure(clients, rounds, units)
        finally:
            set_instrumented(True)
            close()
    sent = sum(c.calls for c in clients.values())
    if fake.requests != sent:
        raise SystemExit(f"the fake answered {fake.requests} requests, {sent} were sent")
    return {
        "benchmark": "adapters",
        "machine": C.machine(),
        "versions": C.versions(
            "llmtally", "openai", "httpx2", "requests", "aiohttp", "urllib3", "boto3", "botocore"
        ),
        "rounds": rounds,
        "units_per_round": units,
        "calls_per_unit": BATCH,
        "seconds": round(elapsed, 1),
        "clock": "thread CPU time (wall time under 'wall')",
        "reference": REFERENCE,
        "hooks": info["hooks"],
        "counted_per_call": info["counted"],
        "checks": {"requests_sent": sent, "requests_answered": fake.requests, "paths": fake.paths},
        "cpu": stats(per_round["cpu"]),
        "wall": stats(per_round["wall"]),
    }


def render(res: dict[str, Any]) -> str:
    m = res["machine"]
    lines = [
        f"adapters: {res['rounds']} rounds x {res['units_per_round']} units of {res['calls_per_unit']} calls per "
        f"variant, alternating unit by unit, {res['seconds']} s; Python {m['python']}, {m['cores']} cores "
        f"({m['cpu']}), load {m['loadavg']}",
        "FakeProvider over loopback (child process); per call, median [p25..p75] over rounds; added = "
        f"{BATCH} calls in one track(), totals read once, minus {BATCH} bare calls (uninstrumented), / {BATCH}",
        "",
    ]
    rows = []
    for name, s in res["cpu"].items():
        b, a, p, n = (
            s["bare_us_per_call"],
            s["added_us_per_call"],
            s["added_pct_of_bare"],
            s["noscope_added_us_per_call"],
        )
        w = res["wall"][name]["added_us_per_call"]
        ratio, raw = s.get("added_over_reference"), s.get("added_over_raw_httpx2")
        k = res["counted_per_call"][name]
        rows.append(
            [
                LABELS[name],
                f"{b['median']:.0f} [{b['p25']:.0f}..{b['p75']:.0f}]",
                f"{a['median']:+.1f} [{a['p25']:+.1f}..{a['p75']:+.1f}]",
                f"{p['median']:+.1f}%",
                f"{n['median']:+.1f} [{n['p25']:+.1f}..{n['p75']:+.1f}]",
                f"{w['median']:+.1f}",
                "" if name == REFERENCE or ratio is None else f"{ratio:.2f}",
                "" if name == RAW_REFERENCE or raw is None else f"{raw:.2f}",
                f"{k['track']['frames']:.0f} / {k['track']['bytecodes']:,.0f}",
                f"{k['noscope']['frames']:.0f} / {k['noscope']['bytecodes']:,.0f}",
            ]
        )
    lines.append(
        C.table(
            [
                "client",
                "bare CPU us",
                "added CPU us [p25..p75]",
                "added",
                "no scope: added us",
                "wall added us",
                f"added / {REFERENCE}'s",
                f"added / {RAW_REFERENCE}'s",
                "counted: frames / bytecodes",
                "no scope: counted",
            ],
            rows,
        )
    )
    ref = res["cpu"].get(REFERENCE)
    if ref:
        ra = ref["added_us_per_call"]["median"]
        others = [(n, s) for n, s in res["cpu"].items() if n != REFERENCE]
        met = [LABELS[n] for n, s in others if s["goal_met"]]
        near = [LABELS[n] for n, s in others if not s["goal_met"] and s["within_reference_spread"]]
        missed = [LABELS[n] for n, s in others if not s["within_reference_spread"]]
        lines += [
            "",
            f"goal: added time per call <= the {LABELS[REFERENCE]} path's, {ra:+.1f} us "
            f"[p75 {ref['added_us_per_call']['p75']:+.1f}] ({ref['added_pct_of_bare']['median']:+.1f}% of "
            "its bare call), in this run",
            f"  met: {', '.join(met) or 'none'}",
            f"  not met, within the reference's spread (<= its p75): {', '.join(near) or 'none'}",
            f"  not met: {', '.join(missed) or 'none'}",
        ]
    lines.append(
        "counted: llmtally's own Python frames entered and bytecodes run per call (tracked, totals read "
        f"once per {BATCH}; and with no scope open), the same in every run"
    )
    c = res["checks"]
    lines.append(
        f"checks: every tracked unit counted {BATCH} requests, {BATCH * PROMPT_TOKENS} + {BATCH * COMPLETION_TOKENS} "
        f"tokens and its cost; the fake answered {c['requests_answered']} of {c['requests_sent']} requests sent"
    )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--rounds", type=int, default=48)
    ap.add_argument("--units", type=int, default=6, help="units of each variant per client and round")
    ap.add_argument("--only", default="", help="comma-separated clients: " + ",".join(LABELS))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    import importlib.util

    wanted = [n.strip() for n in args.only.split(",") if n.strip()] or list(LABELS)
    unknown = [n for n in wanted if n not in LABELS]
    if unknown:
        ap.error(f"unknown clients: {', '.join(unknown)}")
    names = [n for n in wanted if NEEDS[n] is None or importlib.util.find_spec(NEEDS[n]) is not None]
    res = run(args.rounds, args.units, names)
    res["not_installed"] = [n for n in wanted if n not in names]
    C.emit(res, render(res), args.json)


if __name__ == "__main__":
    sys.exit(main())
