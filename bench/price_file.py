"""How long a price file of 1,000 entries takes to load and validate (goal: under 50 ms).

    python bench/price_file.py [--entries 1000] [--json]

Writes a TOML price file of N ``[[price]]`` entries (four prices each) to a temporary directory
and loads it with ``llmtally.configure(prices=...)``'s loader, best of seven (wall time: a load is
one call, read from the page cache).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Any

import _common as C


def run(entries: int) -> dict[str, Any]:
    from llmtally._core import user_prices

    text = "".join(
        f"[[price]]\nmodel = 'model-{i}'\ninput = '0.{i}'\noutput = '1.5'\ncached = '0.05'\nweb_searches = '10'\n\n"
        for i in range(entries)
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "prices.toml")
        with open(path, "w") as f:
            f.write(text)
        times = []
        for _ in range(7):
            t0 = time.perf_counter()
            loaded = user_prices.load(path)
            times.append(time.perf_counter() - t0)
        if len(loaded) != entries:
            raise SystemExit(f"loaded {len(loaded)} entries of {entries}")
    return {
        "benchmark": "price_file",
        "machine": C.machine(),
        "entries": entries,
        "bytes": len(text),
        "best_ms": round(min(times) * 1000, 1),
        "median_ms": round(sorted(times)[3] * 1000, 1),
    }


def render(res: dict[str, Any]) -> str:
    return (
        f"price file: {res['entries']} entries ({res['bytes']:,} bytes) loaded and validated in "
        f"{res['best_ms']} ms (best of 7; median {res['median_ms']} ms); goal < 50 ms"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--entries", type=int, default=1000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    res = run(args.entries)
    C.emit(res, render(res), args.json)


if __name__ == "__main__":
    sys.exit(main())
