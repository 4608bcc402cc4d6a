"""``llmtally run [options] -- COMMAND ...``: meter a program, and every Python process it starts,
without changing it.

The command runs as a child process with the ``_bootstrap`` folder beside this module first on
PYTHONPATH; its ``sitecustomize`` (``start_in_child``) configures the ledger, opens a scope that
spans the whole process (carried into its threads and tasks like any scope) and, at exit, prints
the seed-style summary to stderr. Options travel to the child in environment variables: ``ENV_RUN``
to the run's first process, which turns it into ``ENV_CHILD`` for every process it starts
(subprocess, multiprocessing's spawn and forkserver, ``os.exec*``; a forked child inherits it all).
Each of them opens a scope of the run's name and tags, and every call it makes carries the run's
id (``Call.run_id``, the ledger's ``run_id`` column). The summary at the first process's exit reads
the run's calls back from the ledger by that id: the calls of the whole tree.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .._core.tally import Tally
    from ..ledger import Ledger

__all__ = ["run_command", "run_name", "start_in_child"]

#: To the run's first process, JSON: {"name", "tags", "run_id", "since", "python"}.
ENV_RUN = "LLMTALLY_RUN"
#: To every process it starts, JSON: the same, and "top", the first process's pid (an ``os.exec*``
#: of it keeps the pid, and the summary).
ENV_CHILD = "LLMTALLY_RUN_CHILD"

_PYTHON = re.compile(r"^(python|pypy)[0-9.]*(\.exe)?$", re.IGNORECASE)
#: Interpreter options that take a value (``-W error`` or ``-Werror``).
_WITH_VALUE = "WXQ"
#: Interpreter options under which the bootstrap never runs, and why.
_BLOCKING = {
    "I": "isolated mode ignores PYTHONPATH",
    "E": "it ignores the PYTHON* environment variables, PYTHONPATH among them",
    "S": "it does not import the site module, which loads sitecustomize",
}


def run_name(command: Sequence[str]) -> tuple[str, str | None]:
    """The run's default name and, if the interpreter's options keep metering from starting, the
    option. ``python app.py`` is "app.py", ``python -m pkg`` "pkg", a console script its name."""
    exe = os.path.basename(command[0])
    if not _PYTHON.match(exe):
        return exe, None
    blocked = None
    i = 1
    while i < len(command):
        arg = command[i]
        if arg == "--":
            i += 1
            break
        if not arg.startswith("-") or arg == "-":
            break
        if arg.startswith("--"):  # --version, --check-hash-based-pycs always
            i += 2 if arg == "--check-hash-based-pycs" else 1
            continue
        for j, letter in enumerate(arg[1:], 1):
            if letter in _BLOCKING and blocked is None:
                blocked = letter
            if letter in "cm":
                rest = arg[j + 1 :] or (command[i + 1] if i + 1 < len(command) else "")
                return (f"{exe} -c" if letter == "c" else rest or exe), blocked
            if letter in _WITH_VALUE:
                i += 0 if arg[j + 1 :] else 1
                break
        i += 1
    return (os.path.basename(command[i]) if i < len(command) else exe), blocked


def run_command(command: Sequence[str], *, ledger: str | None, name: str | None, tags: dict[str, str]) -> int:
    """Run ``command`` metered; return its exit code (a signal's number negated, as the shell does)."""
    if not command:
        print("llmtally run: no command given (llmtally run [options] -- python app.py)", file=sys.stderr)
        return 2
    default_name, blocked = run_name(command)
    if blocked is not None:
        print(
            f"llmtally run: metering cannot start in `{os.path.basename(command[0])} -{blocked}`: "
            f"{_BLOCKING[blocked]}, which is how llmtally run starts it. Run the program without "
            f"-{blocked}, or meter it from inside (llmtally.instrument(), or a track() scope).",
            file=sys.stderr,
        )
        return 2
    bootstrap = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_bootstrap")
    env = dict(os.environ)
    env.pop(ENV_CHILD, None)  # a run inside a run is a run of its own
    env["PYTHONPATH"] = os.pathsep.join(p for p in (bootstrap, env.get("PYTHONPATH", "")) if p)
    import uuid

    env[ENV_RUN] = json.dumps(
        {
            "name": name or default_name,
            "tags": tags,
            "run_id": uuid.uuid4().hex,
            # The run's calls start after this (a margin for clocks read in other processes):
            # reading them back scans the calls from here on, not the whole ledger.
            "since": time.time() - 60,
            # Named in the message of an interpreter that lacks llmtally: this one has it.
            "python": sys.executable,
        }
    )
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
    """In every Python process of the run, before its code runs: the run's id, the ledger, a
    process-wide scope of the run's name and tags; in the run's first process, the exit summary."""
    spec = os.environ.pop(ENV_RUN, None)
    inherited = os.environ.get(ENV_CHILD)
    if not spec and not inherited:
        return
    import llmtally

    from .._runtime import RUNTIME

    try:
        settings: dict[str, Any] = json.loads(spec or inherited or "{}")
    except ValueError:
        settings = {}
    if not isinstance(settings, dict):  # an older llmtally's "1"
        settings = {}
    if spec:
        settings["top"] = os.getpid()
        os.environ[ENV_CHILD] = json.dumps(settings)
    RUNTIME.join_run(settings.get("run_id"))
    llmtally.instrument()  # also honours LLMTALLY_LEDGER
    if "name" not in settings:
        return
    # Only its summary is read: exact totals in constant memory, no per-call records.
    tally = llmtally.Tally(settings.get("name"), settings.get("tags") or None, keep_calls=False)
    # Entered for the life of the process: set in the main thread's context, inherited by every
    # thread and task the program starts, and by the children it forks.
    tally.__enter__()
    _flush_before_exec()
    if settings.get("top") != os.getpid():
        return  # a process the program started: recorded in the ledger, counted in the summary
    import atexit

    def summary() -> None:
        if os.getpid() != settings.get("top"):
            return  # a child forked from the first process, ending normally: it has no summary
        try:
            llmtally.flush()
            counted, processes, note = _run_totals(tally, settings)
            many = f" (calls from {processes} processes)" if processes > 1 else ""
            sys.stderr.write(f"\nllmtally: {tally.name}{many}\n{counted}\n{note}Calls: {RUNTIME.where()}\n")
            sys.stderr.flush()
        except Exception:  # pragma: no cover
            pass

    atexit.register(summary)


def _flush_before_exec() -> None:
    """``os.exec*`` replaces the process without running its exit hooks: record its calls first.
    (Every ``os.exec*`` function ends in ``execv`` or ``execve``.)"""
    for name in ("execv", "execve"):
        original = getattr(os, name, None)
        if original is None or getattr(original, "_llmtally_flushes", False):
            continue

        def flushing(*args: Any, _original: Any = original) -> Any:
            try:
                import llmtally

                llmtally.flush(timeout=20)
            except Exception:  # pragma: no cover - the exec must happen
                pass
            return _original(*args)

        flushing._llmtally_flushes = True  # type: ignore[attr-defined]
        setattr(os, name, flushing)


def _run_totals(own: Tally, settings: dict[str, Any]) -> tuple[Tally, int, str]:
    """What the summary counts: the run's calls from every process (read back from the ledger by
    the run's id), how many processes made them, and a line saying what is not counted, if any."""
    from .._runtime import RUNTIME

    writer = RUNTIME.writer
    run_id = settings.get("run_id")
    if writer is None or not run_id:
        return (
            own,
            1,
            "Counted: this process and the workers of its process pools only (no ledger to gather the "
            "other processes' calls from)\n",
        )
    try:
        return (*_read_run(writer.ledger, own, run_id, float(settings.get("since") or 0)), "")
    except Exception as exc:
        why = f"the ledger could not be read: {exc}"
        return own, 1, f"Counted: this process and the workers of its process pools only ({why})\n"


def _read_run(ledger: Ledger, own: Tally, run_id: str, since: float) -> tuple[Tally, int]:
    """The run's calls in the ledger, as a Tally to print, and the number of processes that made them."""
    from .._core import money
    from .._core.tally import Tally
    from .._core.usage import ModelTotals, Totals
    from ..ledger._read import sums_of_calls
    from ..ledger._records import NAMES, SUMS

    mark = ledger.placeholder
    where = f"FROM calls WHERE started_at >= {mark} AND run_id = {mark}"
    rows = ledger.execute(
        f"SELECT COALESCE(model, requested_model, 'unknown'), native_currency, {sums_of_calls(NAMES)} "
        f"{where} GROUP BY 1, 2",
        (since, run_id),
    )
    processes = ledger.execute(
        f"SELECT COUNT(*) FROM (SELECT DISTINCT host, pid {where}) AS p", (since, run_id)
    )
    total = Totals()
    by_model: dict[str, Totals] = {}
    currencies: set[str] = set()
    for model, native_currency, *sums in rows:
        values = dict(zip(SUMS, (int(v or 0) for v in sums), strict=True))
        pico = values.pop("cost_pico")
        if native_currency:
            currencies.add(native_currency)
        for totals in (by_model.setdefault(model, ModelTotals()), total):
            for key, value in values.items():
                setattr(totals, key, getattr(totals, key) + value)
            if values["requests"] > values["unpriced_requests"]:
                cost = money.from_pico(pico)
                totals.cost = cost if totals.cost is None else totals.cost + cost
    # A Tally whose totals are these, printed as the run's own would be.
    counted = Tally(own.name, own.tags, keep_calls=False)
    counted._totals, counted._by_model, counted._currencies = total, by_model, currencies
    return counted, int(processes[0][0]) if processes else 1
