"""Shared helpers for the llmtally benchmarks: statistics, machine facts, tables, --json.

Every benchmark measures its contenders side by side in one process, interleaving rounds
(A, B, A, B, ... with the order rotated every round), and reports medians over the rounds with
their spread (the inter-quartile range, p25..p75). Nothing here asserts on time.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
from importlib import metadata
from typing import Any


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def quartiles(xs: list[float]) -> tuple[float, float]:
    """(p25, p75) of ``xs``."""
    if len(xs) < 2:
        return (xs[0], xs[0]) if xs else (float("nan"), float("nan"))
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], q[2]


def summary(xs: list[float]) -> dict[str, float]:
    p25, p75 = quartiles(xs)
    return {"median": median(xs), "p25": p25, "p75": p75, "n": len(xs)}


def spread(xs: list[float], fmt: str = "{:.1f}") -> str:
    """``median [p25..p75]`` as text."""
    p25, p75 = quartiles(xs)
    return f"{fmt.format(median(xs))} [{fmt.format(p25)}..{fmt.format(p75)}]"


def version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine() -> dict[str, Any]:
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "loadavg": load,
        "note": "shared, noisy 2-core machine: compare ratios within one run, not absolute times",
    }


def table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    out = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=False))]
    out.append("  ".join("-" * w for w in widths))
    for r in cells:
        out.append(
            "  ".join(
                c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=False))
            )
        )
    return "\n".join(out)


def emit(result: dict[str, Any], text: str, as_json: bool) -> None:
    """Print the table, or the JSON document when ``--json`` was given."""
    if as_json:
        json.dump(result, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        print(text)


def versions(*dists: str) -> dict[str, str | None]:
    return {d: version(d) for d in dists}
