"""Added work per tracked call, counted by valgrind instead of timed: instructions and L1 cache misses.

Timings on a shared VM swing by tens of microseconds from run to run; valgrind's counts do not (the
same program and inputs give the same counts to within a few hundred instructions). This runs the
same calls as ``overhead.py`` -- ``ChatOpenAI(model="gpt-4").invoke(...)`` and the openai SDK's
``chat.completions.create(...)``, answered in memory by ``FakeProvider`` -- each variant in its own
process under ``valgrind --tool=cachegrind --cache-sim=yes``, once with N calls and once with 3N, and
reports the difference divided by 2N: what one call costs, with start-up and warm-up cancelled out.

The L1 misses matter as much as the instructions: llmtally's code runs between the SDK's own, which
has evicted it from the CPU caches, so each call pays for bringing its code and data back. A rough
cost in cycles is shown as instructions + 12 x L1 misses (an L2 hit); compare ratios, not cycles.

    python bench/instructions.py [--calls 100] [--repeats 2] [--jobs 2] [--json]

Needs valgrind (``apt-get install valgrind``); slow: about 12 minutes with two jobs.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import _common as C

VARIANTS = {
    "sdk_bare": "openai SDK create, bare",
    "sdk_scope": "... bare client inside track() (the scope alone)",
    "sdk_track": "... in llmtally.track(), totals read",
    "lc_bare": "ChatOpenAI.invoke, bare",
    "lc_cb": "... in get_openai_callback(), totals read",
    "lc_track": "... in llmtally.track(), totals read",
}
BASE = {"sdk_scope": "sdk_bare", "sdk_track": "sdk_bare", "lc_cb": "lc_bare", "lc_track": "lc_bare"}

PROGRAM = textwrap.dedent(
    """
    import gc, sys, warnings
    warnings.filterwarnings("ignore")
    variant, n = sys.argv[1], int(sys.argv[2])
    import httpx2, openai
    import llmtally
    from llmtally.testing import FakeProvider, Reply
    llmtally.uninstrument()

    class BareClient(httpx2.Client):
        send = httpx2.Client.send  # httpx2's own send, taken before llmtally hooks it

    reply = Reply(text="Why did the chicken cross the road?", prompt_tokens=11, completion_tokens=13, model="gpt-4")
    transport = FakeProvider(handler=lambda request: reply).httpx2_transport()
    llmtally.instrument()
    bare, hooked = BareClient(transport=transport), httpx2.Client(transport=transport)
    MESSAGES = [{"role": "user", "content": "Tell me a joke"}]
    if variant.startswith("sdk"):
        client = openai.OpenAI(base_url="http://fake/v1", api_key="sk", max_retries=0,
                               http_client=hooked if variant == "sdk_track" else bare)
        call = lambda: client.chat.completions.create(model="gpt-4", messages=MESSAGES)
    else:
        from langchain_community.callbacks import get_openai_callback
        from langchain_openai import ChatOpenAI
        llm = ChatOpenAI(model="gpt-4", api_key="sk", base_url="http://fake/v1", max_retries=0,
                         http_client=hooked if variant == "lc_track" else bare)
        call = lambda: llm.invoke("Tell me a joke")

    def run():
        if variant in ("sdk_bare", "lc_bare"):
            call()
        elif variant == "lc_cb":
            with get_openai_callback() as cb:
                call()
            cb.total_tokens
        else:
            with llmtally.track() as t:
                call()
            t.total_tokens

    for _ in range(50):
        run()
    gc.collect()
    gc.freeze()
    for _ in range(n):
        run()
    """
)

_FIELDS = {r"I\s+refs": "ir", r"I1\s+misses": "i1", r"D1\s+misses": "d1"}


def count(variant: str, calls: int) -> dict[str, int]:
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    proc = subprocess.run(
        [
            "valgrind",
            "--tool=cachegrind",
            "--cache-sim=yes",
            "--cachegrind-out-file=/dev/null",
            sys.executable,
            "-c",
            PROGRAM,
            variant,
            str(calls),
        ],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    out: dict[str, int] = {}
    for label, key in _FIELDS.items():
        m = re.search(label + r":\s+([\d,]+)", proc.stderr)
        if m is None:
            raise SystemExit(f"valgrind printed no {label!r} for {variant}:\n{proc.stderr[-2000:]}")
        out[key] = int(m.group(1).replace(",", ""))
    return out


def least(variant: str, calls: int, repeats: int) -> dict[str, int]:
    # Threads (the catalogue warm-up, the SDKs' own) interleave differently under valgrind from run
    # to run and now and then add work; the deterministic part is the least of a few runs.
    runs = [count(variant, calls) for _ in range(repeats)]
    return {key: min(r[key] for r in runs) for key in runs[0]}


def per_call(variant: str, calls: int, repeats: int = 2) -> dict[str, float]:
    # A first run, uncounted, warms the file caches.
    subprocess.run([sys.executable, "-c", PROGRAM, variant, "1"], check=True, capture_output=True)
    low, high = least(variant, calls, repeats), least(variant, 3 * calls, repeats)
    ir = (high["ir"] - low["ir"]) / (2 * calls)
    l1 = (high["i1"] + high["d1"] - low["i1"] - low["d1"]) / (2 * calls)
    return {"instructions": ir, "l1_misses": l1, "cycles_estimate": ir + 12 * l1}


def run(calls: int, jobs: int, repeats: int) -> dict[str, Any]:
    if shutil.which("valgrind") is None:
        raise SystemExit("bench/instructions.py needs valgrind (apt-get install valgrind)")
    with ThreadPoolExecutor(jobs) as pool:
        results = dict(zip(VARIANTS, pool.map(lambda v: per_call(v, calls, repeats), VARIANTS), strict=True))
    added = {
        name: {k: results[name][k] - results[base][k] for k in results[name]} for name, base in BASE.items()
    }
    return {
        "benchmark": "instructions",
        "machine": C.machine(),
        "versions": C.versions("llmtally", "openai", "httpx2", "langchain-openai", "langchain-community"),
        "calls": calls,
        "repeats": repeats,
        "per_call": results,
        "added": added,
        "ratios": {
            "lc_track_over_lc_cb": {
                k: added["lc_track"][k] / added["lc_cb"][k] if added["lc_cb"][k] else float("nan")
                for k in ("instructions", "l1_misses", "cycles_estimate")
            },
            "sdk_track_pct_of_sdk_call": {
                k: 100 * added["sdk_track"][k] / results["sdk_bare"][k]
                for k in ("instructions", "l1_misses", "cycles_estimate")
            },
        },
    }


def render(res: dict[str, Any]) -> str:
    rows = []
    for name, label in VARIANTS.items():
        r = res["per_call"][name]
        a = res["added"].get(name)
        rows.append(
            [
                label,
                f"{r['instructions']:,.0f}",
                f"{a['instructions']:+,.0f}" if a else "",
                f"{r['l1_misses']:,.0f}",
                f"{a['l1_misses']:+,.0f}" if a else "",
                f"{a['cycles_estimate']:+,.0f}" if a else "",
            ]
        )
    ratio, pct = res["ratios"]["lc_track_over_lc_cb"], res["ratios"]["sdk_track_pct_of_sdk_call"]
    return "\n".join(
        [
            f"instructions: per call, (3N - N) / 2N with N = {res['calls']}, the least of "
            f"{res['repeats']} runs per size; valgrind cachegrind",
            "",
            C.table(
                ["variant", "instructions", "added", "L1 misses", "added", "added ~cycles (Ir + 12 x L1m)"],
                rows,
            ),
            "",
            f"track() added / get_openai_callback() added on ChatOpenAI.invoke: instructions "
            f"{ratio['instructions']:.2f}, L1 misses {ratio['l1_misses']:.2f}, ~cycles {ratio['cycles_estimate']:.2f}",
            f"track() added on the SDK create call: {pct['instructions']:.2f}% of its instructions, "
            f"{pct['l1_misses']:.2f}% of its L1 misses, ~{pct['cycles_estimate']:.2f}% of its cycles",
        ]
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--calls", type=int, default=100)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2, help="runs per size; the least count is kept")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    res = run(args.calls, args.jobs, args.repeats)
    C.emit(res, render(res), args.json)


if __name__ == "__main__":
    main()
