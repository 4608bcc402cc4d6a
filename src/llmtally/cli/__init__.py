"""The ``llmtally`` command: a thin ``main()`` around a testable ``cli_logic(argv) -> int``."""

from __future__ import annotations

import argparse
import sys
import typing
from collections.abc import Sequence
from datetime import UTC
from typing import Any

__all__ = ["cli_logic", "main"]


class _Parser(argparse.ArgumentParser):
    """Argument errors in one line that names the argument and the bad value (no usage dump)."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _count_arg(text: str) -> int:
    """An argparse type: a whole number of tokens, zero or more."""
    from .._limits import parse_count

    try:
        return parse_count(text, "it")
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"want a whole number, zero or more, not {text!r}") from None


def _amount_arg(text: str) -> str:
    """An argparse type: an amount in USD, zero or more (kept as typed; parsed where it is used)."""
    from .._core.money import parse_amount

    try:
        parse_amount(text, "it")
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"want an amount in USD such as 0.50, not {text!r}") from None
    return text


def _parser() -> argparse.ArgumentParser:
    from .._version import __version__

    parser = _Parser(
        prog="llmtally",
        description="Meter every LLM API call a program makes: tokens, exact cost, latency.",
    )
    parser.add_argument("--version", action="version", version=f"llmtally {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    sub.add_parser(
        "demo",
        help="run LangChain's token-tracking scenarios offline against a simulated provider",
        description="Run the three scenarios of LangChain's guide to tracking token usage (one call, two "
        "calls, a tool-using agent) through the real openai SDK and LangChain, against a simulated provider "
        "on this machine: no API key, no network.",
    )

    run = sub.add_parser(
        "run",
        help="run a Python program with every LLM call metered and recorded, no code changes",
        description="Run COMMAND (python app.py, python -m pkg, a console script) with capture on. At exit "
        "a summary (tokens, requests, total cost, as LangChain's get_openai_callback prints it) goes to "
        "stderr; every call is recorded in the ledger (--ledger, else "
        "LLMTALLY_LEDGER, else the default SQLite file).",
    )
    run.add_argument("--ledger", metavar="URL", help="sqlite:///path.db, sqlite:// (default file) or none")
    run.add_argument(
        "--tag", action="append", default=[], metavar="KEY=VALUE", help="tag every call (repeatable)"
    )
    run.add_argument("--name", help="the name of the run's scope (default: the command)")
    run.add_argument(
        "argv", nargs=argparse.REMAINDER, metavar="-- COMMAND", help="the program and its arguments"
    )

    rep = sub.add_parser(
        "report",
        help="spend and tokens from the ledger, grouped by model, day, scope, tag, ...",
        description="Totals per group over the ledger's calls, most expensive first, with a totals row. "
        "Unpriced and estimated calls are counted apart.",
    )
    rep.add_argument(
        "--ledger", metavar="URL", help="the ledger to read (default: LLMTALLY_LEDGER, else the default file)"
    )
    rep.add_argument("--since", help="7d, 12h, 2026-11-01, ...")
    rep.add_argument("--until", help="same forms as --since")
    rep.add_argument(
        "--by",
        action="append",
        metavar="GROUP",
        help="model, provider, endpoint, day, hour, scope, currency, price_source or tag:KEY "
        "(repeatable; default: model)",
    )
    rep.add_argument(
        "--where",
        action="append",
        metavar="GROUP=VALUE",
        help="only the calls whose GROUP (model, provider, endpoint, scope, currency, price_source, "
        "tag:KEY) is VALUE, as a report by that group shows it (repeatable: one GROUP's values are "
        "alternatives, different GROUPs must all match), e.g. --where model=gpt-4o --where tag:team=search",
    )
    rep.add_argument("--format", choices=("table", "csv", "json"), default="table")
    rep.add_argument("--chart", metavar="FILE", help="also write spend over time to FILE.png or FILE.html")
    rep.add_argument("--top", type=int, metavar="N", help="only the N most expensive groups")
    rep.add_argument(
        "--currency", metavar="CODE", help="the report's currency (default: LLMTALLY_CURRENCY, else USD)"
    )
    rep.add_argument(
        "--rates",
        metavar="CODE=RATE,...",
        help="units of the report's currency per unit of each other currency recorded, e.g. USD=0.92 "
        "(default: LLMTALLY_RATES)",
    )

    from .ledger import add_parser as add_ledger_parser
    from .ui import add_parser as add_ui_parser

    add_ledger_parser(sub)
    add_ui_parser(sub)

    bud = sub.add_parser(
        "budget",
        help="list, set or reset budgets shared through the ledger database",
        description="Budgets shared by every process using the same ledger (see llmtally.budget).",
    )
    bud.add_argument("action", choices=("list", "set", "reset"))
    bud.add_argument("name", nargs="?")
    bud.add_argument("--max-cost", metavar="USD", type=_amount_arg, help="the budget's limit in USD, e.g. 50")
    bud.add_argument("--period", choices=("day", "month"), default=None)
    bud.add_argument("--ledger", metavar="URL", help="default: LLMTALLY_LEDGER")

    est = sub.add_parser(
        "estimate",
        help="count a prompt's tokens offline and price its best and worst case",
        description="Read text, or a JSON list of chat messages, from FILE (or - for stdin) and count "
        "its input tokens with the model's tokenizer, chat framing included.",
    )
    est.add_argument("--model", required=True)
    est.add_argument(
        "--max-output", type=_count_arg, default=0, metavar="N", help="the output allowance to price"
    )
    est.add_argument("file", nargs="?", default="-", help="a text or JSON messages file (default: stdin)")

    price = sub.add_parser(
        "price",
        help="the price in force for a model, unit by unit, and where it comes from",
        description="Show the price llmtally would use for MODEL now: your own (price file, set_price) "
        "or the bundled catalogue's, per unit, with tiers and service-tier variants.",
    )
    price.add_argument("model")
    price.add_argument("--provider", default=None, help="a catalogue provider id (openai, anthropic, ...)")
    price.add_argument(
        "--prices", metavar="FILE", help="a price file to read first (default: LLMTALLY_PRICES)"
    )

    prices = sub.add_parser(
        "prices",
        help="update the price catalogue (opt-in; never automatic)",
        description="Fetch genai-prices' newest published catalogue, validate it and keep it in the user's "
        "data directory (the previous one beside it); every process then prices from it. A download that "
        "is not a valid catalogue changes nothing.",
    )
    prices.add_argument("action", choices=("update",))
    prices.add_argument("--url", help="where to fetch it (default: LLMTALLY_PRICES_URL, else genai-prices')")

    cost = sub.add_parser(
        "cost",
        help="price a usage from the bundled catalogue",
        description="Price one call's usage. Input tokens include cached input; output includes reasoning.",
    )
    cost.add_argument("model")
    cost.add_argument("--input", "-i", type=_count_arg, required=True, dest="input_tokens")
    cost.add_argument("--output", "-o", type=_count_arg, default=0, dest="output_tokens")
    cost.add_argument("--cached", type=_count_arg, default=0, dest="cached_tokens")
    cost.add_argument("--cache-write", type=_count_arg, default=0, dest="cache_write_tokens")
    cost.add_argument("--reasoning", type=_count_arg, default=0, dest="reasoning_tokens")
    cost.add_argument("--cache-write-1h", type=_count_arg, default=0, dest="cache_write_1h_tokens")
    cost.add_argument("--input-audio", type=_count_arg, default=0, dest="input_audio_tokens")
    cost.add_argument("--cached-audio", type=_count_arg, default=0, dest="cached_audio_tokens")
    cost.add_argument("--output-audio", type=_count_arg, default=0, dest="output_audio_tokens")
    cost.add_argument("--input-image", type=_count_arg, default=0, dest="input_image_tokens")
    cost.add_argument("--output-image", type=_count_arg, default=0, dest="output_image_tokens")
    cost.add_argument("--citations", type=_count_arg, default=0, dest="citation_tokens")
    cost.add_argument("--web-searches", type=_count_arg, default=0, dest="web_searches")
    cost.add_argument("--provider", default=None)
    return parser


def cli_logic(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        from .demo import run_demo

        return run_demo()
    if args.command == "run":
        from .run import run_command

        tags: dict[str, str] = {}
        for tag in args.tag:
            key, sep, value = tag.partition("=")
            if not sep or not key:
                parser.error(f"--tag wants KEY=VALUE, got {tag!r}")
            tags[key] = value
        command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
        return run_command(command, ledger=args.ledger, name=args.name, tags=tags)
    if args.command == "report":
        return _report(args)
    if args.command == "budget":
        return _budget(args)
    if args.command == "estimate":
        return _estimate(args)
    if args.command == "price":
        return _price(args)
    if args.command == "prices":
        from .._catalogue import CatalogueError, update
        from .._pricing import reset_caches

        try:
            print("\n".join(_printable(line) for line in update(args.url)))
            reset_caches()
        except CatalogueError as exc:
            print(f"llmtally prices update: {exc}; the catalogue in force is unchanged", file=sys.stderr)
            return 2
        return 0
    if args.command == "cost":
        return _cost(args)
    if args.command == "ledger":
        from .ledger import ledger_command

        return ledger_command(args)
    if args.command == "ui":
        from .ui import ui_command

        return ui_command(args)
    parser.print_help()
    return 0


def _printable(text: str) -> str:
    """Model names from a downloaded catalogue reach the terminal: control characters escaped."""
    from .._core.text import printable

    return printable(text)


def _cost(args: argparse.Namespace) -> int:
    import logging

    from .._core.money import format_usd
    from .._pricing import cost_of, describe, similar_models

    units = {k: v for k, v in vars(args).items() if k.endswith("_tokens") or k == "web_searches"}
    wrong = _inconsistent(units)
    if wrong:
        print(f"llmtally cost: inconsistent usage: {'; '.join(wrong)}", file=sys.stderr)
        return 2
    quiet = logging.getLogger("llmtally")
    was, quiet.disabled = quiet.disabled, True  # this command says what went wrong, once
    try:
        price = cost_of(args.model, provider=args.provider, **units)
    finally:
        quiet.disabled = was
    if price is not None:
        print(f"${format_usd(price)}")
        return 0
    if describe(args.model, args.provider) is not None:
        # The model is priced: the usage is what cannot be (a part larger than its whole).
        print(
            f"llmtally cost: this usage cannot be priced: a part of the input or output is larger than "
            f"the whole (--input {args.input_tokens} includes --cached, --cache-write, --input-audio and "
            f"--input-image; --output {args.output_tokens} includes --reasoning and --output-audio)",
            file=sys.stderr,
        )
        return 2
    hint = similar_models(args.model, args.provider)
    more = f"; did you mean {', '.join(hint)}?" if hint else ""
    print(_printable(f"llmtally cost: no price known for model {args.model!r}{more}"), file=sys.stderr)
    return 1


#: (part, its whole, what the whole includes): each part of a usage is counted in its whole too.
_PARTS = (
    ("cached_tokens", "input_tokens", "cached ones"),
    ("cache_write_tokens", "input_tokens", "cache writes"),
    ("input_audio_tokens", "input_tokens", "audio"),
    ("input_image_tokens", "input_tokens", "images"),
    ("cache_write_1h_tokens", "cache_write_tokens", "those written for an hour"),
    ("cached_audio_tokens", "cached_tokens", "cached audio"),
    ("reasoning_tokens", "output_tokens", "reasoning"),
    ("output_audio_tokens", "output_tokens", "audio"),
    ("output_image_tokens", "output_tokens", "images"),
    ("citation_tokens", "output_tokens", "citations"),
)


def _inconsistent(units: dict[str, int]) -> list[str]:
    """What is wrong with a usage whose parts are larger than their whole, in words."""
    flag = {
        "input_tokens": "--input",
        "output_tokens": "--output",
        "cached_tokens": "--cached",
        "cache_write_tokens": "--cache-write",
        "cache_write_1h_tokens": "--cache-write-1h",
        "input_audio_tokens": "--input-audio",
        "cached_audio_tokens": "--cached-audio",
        "reasoning_tokens": "--reasoning",
        "output_audio_tokens": "--output-audio",
        "input_image_tokens": "--input-image",
        "output_image_tokens": "--output-image",
        "citation_tokens": "--citations",
    }
    wrong = [
        f"{flag[part]} {units[part]} is more than {flag[whole]} {units[whole]} "
        f"({flag[whole]} counts every {whole[:-7].replace('_', ' ')} token, {what} included)"
        for part, whole, what in _PARTS
        if units.get(part, 0) > units.get(whole, 0)
    ]
    if units.get("cached_tokens", 0) + units.get("cache_write_tokens", 0) > units.get("input_tokens", 0):
        if not wrong:
            wrong.append(
                f"--cached {units['cached_tokens']} plus --cache-write {units['cache_write_tokens']} is more "
                f"than --input {units['input_tokens']} (input tokens are read from or written to the "
                "cache, not both)"
            )
    return wrong


def _price(args: argparse.Namespace) -> int:
    from .._pricing import describe, similar_models
    from .._runtime import RUNTIME

    try:
        if args.prices is not None:
            RUNTIME.configure(prices=args.prices)
        else:
            RUNTIME._configure_from_env()  # LLMTALLY_PRICES, or the default price file
    except ValueError as exc:
        print(f"llmtally price: {exc}", file=sys.stderr)
        return 2
    lines = describe(args.model, args.provider)
    if lines is None:
        hint = similar_models(args.model, args.provider)
        where = f" from provider {args.provider!r}" if args.provider else ""
        more = f"; did you mean {', '.join(hint)}?" if hint else ""
        print(_printable(f"llmtally price: no price known for {args.model!r}{where}{more}"), file=sys.stderr)
        return 1
    print("\n".join(_printable(line) for line in lines))
    return 0


def _budget(args: argparse.Namespace) -> int:
    from datetime import datetime

    from .._core.money import format_usd as _money
    from .._runtime import RUNTIME
    from ..ledger import LedgerError

    url = RUNTIME.ledger_url(args.ledger, default=None)
    if not url:
        print("llmtally budget: give --ledger URL or set LLMTALLY_LEDGER", file=sys.stderr)
        return 2
    try:
        store = RUNTIME.budget_store(url)
        if args.action == "list":
            for b in store.list():
                since = datetime.fromtimestamp(b.window_start, tz=UTC).strftime("%Y-%m-%d")
                window = f"per {b.period} since {since}" if b.period else "no period"
                print(
                    f"{_printable(b.name)}: spent ${_money(b.spent)} of ${_money(b.max_cost)} ({window}); "
                    f"in flight ${_money(b.reserved)}"
                )
            return 0
        if not args.name:
            print(f"llmtally budget {args.action}: which budget? (a NAME)", file=sys.stderr)
            return 2
        if args.action == "set":
            if args.max_cost is None:
                print("llmtally budget set: give --max-cost USD", file=sys.stderr)
                return 2
            store.set(args.name, args.max_cost, args.period)
        else:
            if store.get(args.name) is None:
                print(
                    _printable(
                        f"llmtally budget reset: there is no budget named {args.name!r} in this ledger "
                        "(`llmtally budget list` shows them)"
                    ),
                    file=sys.stderr,
                )
                return 1
            store.reset(args.name)
        return 0
    except (LedgerError, ValueError, ArithmeticError) as exc:
        print(f"llmtally budget: {exc}", file=sys.stderr)
        return 2


def _estimate(args: argparse.Namespace) -> int:
    import json

    from .._api import estimate
    from .._core.money import format_usd as _money

    try:
        text = sys.stdin.read() if args.file == "-" else open(args.file, encoding="utf-8").read()
    except OSError as exc:
        print(f"llmtally estimate: {exc}", file=sys.stderr)
        return 2
    payload: str | list[Any] = text
    if text.lstrip().startswith("["):
        try:
            payload = json.loads(text)
        except ValueError:
            payload = text  # not JSON after all: count it as text
    e = estimate(payload, model=args.model, max_output_tokens=args.max_output)
    print(f"model: {e.model}")
    print(f"input tokens: {e.input_tokens}" + ("" if e.exact_tokenizer else " (approximated with o200k)"))
    print(f"max output tokens: {e.max_output_tokens}")
    if e.min_cost is None or e.max_cost is None:
        print("cost: unknown (no price for this model)")
        return 0
    print(f"min cost (input only): ${_money(e.min_cost)}")
    print(f"max cost (input + output allowance): ${_money(e.max_cost)}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from .._report import report
    from .._report.render import render, write_chart
    from .._runtime import RUNTIME
    from ..ledger import LedgerError

    by = args.by or ["model"]
    url = RUNTIME.ledger_url(args.ledger)
    assert url is not None
    from .money import report_money

    try:
        currency, rates = report_money(args)
        rows = report(
            url,
            since=args.since,
            until=args.until,
            by=by,
            currency=currency,
            rates=rates,
            where=args.where,
        )
        if args.top is not None:
            # The totals stay those of everything: the groups past the top N are summed in one row.
            rows = rows.with_others(args.top, by)
        render(rows, by, args.format)
        if args.chart:
            write_chart(
                args.chart,
                ledger=url,
                since=args.since,
                until=args.until,
                stack_by=by[0],
                currency=currency,
                rates=rates,
                top=args.top,
                where=args.where,
            )
            print(f"chart written to {args.chart}", file=sys.stderr)
    except (LedgerError, ValueError, RuntimeError) as exc:
        print(f"llmtally report: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return cli_logic(argv)
    except BrokenPipeError:  # `llmtally report | head`
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
