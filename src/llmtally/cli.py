"""The ``llmtally`` command: a thin ``main()`` around a testable ``cli_logic(argv) -> int``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["cli_logic", "main"]


def _parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="llmtally",
        description="Meter every LLM API call a program makes: tokens, exact cost, latency.",
    )
    parser.add_argument("--version", action="version", version=f"llmtally {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    sub.add_parser(
        "demo",
        help="run LangChain's token-tracking scenarios offline against a simulated provider",
        description="Run the seed notebook's three scenarios (one call, two calls, a tool-using "
        "agent) through the real openai SDK and LangChain, against llmtally's fake provider on loopback.",
    )

    cost = sub.add_parser(
        "cost",
        help="price a usage from the bundled catalogue",
        description="Price one call's usage. Input tokens include cached input; output includes reasoning.",
    )
    cost.add_argument("model")
    cost.add_argument("--input", "-i", type=int, required=True, dest="input_tokens")
    cost.add_argument("--output", "-o", type=int, default=0, dest="output_tokens")
    cost.add_argument("--cached", type=int, default=0, dest="cached_tokens")
    cost.add_argument("--cache-write", type=int, default=0, dest="cache_write_tokens")
    cost.add_argument("--reasoning", type=int, default=0, dest="reasoning_tokens")
    cost.add_argument("--provider", default=None)
    return parser


def cli_logic(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        from ._demo import run_demo

        return run_demo()
    if args.command == "cost":
        from ._pricing import cost_of

        price = cost_of(
            args.model,
            provider=args.provider,
            input_tokens=args.input_tokens,
            output_tokens=args.output_tokens,
            cached_tokens=args.cached_tokens,
            cache_write_tokens=args.cache_write_tokens,
            reasoning_tokens=args.reasoning_tokens,
        )
        if price is None:
            print(f"llmtally: no price known for model {args.model!r}", file=sys.stderr)
            return 1
        from ._scope import _money

        print(f"${_money(price)}")
        return 0
    parser.print_help()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return cli_logic(argv)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
