"""Import time: ``import llmtally`` in fresh interpreters vs ``python -c pass``, and peers.

Each run starts a fresh ``python`` (this interpreter, same venv) that imports one thing and prints
how long the import statement itself took (perf_counter around it); the parent also times the whole
process. Runs interleave the contenders (order rotated each run) after one untimed warm-up each (so
bytecode caches exist). "added" is the median process wall time minus the median of ``pass``;
"import" is the median of the in-process import time, which leaves out interpreter start-up and
is the steadier figure on a noisy machine.

Also listed: which heavy modules are in ``sys.modules`` right after ``import llmtally`` (must be none
of openai, anthropic, httpx, httpx2, pydantic, genai_prices, psycopg, sqlite3, nor of the HTTP
clients and SDKs llmtally hooks: requests, aiohttp, urllib3, botocore, boto3, google.genai, cohere,
ollama; the exit status is 1 otherwise), and what the first ``track()`` costs and loads (it hooks
the HTTP clients; the price catalogue loads in a background thread).

Peers, where installed: ``import litellm`` (with LITELLM_LOCAL_MODEL_COST_MAP=True, so it reads
its bundled price map instead of fetching one), ``import tokencost``,
``import langchain_community.callbacks`` (where ``get_openai_callback`` lives). Peers get fewer runs
(``--peer-runs``) since some take seconds each.

    python bench/import_time.py [--runs 21] [--peer-runs 5] [--json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from typing import Any

import _common as C

HEAVY = (
    "openai",
    "anthropic",
    "httpx",
    "httpx2",
    "pydantic",
    "genai_prices",
    "psycopg",
    "sqlite3",
    # The HTTP clients of the adapters and the SDKs built on them: hooked only once imported.
    "requests",
    "aiohttp",
    "urllib3",
    "botocore",
    "boto3",
    "google.genai",
    "cohere",
    "ollama",
)

# The child imports ``stmt`` and reports the import's own time and the heavy modules then loaded.
CHILD = """
import time, sys, json
t0 = time.perf_counter()
{stmt}
t1 = time.perf_counter()
heavy = {heavy!r}
print(json.dumps({{"import_s": t1 - t0, "heavy": [m for m in heavy if m in sys.modules],
                  "modules": len(sys.modules)}}))
"""

# What the first scope costs and loads, in a fresh process.
FIRST_TRACK = """
import time, sys, json, threading
heavy = {heavy!r}
t0 = time.perf_counter()
import llmtally
t1 = time.perf_counter()
with llmtally.track():
    pass
t2 = time.perf_counter()
after_track = [m for m in heavy if m in sys.modules]
for th in threading.enumerate():
    if th.name == "llmtally-warm-prices":
        th.join()
t3 = time.perf_counter()
print(json.dumps({{"import_s": t1 - t0, "first_track_s": t2 - t1, "catalogue_ready_s": t3 - t1,
                  "heavy_after_track": after_track,
                  "heavy_after_catalogue": [m for m in heavy if m in sys.modules]}}))
