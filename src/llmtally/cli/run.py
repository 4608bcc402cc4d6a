"""``llmtally run [options] -- COMMAND ...``: meter a program without changing it.

The command runs as a child process with the ``_bootstrap`` folder beside this module first on
PYTHONPATH; its ``sitecustomize`` (``start_in_child``) configures the ledger, opens a scope that
spans the whole process (carried into its threads and tasks like any scope) and, at exit, prints
the seed-style summary to stderr. Options travel to the child in environment variables.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence

__all__ = ["run_command", "start_in_child"]

ENV_RUN = "LLMTALLY_RUN"  # JSON: {"name": ..., "tags": {...}}
ENV_CHILD = "LLMTALLY_RUN_CHILD"


def run_command(command: Sequence[str], *, ledger: str | None, name: str | None, tags: dict[str, str]) -> int:
    """Run ``command`` metered; return its exit code (a signal's number negated, as the shell does)."""
    if not command:
        print("llmtally run: no command given (llmtally run [options] -- python app.py)", file=sys.stderr)
        return 2
    bootstrap = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_bootstrap")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (bootstrap, env.get("PYTHONPATH", "")) if p)
    env[ENV_RUN] = json.dumps({"name": name or os.path.basename(command[0]), "tags": tags})
    from .._runtime import RUNTIME
    from ..ledger import ENV_LEDGER

    # `llmtally run` records by default: an explicit --ledger wins, then LLMTALLY_LEDGER, then sqlite://.
    url = RUNTIME.ledger_url(ledger, default="sqlite://")
    assert url is not None
    env[ENV_LEDGER] = url
    if ledger is not None or ENV_LEDGER in os.environ:
        from ..ledger import LedgerError, open_ledger

        try:  # a bad --ledger is reported here, before the program starts
            checked = open_ledger(url)
        except LedgerError as exc:
            print(f"llmtally run: {exc}", file=sys.stderr)
            return 2
        if checked is not None:
            checked.close()
    try:
        code = subprocess.call(list(command), env=env)
        return code if code >= 0 else 128 - code  # killed by signal N: 128+N, as shells report it
    except FileNotFoundError:
        print(f"llmtally run: command not found: {command[0]}", file=sys.stderr)
        return 127
    except KeyboardInterrupt:
        return 130


def start_in_child() -> None:
    """In the metered program, before its code runs: ledger, a process-wide scope, the exit summary."""
    spec = os.environ.pop(ENV_RUN, None)
    import llmtally

    if not spec:
        # A Python process the program started: recorded in the ledger, no summary of its own.
        if os.environ.get(ENV_CHILD):
            llmtally.instrument()
        return
    os.environ[ENV_CHILD] = "1"
    settings = json.loads(spec)
    import atexit

    llmtally.instrument()  # also honours LLMTALLY_LEDGER
    # Only its summary is read: exact totals in constant memory, no per-call records.
    tally = llmtally.Tally(settings.get("name"), settings.get("tags") or None, keep_calls=False)
    # Entered for the life of the process: set in the main thread's context, inherited by every
    # thread and task the program starts.
    tally.__enter__()

    def summary() -> None:
        try:
            from .._runtime import RUNTIME

            llmtally.flush()
            sys.stderr.write(f"\nllmtally: {tally.name}\n{tally}\nCalls: {RUNTIME.where()}\n")
            sys.stderr.flush()
        except Exception:  # pragma: no cover
            pass

    atexit.register(summary)
