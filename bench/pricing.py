"""Pricing: ``llmtally.cost_of`` vs genai-prices ``calc_price`` on the same 1,000 (model, usage) pairs.

The pairs are drawn with a fixed seed from current OpenAI, Anthropic, Google and DeepSeek models,
with cache reads, cache writes and reasoning tokens, and about a quarter of them above the 200k-token
tier cliff of claude-sonnet-4-5 and gemini-2.5-pro. genai-prices uses its bundled catalogue
(nothing is fetched); llmtally prices from the same catalogue through its cached plans.

1. Correctness: every pair must give the same Decimal from both (mismatches must be 0).
2. Speed: rounds alternate the contenders (order rotated each round); each round prices all 1,000
   pairs with each, and the figures are medians over rounds (p25..p75) of the time per pair and of
   the per-round speed ratio. genai-prices gets its ``Usage`` objects pre-built (not timed);
   llmtally is called as a user calls it, with keyword arguments.

Optional further peers, if installed and working offline: tokencost's ``calculate_cost_by_tokens``
(input, cached and output prices only) and LiteLLM's ``cost_per_token`` (float), with
``LITELLM_LOCAL_MODEL_COST_MAP=True`` so it reads its bundled price map. Their agreement with
genai-prices is reported for information (they use their own price tables).

    python bench/pricing.py [--pairs 1000] [--rounds 25] [--no-peers] [--json]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
import warnings
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import _common as C

MODELS = [
    "gpt-4",
    "gpt-4o",
    "gpt-4o-mini",
    "o1",
    "o3",
    "o3-mini",
    "gpt-4.1",
    "gpt-4.1-mini",
    "gpt-5",
    "gpt-5-mini",
    "claude-sonnet-4-5",
    "claude-3-5-haiku-latest",
    "claude-opus-4-1",
    "gemini-2.5-pro",
    "gemini-2.5-flash",
    "gpt-3.5-turbo",
    "deepseek-chat",
]

SEED = 20240601


#: With --every-unit: models that price audio, images or web searches join the draw.
UNIT_MODELS = [
    "gpt-audio",
    "gpt-4o-audio-preview",
    "gpt-realtime",
    "claude-sonnet-4-5",
    "gemini-2.5-flash",
    "gemini-2.5-flash-image",
]


def draw(n: int, seed: int = SEED, every_unit: bool = False) -> list[tuple[str, dict[str, int]]]:
    """``n`` (model, usage) pairs in llmtally's keywords (input includes cache reads and writes).

    ``every_unit`` adds audio and image input, cached audio, audio output and web searches to
    a third of the pairs (the input split consistently, as a response reports it).
    """
    rng = random.Random(seed)
    pairs = []
    models = MODELS + UNIT_MODELS if every_unit else MODELS
    for _ in range(n):
        model = rng.choice(models)
        if rng.random() < 0.25:
            total_in = rng.randint(150_000, 400_000)  # around the 200k tier cliffs
        else:
            total_in = int(10 ** rng.uniform(0, 4.5))
        cached = rng.randint(0, total_in) if rng.random() < 0.5 else 0
        cache_write = rng.randint(0, total_in - cached) if rng.random() < 0.3 else 0
        output = int(10 ** rng.uniform(0, 4.3))
        reasoning = rng.randint(0, output) if rng.random() < 0.5 else 0
        usage = {
            "input_tokens": total_in,
            "output_tokens": output,
            "cached_tokens": cached,
            "cache_write_tokens": cache_write,
            "reasoning_tokens": reasoning,
        }
        if every_unit and rng.random() < 0.35:
            # Split the input into text, audio and image, the cache reads into text and audio.
            audio = rng.randint(0, total_in)
            image = rng.randint(0, total_in - audio)
            cached_audio = rng.randint(0, min(cached, audio))
            if cached - cached_audio > total_in - audio - image:  # cached text fits the text part
                cached = cached_audio + (total_in - audio - image)
                usage["cached_tokens"] = cached
                usage["cache_write_tokens"] = 0
            out_audio = rng.randint(0, output - reasoning)
            out_image = rng.randint(0, output - reasoning - out_audio)
            citations = rng.randint(0, output - reasoning - out_audio - out_image)
            usage |= {"input_audio_tokens": audio, "input_image_tokens": image,
                      "cached_audio_tokens": cached_audio, "output_audio_tokens": out_audio,
                      "output_image_tokens": out_image, "citation_tokens": citations,
                      "web_searches": rng.randint(0, 5)}  # fmt: skip
        pairs.append((model, usage))
    return pairs


def contenders(
    pairs: list[tuple[str, dict[str, int]]], peers: bool
) -> tuple[dict[str, Callable[[], list[Any]]], dict[str, str]]:
    """name -> a function pricing every pair (returns the prices), and notes on peers left out."""
    import genai_prices

    import llmtally

    cost_of = llmtally.cost_of
    calc_price = genai_prices.calc_price
    gusages = [
        (
            model,
            genai_prices.Usage(
                input_tokens=u["input_tokens"],
                cache_read_tokens=u["cached_tokens"],
                cache_write_tokens=u["cache_write_tokens"],
                output_tokens=u["output_tokens"],
                output_reasoning_tokens=u["reasoning_tokens"],
                **(
                    {
                        "input_audio_tokens": u["input_audio_tokens"],
                        "input_image_tokens": u["input_image_tokens"],
                        "cache_audio_read_tokens": u["cached_audio_tokens"],
                        "cache_image_read_tokens": 0,
                        "output_audio_tokens": u["output_audio_tokens"],
                        "output_image_tokens": u["output_image_tokens"],
                        "output_citation_tokens": u["citation_tokens"],
                        "web_searches": u["web_searches"],
                    }
                    if "web_searches" in u
                    else {}
                ),
            ),
        )
        for model, u in pairs
    ]

    def run_llmtally() -> list[Any]:
        return [cost_of(model, **u) for model, u in pairs]

    def run_genai() -> list[Any]:
        return [calc_price(gu, model).total_price for model, gu in gusages]

    fns: dict[str, Callable[[], list[Any]]] = {"llmtally": run_llmtally, "genai-prices": run_genai}
    notes: dict[str, str] = {}
    if not peers:
        return fns, notes

    try:
        warnings.filterwarnings("ignore")
        import tokencost

        by_tokens = tokencost.calculate_cost_by_tokens

        def tc_one(model: str, u: dict[str, int]) -> Any:
            try:
                fresh = u["input_tokens"] - u["cached_tokens"]
                return (
                    by_tokens(fresh, model, "input")
                    + by_tokens(u["cached_tokens"], model, "cached")
                    + by_tokens(u["output_tokens"], model, "output")
                )
            except (KeyError, ValueError):
                return None

        def run_tokencost() -> list[Any]:
            return [tc_one(model, u) for model, u in pairs]

        fns["tokencost"] = run_tokencost
    except Exception as exc:  # pragma: no cover - depends on the environment
        notes["tokencost"] = f"not available: {type(exc).__name__}: {exc}"

    try:
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        import litellm

        litellm.suppress_debug_info = True  # else it prints a provider list for each unknown model
        cost_per_token = litellm.cost_per_token

        def ll_one(model: str, u: dict[str, int]) -> Any:
            try:
                p, c = cost_per_token(
                    model=model,
                    prompt_tokens=u["input_tokens"],
                    completion_tokens=u["output_tokens"],
                    cache_read_input_tokens=u["cached_tokens"],
                    cache_creation_input_tokens=u["cache_write_tokens"],
                )
                return p + c
            except Exception:
                return None

        def run_litellm() -> list[Any]:
            return [ll_one(model, u) for model, u in pairs]

        fns["litellm"] = run_litellm
    except Exception as exc:  # pragma: no cover - depends on the environment
        notes["litellm"] = f"not available: {type(exc).__name__}: {exc}"
    return fns, notes


def agreement(reference: list[Decimal], other: list[Any], exact: bool) -> dict[str, int]:
    out = {"equal": 0, "close": 0, "different": 0, "unpriced": 0}
    for ref, got in zip(reference, other, strict=False):
        if got is None:
            out["unpriced"] += 1
        elif exact and got == ref and isinstance(got, Decimal):
            out["equal"] += 1
        elif abs(float(got) - float(ref)) <= 1e-9 * max(abs(float(ref)), 1e-12):
            out["close"] += 1
        else:
            out["different"] += 1
    return out


def run(n: int, rounds: int, peers: bool, every_unit: bool = False) -> dict[str, Any]:
    pairs = draw(n, every_unit=every_unit)
    fns, notes = contenders(pairs, peers)
    results = {name: fn() for name, fn in fns.items()}  # warm-up, and the prices to check
    ref, ours = results["genai-prices"], results["llmtally"]
    mismatches = [
        (pairs[i][0], pairs[i][1], str(ours[i]), str(ref[i]))
        for i in range(n)
        if ours[i] != ref[i] or ours[i] is None
    ]
    text_differs = [(str(a), str(b)) for a, b in zip(ours, ref, strict=False) if str(a) != str(b)]
    differing_text = len(text_differs)

    names = list(fns)
    per_pair: dict[str, list[float]] = {name: [] for name in names}
    clock = time.thread_time_ns
    started = time.perf_counter()
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            t0 = clock()
            got = fns[name]()
            per_pair[name].append((clock() - t0) / n / 1000.0)  # microseconds per pair
            if name == "llmtally" and got != ours:
                raise SystemExit("llmtally.cost_of gave different prices on a later round")
    elapsed = time.perf_counter() - started

    speedup = {
        name: [o / ours for o, ours in zip(per_pair[name], per_pair["llmtally"], strict=False)]
        for name in names
        if name != "llmtally"
    }
    return {
        "benchmark": "pricing",
        "machine": C.machine(),
        "versions": C.versions("llmtally", "genai-prices", "tokencost", "litellm"),
        "pairs": n,
        "seed": SEED,
        "models": MODELS,
        "rounds": rounds,
        "seconds": round(elapsed, 1),
        "clock": "thread CPU time",
        "mismatches": len(mismatches),
        "mismatch_examples": mismatches[:10],
        "same_decimal_text": n - differing_text,
        "text_differs_examples": text_differs[:5],
        "tiered_pairs": sum(1 for m, u in pairs if u["input_tokens"] > 200_000),
        "peer_agreement_with_genai": {
            name: agreement(ref, results[name], exact=name == "tokencost")
            for name in names
            if name not in ("llmtally", "genai-prices")
        },
        "peer_notes": notes,
        "us_per_pair": {name: C.summary(v) for name, v in per_pair.items()},
        "times_slower_than_llmtally": {name: C.summary(v) for name, v in speedup.items()},
    }


def render(res: dict[str, Any]) -> str:
    m = res["machine"]
    rows = []
    for name, s in res["us_per_pair"].items():
        x = res["times_slower_than_llmtally"].get(name)
        rows.append(
            [
                name,
                f"{s['median']:.2f} [{s['p25']:.2f}..{s['p75']:.2f}]",
                f"{x['median']:.1f}x [{x['p25']:.1f}..{x['p75']:.1f}]" if x else "1x",
            ]
        )
    lines = [
        f"pricing: {res['pairs']} (model, usage) pairs (seed {res['seed']}, {len(res['models'])} models, "
        f"{res['tiered_pairs']} above 200k input), {res['rounds']} interleaved rounds, {res['seconds']} s; "
        f"Python {m['python']}, {m['cores']} cores, load {m['loadavg']}",
        f"llmtally.cost_of vs genai_prices.calc_price: {res['mismatches']} mismatching Decimals of {res['pairs']} "
        f"(same text: {res['same_decimal_text']}; e.g. llmtally vs genai-prices {res['text_differs_examples'][:2]})",
        "",
        C.table(["contender", "us per pair (CPU) [p25..p75]", "time / llmtally's"], rows),
    ]
    for name, a in res["peer_agreement_with_genai"].items():
        lines.append(
            f"{name} vs genai-prices: {a['equal']} equal Decimal, {a['close']} equal within 1e-9 (float), "
            f"{a['different']} different, {a['unpriced']} unpriced/unknown model"
        )
    for name, note in res["peer_notes"].items():
        lines.append(f"{name}: {note}")
    for ex in res["mismatch_examples"]:
        lines.append(f"MISMATCH {ex}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--pairs", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=25)
    ap.add_argument("--no-peers", action="store_true", help="only llmtally and genai-prices")
    ap.add_argument(
        "--every-unit",
        action="store_true",
        help="audio, image in and out, cached audio, citations, web searches too (no peers)",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    res = run(args.pairs, args.rounds, not (args.no_peers or args.every_unit), args.every_unit)
    C.emit(res, render(res), args.json)
    if res["mismatches"]:
        sys.exit(1)


if __name__ == "__main__":
    sys.exit(main())
