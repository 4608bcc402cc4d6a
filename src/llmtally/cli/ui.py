"""``llmtally ui``: open the ledger read-only and serve the dashboard until Ctrl-C."""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["add_parser", "ui_command"]


def add_parser(sub: Any) -> None:
    ui = sub.add_parser(
        "ui",
        help="a live dashboard of the ledger in your browser (pip install 'llmtally[ui]')",
        description="Serve a live dashboard over the ledger (read-only): spend over time, top models, "
        "scopes and tags, failures, latency, budgets, and the calls behind every number. Binds to "
        "127.0.0.1; any other address needs the token printed with it.",
    )
    ui.add_argument("--ledger", metavar="URL", help="default: LLMTALLY_LEDGER, else the default file")
    ui.add_argument("--host", default="127.0.0.1", help="the address to bind (default: 127.0.0.1)")
    ui.add_argument("--port", type=int, default=8321, help="default: 8321; 0 picks a free one")
    ui.add_argument("--open", action="store_true", help="open it in the web browser")
    ui.add_argument("--currency", metavar="CODE", help="as llmtally report --currency")
    ui.add_argument("--rates", metavar="CODE=RATE,...", help="as llmtally report --rates")


def ui_command(args: argparse.Namespace) -> int:
    from ..ui import UIUnavailable, check_installed

    try:
        check_installed()
    except UIUnavailable as exc:
        print(exc, file=sys.stderr)
        return 2
    from .._runtime import RUNTIME
    from ..ledger import LedgerError, open_ledger
    from ..ui.server import Dashboard
    from .money import report_money

    url = RUNTIME.ledger_url(args.ledger)
    assert url is not None
    try:
        currency, rates = report_money(args)
        ledger = open_ledger(url, create=False)
        if ledger is None:
            print("llmtally ui: no ledger to show (--ledger none); pass --ledger URL", file=sys.stderr)
            return 2
    except (LedgerError, ValueError) as exc:
        print(f"llmtally ui: {exc}", file=sys.stderr)
        return 2
    try:
        dash = Dashboard(ledger, host=args.host, port=args.port, money={"currency": currency, "rates": rates})
    except OSError as exc:
        print(
            f"llmtally ui: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr
        )
        ledger.close()
        return 2
    print(f"llmtally ui: {dash.url}  (ledger {ledger.url}; Ctrl-C to stop)", file=sys.stderr)
    if dash.token:
        print(
            "llmtally ui: bound beyond this machine: only requests with this token are answered; "
            "anyone who has the address above can read the ledger",
            file=sys.stderr,
        )
    if args.open:
        import webbrowser

        webbrowser.open(dash.url)
    try:
        dash.serve()
    except KeyboardInterrupt:
        pass
    finally:
        ledger.close()
    return 0
