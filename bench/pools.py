"""What carrying scopes into process pools costs: ``ProcessPoolExecutor.map`` of tasks, per task.

Contenders, each in a fresh process (the patches are process-wide), alternated round by round:

- ``plain``: llmtally not imported;
- ``started``: llmtally metering (``instrument()`` before the pool starts), no scope open (each
  task is still sent wrapped, so that a pool made inside a scope does not count later tasks in it);
- ``scope``: inside ``llmtally.track()`` (each task carries the scope; its worker relays calls back).

Two workloads: ``trivial`` tasks (nothing but the task: the worst case, all overhead) and ``llm``
tasks (one chat completion through the openai SDK against the fake provider over loopback HTTP,
served from another process). Wall time of the ``map`` alone, the pool warmed up first; medians of
the rounds. Usage: ``python bench/pools.py [--json] [--rounds N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import emit, machine, spread

CHILD = textwrap.dedent(
    """
    import json, os, sys, time
    from concurrent.futures import ProcessPoolExecutor

    def trivial(i):
        return i

    def llm(i):
        import openai
        client = openai.OpenAI(base_url=os.environ["FAKE_URL"] + "/v1", api_key="sk-test", max_retries=0)
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        return i

    if __name__ == "__main__":
        mode, work, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
        fn = trivial if work == "trivial" else llm
        if mode != "plain":
            import llmtally
            llmtally.configure(ledger="none")
            llmtally.instrument()  # metering on before the pool starts, as a program's first scope does
        import contextlib
        scope = llmtally.track("bench") if mode == "scope" else contextlib.nullcontext()
        with ProcessPoolExecutor(2) as pool:
            list(pool.map(fn, range(4)))  # warm: workers started, modules imported
            with scope as t:
                start = time.perf_counter()
                list(pool.map(fn, range(n)))
                took = time.perf_counter() - start
            counted = t.requests if mode == "scope" else None
        print(json.dumps({"seconds": took, "counted": counted}))
    """
)

MODES = ("plain", "started", "scope")


def run(mode: str, work: str, n: int, env: dict[str, str]) -> float:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode, work, str(n)], capture_output=True, text=True, env=env, check=True
    )
    got = json.loads(out.stdout.strip().splitlines()[-1])
    if mode == "scope" and work == "llm" and got["counted"] != n:
        raise SystemExit(f"the scope counted {got['counted']} of {n} worker calls")
    return float(got["seconds"]) / n * 1e6  # µs per task


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    server = subprocess.Popen(
        [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "_fake.py")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        env = {**os.environ, "FAKE_URL": url}
        results: dict[str, dict[str, list[float]]] = {}
        for work, n in (("trivial", 2000), ("llm", 300)):
            times: dict[str, list[float]] = {m: [] for m in MODES}
            for r in range(args.rounds):
                order = MODES[r % 3 :] + MODES[: r % 3]
                for mode in order:
                    times[mode].append(run(mode, work, n, env))
            results[work] = times
    finally:
        assert server.stdin is not None
        server.stdin.close()  # the fake provider stops when its stdin closes
        server.wait(30)
    rows = []
    for work, times in results.items():
        plain = sorted(times["plain"])[len(times["plain"]) // 2]
        for mode in MODES:
            med = sorted(times[mode])[len(times[mode]) // 2]
            rows.append(
                {
                    "work": work,
                    "mode": mode,
                    "us_per_task": spread(times[mode]),
                    "ratio_to_plain": med / plain,
                }
            )
    lines = [f"{'work':8} {'mode':8} {'µs per task (median [p25..p75])':34} ÷ plain"]
    lines += [f"{r['work']:8} {r['mode']:8} {r['us_per_task']:34} {r['ratio_to_plain']:.2f}" for r in rows]
    emit({"machine": machine(), "rows": rows, "raw": results}, "\n".join(lines), args.json)


if __name__ == "__main__":
    main()
