"""Added time per tracked LLM call: llmtally.track() vs LangChain's get_openai_callback().

The same ``ChatOpenAI(model="gpt-4").invoke("Tell me a joke")`` call, answered in memory by
``llmtally.testing.FakeProvider`` through an httpx2 MockTransport (no socket, so the client-side
cost is all there is), is timed

  (a) bare: through httpx2's own ``send``, no llmtally hook on the path, no callback;
  (b) inside LangChain's ``get_openai_callback()`` (langchain_community), no llmtally hook;
  (c) inside ``llmtally.track()``, through the hooked ``httpx2.Client.send``.

Each call opens its own scope (``with ...: llm.invoke(...)``), so scope entry and exit are counted.
The same is done for a streamed call (``ChatOpenAI(streaming=True, stream_usage=True)``, i.e.
``stream_options.include_usage``), and for the raw openai SDK (``client.chat.completions.create``,
plain and streamed with include_usage), bare vs tracked; plus the SDK call with llmtally
instrumented but no scope open (what every untracked call pays once llmtally is instrumented).

Bare calls go through a ``httpx2.Client`` subclass whose ``send`` is httpx2's original function
(taken before instrumenting), so bare and tracked calls can alternate call by call in one process
while llmtally is instrumented: on a shared, noisy machine only such fine interleaving resolves
tens of microseconds on a ~2 ms call. To show that this is the truly bare path, every round also
times, with ``llmtally.uninstrument()`` in force, the plain client against the bare one
("check" rows: their difference should be ~0).

Each round makes ``--calls`` calls of every variant, family by family (invoke, streamed invoke,
SDK, streamed SDK), alternating a family's variants call by call in a fresh random order each time,
and keeps each variant's median; "added" is the per-round difference to the bare variant
of the same round. Figures are medians over rounds with p25..p75.

    python bench/overhead.py [--rounds 40] [--calls 20] [--json]
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import time
import warnings
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import _common as C

PROMPT = "Tell me a joke"
MESSAGES = [{"role": "user", "content": PROMPT}]
REPLY_TEXT = "Why did the chicken cross the road? To get to the other side."


#: Calls per scope in the "one scope, several calls, read once" family (an agent run, a batch).
BATCH = 10

LABELS = {
    "lc_bare10": f"(a) {BATCH} x ChatOpenAI.invoke, bare",
    "lc_cb10": "(b) ... in one get_openai_callback()",
    "lc_track10": "(c) ... in one llmtally.track()",
    "lc_bare": "(a) ChatOpenAI.invoke, bare",
    "lc_cb": "(b) ... in get_openai_callback()",
    "lc_track": "(c) ... in llmtally.track()",
    "lc_stream_bare": "(a) ChatOpenAI streamed, bare",
    "lc_stream_cb": "(b) ... in get_openai_callback()",
    "lc_stream_track": "(c) ... in llmtally.track()",
    "sdk_bare": "openai SDK create, bare",
    "sdk_track": "... in llmtally.track()",
    "sdk_noscope": "... instrumented, no scope open",
    "sdk_limit": "... in llmtally.track(max_cost=...)",
    "sdk_stream_bare": "openai SDK streamed+usage, bare",
    "sdk_stream_track": "... in llmtally.track()",
    "lc_bare_u": "check: uninstrumented, ChatOpenAI, bare client",
    "lc_uninstr": "... plain httpx2.Client",
    "sdk_bare_u": "check: uninstrumented, SDK, bare client",
    "sdk_uninstr": "... plain httpx2.Client",
}
BASE = {
    "lc_cb10": "lc_bare10",
    "lc_track10": "lc_bare10",
    "lc_cb": "lc_bare",
    "lc_track": "lc_bare",
    "lc_stream_cb": "lc_stream_bare",
    "lc_stream_track": "lc_stream_bare",
    "sdk_track": "sdk_bare",
    "sdk_noscope": "sdk_bare",
    "sdk_limit": "sdk_bare",
    "sdk_stream_track": "sdk_stream_bare",
}


def build() -> dict[str, Callable[[], Any]]:
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    import httpx2
    import openai
    from langchain_community.callbacks import get_openai_callback
    from langchain_openai import ChatOpenAI

    import llmtally
    from llmtally.testing import FakeProvider, Reply

    llmtally.uninstrument()
    assert not hasattr(httpx2.Client.send, "__llmtally_original__")

    class BareClient(httpx2.Client):
        """An httpx2 client whose ``send`` is httpx2's own, taken before llmtally hooked anything.

        The hook is patched onto ``httpx2.Client.send``; this subclass's own attribute shadows it,
        so calls through it run exactly the uninstrumented code path even while llmtally is
        instrumented. That lets bare and tracked calls alternate call by call (the only way to
        compare microseconds on a noisy machine); the "bare, uninstrumented" row checks it.
        """

        send = httpx2.Client.send

    reply = Reply(text=REPLY_TEXT, prompt_tokens=11, completion_tokens=13, model="gpt-4")
    fake = FakeProvider(handler=lambda request: reply)
    transport = fake.httpx2_transport()
    bare_http = BareClient(transport=transport)
    hooked_http = httpx2.Client(transport=transport)

    def chat(http: Any, **kw: Any) -> Any:
        return ChatOpenAI(
            model="gpt-4",
            api_key="sk-bench",
            base_url="http://fake/v1",
            http_client=http,
            max_retries=0,
            **kw,
        )

    def sdk(http: Any) -> Any:
        return openai.OpenAI(base_url="http://fake/v1", api_key="sk-bench", http_client=http, max_retries=0)

    llm_bare, llm_hooked = chat(bare_http), chat(hooked_http)
    llm_stream_bare = chat(bare_http, streaming=True, stream_usage=True)
    llm_stream_hooked = chat(hooked_http, streaming=True, stream_usage=True)
    sdk_bare, sdk_hooked = sdk(bare_http), sdk(hooked_http)

    def sdk_call(client: Any) -> Any:
        return client.chat.completions.create(model="gpt-4", messages=MESSAGES)

    def sdk_stream(client: Any) -> Any:
        stream = client.chat.completions.create(
            model="gpt-4", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
        for _ in stream:
            pass

    def in_callback(fn: Callable[[], Any]) -> Callable[[], Any]:
        def run() -> Any:
            with get_openai_callback() as cb:
                fn()
            # Read the totals, as a caller does: llmtally settles calls lazily, on read, so a
            # comparison that never reads would leave its work out.
            cb.total_tokens  # noqa: B018
            return cb

        return run

    def in_track(fn: Callable[[], Any]) -> Callable[[], Any]:
        def run() -> Any:
            with llmtally.track() as t:
                fn()
            t.total_tokens  # noqa: B018
            return t

        return run

    def in_limited(fn: Callable[[], Any]) -> Callable[[], Any]:
        # A scope with a cost limit: each request is checked against its spend before it is sent.
        def run() -> Any:
            with llmtally.track(max_cost="1000000") as t:
                fn()
            t.total_tokens  # noqa: B018
            return t

        return run

    def ten(fn: Callable[[], Any]) -> Callable[[], Any]:
        def run() -> Any:
            for _ in range(BATCH):
                fn()

        return run

    return {
        "lc_bare10": ten(lambda: llm_bare.invoke(PROMPT)),
        "lc_cb10": in_callback(ten(lambda: llm_bare.invoke(PROMPT))),
        "lc_track10": in_track(ten(lambda: llm_hooked.invoke(PROMPT))),
        "lc_bare": lambda: llm_bare.invoke(PROMPT),
        "lc_cb": in_callback(lambda: llm_bare.invoke(PROMPT)),
        "lc_track": in_track(lambda: llm_hooked.invoke(PROMPT)),
        "lc_stream_bare": lambda: llm_stream_bare.invoke(PROMPT),
        "lc_stream_cb": in_callback(lambda: llm_stream_bare.invoke(PROMPT)),
        "lc_stream_track": in_track(lambda: llm_stream_hooked.invoke(PROMPT)),
        "sdk_bare": lambda: sdk_call(sdk_bare),
        "sdk_track": in_track(lambda: sdk_call(sdk_hooked)),
        "sdk_noscope": lambda: sdk_call(sdk_hooked),
        "sdk_limit": in_limited(lambda: sdk_call(sdk_hooked)),
        "sdk_stream_bare": lambda: sdk_stream(sdk_bare),
        "sdk_stream_track": in_track(lambda: sdk_stream(sdk_hooked)),
        # Checks of the method: fully uninstrumented, on the hooked client (run with uninstrument()).
        "lc_uninstr": lambda: llm_hooked.invoke(PROMPT),
        "lc_bare_u": lambda: llm_bare.invoke(PROMPT),
        "sdk_uninstr": lambda: sdk_call(sdk_hooked),
        "sdk_bare_u": lambda: sdk_call(sdk_bare),
    }


def set_instrumented(on: bool) -> None:
    import llmtally

    if on:
        llmtally.instrument()
    else:
        llmtally.uninstrument()
    assert llmtally.is_instrumented() == on


def check(fns: dict[str, Callable[[], Any]]) -> dict[str, Any]:
    """Every scope counted the one call, at the same tokens and cost."""
    out: dict[str, Any] = {}
    set_instrumented(True)
    for name in ("lc_cb", "lc_stream_cb"):
        cb = fns[name]()
        out[name] = (cb.successful_requests, cb.prompt_tokens, cb.completion_tokens, cb.total_cost)
    if fns["lc_track10"]().successful_requests != BATCH:
        raise SystemExit("llmtally missed calls of the batch")
    for name in ("lc_track", "lc_stream_track", "sdk_track", "sdk_stream_track"):
        t = fns[name]()
        out[name] = (t.successful_requests, t.prompt_tokens, t.completion_tokens, t.cost)
        if (t.successful_requests, t.prompt_tokens, t.completion_tokens, t.cost) != (
            1,
            11,
            13,
            Decimal("0.00111"),
        ):
            raise SystemExit(f"llmtally counted {out[name]} for {name}, expected (1, 11, 13, 0.00111)")
    # The bare client is not metered even inside a scope.
    import llmtally

    with llmtally.track() as t:
        fns["lc_bare"]()
    if t.successful_requests:
        raise SystemExit("the bare client was metered")
    return out


def timed_block(
    fns: dict[str, Callable[[], Any]],
    names: list[str],
    calls: int,
    rng: random.Random,
    out: dict[str, dict[str, list[float]]],
) -> None:
    """``calls`` calls of every variant in ``names``, alternating call by call in a fresh random order
    each time (a fixed cyclic order would give each variant the same predecessor, whose leftovers in
    the CPU caches bias it); keeps each variant's median.

    Each call is timed on two clocks: this thread's CPU time (what the call itself costs; a
    neighbour's load on the shared cores barely moves it) and wall time (perf_counter).
    """
    cpu_clock, wall_clock = time.thread_time_ns, time.perf_counter_ns
    cpu: dict[str, list[int]] = {name: [] for name in names}
    wall: dict[str, list[int]] = {name: [] for name in names}
    order = list(names)
    for _ in range(calls):
        rng.shuffle(order)
        for name in order:
            fn = fns[name]
            w0 = wall_clock()
            c0 = cpu_clock()
            fn()
            c1 = cpu_clock()
            w1 = wall_clock()
            cpu[name].append(c1 - c0)
            wall[name].append(w1 - w0)
    for name in names:
        out["cpu"][name].append(C.median(cpu[name]) / 1000.0)  # microseconds
        out["wall"][name].append(C.median(wall[name]) / 1000.0)


def stats(per_round: dict[str, list[float]]) -> dict[str, Any]:
    added: dict[str, list[float]] = {}
    for name, base in {**BASE, "lc_uninstr": "lc_bare_u", "sdk_uninstr": "sdk_bare_u"}.items():
        added[name] = [v - b for v, b in zip(per_round[name], per_round[base], strict=False)]
    med = {k: C.median(v) for k, v in per_round.items()}
    add = {k: C.median(v) for k, v in added.items()}
    nan = float("nan")
    ratios = [c / b for c, b in zip(added["lc_track"], added["lc_cb"], strict=False) if b > 0]
    return {
        "per_call_us": {k: C.summary(v) for k, v in per_round.items()},
        "added_us": {k: C.summary(v) for k, v in added.items()},
        "headline": {
            "lc_cb_added_us": add["lc_cb"],
            "lc_track_added_us": add["lc_track"],
            "ratio_track_over_callback": add["lc_track"] / add["lc_cb"] if add["lc_cb"] > 0 else nan,
            "ratio_track_over_callback_per_round": C.summary(ratios) if ratios else None,
            "ratio_track_over_callback_batch": (
                add["lc_track10"] / add["lc_cb10"] if add["lc_cb10"] > 0 else nan
            ),
            "lc_track10_added_per_call_us": add["lc_track10"] / BATCH,
            "lc_cb10_added_per_call_us": add["lc_cb10"] / BATCH,
            "ratio_track_over_callback_stream": (
                add["lc_stream_track"] / add["lc_stream_cb"] if add["lc_stream_cb"] > 0 else nan
            ),
            "lc_track_added_pct_of_sdk_call": 100 * add["lc_track"] / med["sdk_bare"],
            "sdk_track_added_pct_of_sdk_call": 100 * add["sdk_track"] / med["sdk_bare"],
            "sdk_noscope_added_pct_of_sdk_call": 100 * add["sdk_noscope"] / med["sdk_bare"],
            "limit_check_added_us": add["sdk_limit"] - add["sdk_track"],
            "sdk_stream_track_added_pct": 100 * add["sdk_stream_track"] / med["sdk_stream_bare"],
        },
    }


def run(rounds: int, calls: int) -> dict[str, Any]:
    fns = build()
    checks = check(fns)
    # Families of variants that are compared with each other; they alternate call by call.
    families = [
        ["lc_bare10", "lc_cb10", "lc_track10"],
        ["lc_bare", "lc_cb", "lc_track"],
        ["lc_stream_bare", "lc_stream_cb", "lc_stream_track"],
        ["sdk_bare", "sdk_track", "sdk_noscope", "sdk_limit"],
        ["sdk_stream_bare", "sdk_stream_track"],
    ]
    # The check of the method, timed with llmtally.uninstrument() in force.
    method = [["lc_bare_u", "lc_uninstr"], ["sdk_bare_u", "sdk_uninstr"]]
    # Warm every path (imports, catalogue, plans, pydantic models) before timing.
    set_instrumented(False)
    for family in method:
        for name in family:
            for _ in range(10):
                fns[name]()
    set_instrumented(True)
    for family in families:
        for name in family:
            for _ in range(10):
                fns[name]()
    gc.collect()
    gc.freeze()  # the setup's objects stay out of the collector's way, for every variant alike

    rng = random.Random(20240601)
    per_round: dict[str, dict[str, list[float]]] = {
        clock: {name: [] for name in fns} for clock in ("cpu", "wall")
    }
    started = time.perf_counter()
    for r in range(rounds):
        set_instrumented(True)
        for k in range(len(families)):
            timed_block(fns, families[(r + k) % len(families)], calls, rng, per_round)
        set_instrumented(False)
        for family in method:
            timed_block(fns, family, max(4, calls // 4), rng, per_round)
    elapsed = time.perf_counter() - started
    return {
        "benchmark": "overhead",
        "machine": C.machine(),
        "versions": C.versions(
            "llmtally", "openai", "httpx2", "langchain-openai", "langchain-core", "langchain-community"
        ),
        "rounds": rounds,
        "calls_per_round": calls,
        "seconds": round(elapsed, 1),
        "checks": checks,
        "cpu": stats(per_round["cpu"]),
        "wall": stats(per_round["wall"]),
    }


def render(res: dict[str, Any]) -> str:
    m = res["machine"]
    lines = [
        f"overhead: {res['rounds']} rounds x {res['calls_per_round']} calls per variant, alternating call by "
        f"call, {res['seconds']} s; Python {m['python']}, {m['cores']} cores ({m['cpu']}), load {m['loadavg']}",
        "per-call median in us [p25..p75 over rounds]; added = per-round difference to the bare row above it",
    ]
    order = (
        "lc_bare10",
        "lc_cb10",
        "lc_track10",
        "lc_bare",
        "lc_cb",
        "lc_track",
        "lc_stream_bare",
        "lc_stream_cb",
        "lc_stream_track",
        "sdk_bare",
        "sdk_track",
        "sdk_noscope",
        "sdk_limit",
        "sdk_stream_bare",
        "sdk_stream_track",
        "lc_bare_u",
        "lc_uninstr",
        "sdk_bare_u",
        "sdk_uninstr",
    )
    rows = []
    for name in order:
        row = [LABELS[name]]
        for clock in ("cpu", "wall"):
            s = res[clock]["per_call_us"][name]
            a = res[clock]["added_us"].get(name)
            row.append(f"{s['median']:.0f} [{s['p25']:.0f}..{s['p75']:.0f}]")
            row.append(f"{a['median']:+.1f} [{a['p25']:+.1f}..{a['p75']:+.1f}]" if a else "")
        rows.append(row)
    lines += ["", C.table(["variant", "CPU us", "CPU added us", "wall us", "wall added us"], rows), ""]
    for clock in ("cpu", "wall"):
        h = res[clock]["headline"]
        pr = h["ratio_track_over_callback_per_round"]
        per_round = f" (per-round {pr['median']:.2f} [{pr['p25']:.2f}..{pr['p75']:.2f}])" if pr else ""
        lines += [
            f"[{clock}] track() added / get_openai_callback() added: invoke {h['ratio_track_over_callback']:.3f}"
            f"{per_round}, streamed {h['ratio_track_over_callback_stream']:.3f}, {BATCH} calls in one scope "
            f"{h['ratio_track_over_callback_batch']:.3f} ({h['lc_track10_added_per_call_us']:.1f} vs "
            f"{h['lc_cb10_added_per_call_us']:.1f} us per call)   (goal <= 0.5)",
            f"[{clock}] track() added on ChatOpenAI.invoke = {h['lc_track_added_pct_of_sdk_call']:.2f}% of a bare SDK call"
            f" (goal <= 3%); on the SDK call itself {h['sdk_track_added_pct_of_sdk_call']:.2f}%;"
            f" instrumented, no scope {h['sdk_noscope_added_pct_of_sdk_call']:.2f}%;"
            f" streamed SDK call {h['sdk_stream_track_added_pct']:.2f}%;"
            f" limit check (track(max_cost=) vs track()) {h['limit_check_added_us']:+.1f} us",
        ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--calls", type=int, default=20, help="calls per variant per round")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    res = run(args.rounds, args.calls)
    C.emit(res, render(res), args.json)


if __name__ == "__main__":
    sys.exit(main())