"""

CONTENDERS: list[tuple[str, str, str | None]] = [
    # (label, statement, module that must be installed)
    ("python -c pass", "pass", None),
    ("import llmtally", "import llmtally", "llmtally"),
    ("import langchain_community.callbacks", "import langchain_community.callbacks", "langchain_community"),
    ("import tokencost", "import tokencost", "tokencost"),
    ("import litellm", "import litellm", "litellm"),
]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    env["PYTHONWARNINGS"] = "ignore"
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def run_child(code: str, env: dict[str, str]) -> tuple[float, dict[str, Any]]:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise RuntimeError(
            out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"
        )
    return wall, json.loads(out.stdout.strip().splitlines()[-1])


def run(runs: int, peer_runs: int) -> dict[str, Any]:
    env = child_env()
    present = [
        (label, stmt) for label, stmt, mod in CONTENDERS if mod is None or importlib.util.find_spec(mod)
    ]
    missing = [label for label, _, mod in CONTENDERS if mod is not None and not importlib.util.find_spec(mod)]
    core = ["python -c pass", "import llmtally"]
    codes = {
        label: CHILD.format(stmt=stmt, heavy=HEAVY)
        for label, stmt in present
        if label in core or peer_runs > 0
    }
    failed: dict[str, str] = {}
    info: dict[str, dict[str, Any]] = {}
    for label in list(codes):  # warm-up: bytecode caches, and a check that it imports at all
        try:
            info[label] = run_child(codes[label], env)[1]
        except Exception as exc:
            failed[label] = str(exc)
            del codes[label]

    wall: dict[str, list[float]] = {label: [] for label in codes}
    inner: dict[str, list[float]] = {label: [] for label in codes}
    started = time.perf_counter()
    for r in range(runs):
        labels = [label for label in codes if label in core or r < peer_runs]
        shift = r % len(labels)
        for label in labels[shift:] + labels[:shift]:
            w, res = run_child(codes[label], env)
            wall[label].append(w * 1000)
            inner[label].append(res["import_s"] * 1000)
    first = [run_child(FIRST_TRACK.format(heavy=HEAVY), env)[1] for _ in range(max(5, runs // 3))]
    elapsed = time.perf_counter() - started

    base = C.median(wall["python -c pass"])
    results = {}
    for label in codes:
        results[label] = {
            "runs": len(wall[label]),
            "process_ms": C.summary(wall[label]),
            "added_ms": C.median(wall[label]) - base,
            "import_ms": C.summary(inner[label]),
            "heavy_modules_loaded": info[label]["heavy"],
            "modules_in_sys_modules": info[label]["modules"],
        }
    lt = results.get("import llmtally")
    ratios = {}
    if lt:
        for label, r in results.items():
            if label not in core:
                ours = lt["import_ms"]["median"]
                ratios[label] = r["import_ms"]["median"] / ours if ours > 0 else float("nan")
    return {
        "benchmark": "import_time",
        "machine": C.machine(),
        "versions": C.versions("llmtally", "langchain-community", "tokencost", "litellm"),
        "runs": runs,
        "peer_runs": peer_runs,
        "seconds": round(elapsed, 1),
        "results": results,
        "import_time_vs_llmtally": ratios,
        "first_track": {
            "import_ms": C.summary([f["import_s"] * 1000 for f in first]),
            "first_track_ms": C.summary([f["first_track_s"] * 1000 for f in first]),
            "catalogue_ready_ms": C.summary([f["catalogue_ready_s"] * 1000 for f in first]),
            "heavy_after_track": first[0]["heavy_after_track"],
            "heavy_after_catalogue": first[0]["heavy_after_catalogue"],
        },
        "not_installed": missing,
        "failed": failed,
    }


def render(res: dict[str, Any]) -> str:
    m = res["machine"]
    rows = []
    for label, r in res["results"].items():
        p, i = r["process_ms"], r["import_ms"]
        x = res["import_time_vs_llmtally"].get(label)
        rows.append(
            [
                label,
                r["runs"],
                f"{p['median']:.1f} [{p['p25']:.1f}..{p['p75']:.1f}]",
                f"{r['added_ms']:+.1f}",
                f"{i['median']:.1f} [{i['p25']:.1f}..{i['p75']:.1f}]",
                f"{x:.0f}x" if x is not None else "",
                ", ".join(r["heavy_modules_loaded"]) or "none",
            ]
        )
    ft = res["first_track"]
    lines = [
        f"import_time: fresh interpreters, interleaved, {res['runs']} runs ({res['peer_runs']} for peers), "
        f"{res['seconds']} s; Python {m['python']}, {m['cores']} cores, load {m['loadavg']}",
        "",
        C.table(
            [
                "statement",
                "runs",
                "process ms [p25..p75]",
                "added ms",
                "import ms [p25..p75]",
                "import / llmtally's",
                "heavy modules loaded",
            ],
            rows,
        ),
        "",
        f"llmtally adds {res['results']['import llmtally']['added_ms']:.1f} ms to start-up (goal <= 60 ms)",
        f"first track(): {ft['first_track_ms']['median']:.1f} ms [{ft['first_track_ms']['p25']:.1f}.."
        f"{ft['first_track_ms']['p75']:.1f}] after the import; heavy modules then: "
        f"{', '.join(ft['heavy_after_track']) or 'none'}; price catalogue ready (background thread) "
        f"{ft['catalogue_ready_ms']['median']:.0f} ms after the import, loading "
        f"{', '.join(ft['heavy_after_catalogue']) or 'none'}",
    ]
    if res["not_installed"]:
        lines.append("not installed: " + ", ".join(res["not_installed"]))
    for label, err in res["failed"].items():
        lines.append(f"failed: {label}: {err}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--runs", type=int, default=21, help="runs of pass and llmtally (>= 15)")
    ap.add_argument("--peer-runs", type=int, default=5, help="runs of each peer (litellm takes seconds)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    res = run(args.runs, args.peer_runs)
    C.emit(res, render(res), args.json)
    heavy = res["results"].get("import llmtally", {}).get("heavy_modules_loaded")
    if heavy:
        sys.exit(1)


if __name__ == "__main__":
    sys.exit(main())
