"""llmtally and its ledger work where the POSIX-only calls are missing (Windows).

The interpreter of these tests runs on Linux, so a child interpreter is made to look like one
without them before llmtally is imported: no ``os.register_at_fork`` (nor ``os.fork``), no
``fcntl`` (nor ``pwd``, ``grp``, ``resource``, ``termios``: ``import`` of them fails), no POSIX-only
signals, and for one run no ``signal.SIGTERM`` either. In it, calls through the real openai SDK are
metered, limited by a scope and a shared budget, recorded in a SQLite ledger, spooled and replayed
(the spool's locking is ``fcntl``'s), and reported; the same goes for the command line.

(``os.getuid`` stays: it is missing on Windows, but only platformdirs' Unix code calls it, and that
is not the code that runs on Windows.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

MISSING = textwrap.dedent(
    """
    import os, signal, sys

    for name in ("register_at_fork", "fork", "forkpty", "killpg", "setsid", "getpgid", "setpgid"):
        if hasattr(os, name):
            delattr(os, name)
    for name in ("SIGKILL", "SIGHUP", "SIGALRM", "SIGUSR1", "SIGUSR2", "SIGCHLD", "SIGQUIT", "SIGPIPE"):
        if hasattr(signal, name):
            delattr(signal, name)
    if os.environ.get("NO_SIGTERM"):
        del signal.SIGTERM
    for name in ("fcntl", "pwd", "grp", "resource", "termios"):
        sys.modules[name] = None  # import fails with ImportError, as where the module does not exist
    """
)

PROGRAM = MISSING + textwrap.dedent(
    """
    import json

    import httpx2
    import openai

    import llmtally
    from llmtally.ledger import open_ledger
    from llmtally.ledger._records import to_row
    from llmtally.ledger._spool import Spool
    from llmtally.testing import FakeProvider, Reply

    ledger, replayed = sys.argv[1], sys.argv[2]
    llmtally.configure(ledger=ledger)
    fake = FakeProvider(
        handler=lambda req: Reply(text="ha", prompt_tokens=11, completion_tokens=13, model="gpt-4")
    )
    client = openai.OpenAI(
        api_key="sk-test",
        base_url="http://fake/v1",
        max_retries=0,
        http_client=httpx2.Client(transport=fake.httpx2_transport()),
    )


    def ask():
        client.chat.completions.create(
            model="gpt-4", messages=[{"role": "user", "content": "Tell me a joke"}], max_tokens=13
        )


    refused = []
    with llmtally.track("agent", max_requests="2", tags={"team": "search"}) as agent:
        ask()
        ask()
        try:
            ask()
        except llmtally.BudgetExceeded as exc:
            refused.append(exc.limit)
    with llmtally.budget("team", max_cost="0.00111", ledger=ledger) as team:
        ask()
        try:
            ask()
        except llmtally.BudgetExceeded as exc:
            refused.append(exc.scope)
    assert llmtally.flush(30)

    # The spool (where records wait while a ledger cannot be written) without fcntl's locks.
    spool = Spool(replayed)
    spool.append([to_row(call) for call in agent.calls])
    spooled = len(spool.read())
    target = open_ledger(replayed)
    moved = spool.replay(lambda rows: target.write(rows, ignore_duplicates=True))

    def rows(url, by):
        return [[list(r.keys), r.requests, str(r.cost)] for r in llmtally.report(ledger=url, by=by)]


    print(json.dumps({
        "refused": refused,
        "agent": [agent.requests, str(agent.cost)],
        "team": [team.requests, str(team.cost)],
        "report": rows(ledger, ["scope"]),
        "spooled": spooled,
        "moved": moved,
        "spool_left": spool.pending(),
        "replayed": rows(replayed, ["model"]),
        "fcntl": sys.modules["fcntl"],
        "register_at_fork": hasattr(os, "register_at_fork"),
    }))
    """
)


def run(code: str, *argv: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *argv],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
        env={**os.environ, "LLMTALLY_SPOOL_DIR": str(tmp_path / "spool"), **env},
    )


@pytest.mark.parametrize("sigterm", [True, False], ids=["with-SIGTERM", "without-SIGTERM"])
def test_metering_limits_ledger_and_spool_without_posix(tmp_path: Path, sigterm: bool) -> None:
    ledger = f"sqlite:///{tmp_path / 'calls.db'}"
    replayed = f"sqlite:///{tmp_path / 'replayed.db'}"
    env = {} if sigterm else {"NO_SIGTERM": "1"}
    done = run(PROGRAM, ledger, replayed, tmp_path=tmp_path, **env)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # nothing logged: no guard was missed, no work-around was needed
    got = json.loads(done.stdout)
    assert got == {
        "refused": ["requests", "team"],
        "agent": [2, "0.00222"],
        "team": [1, "0.00111"],
        "report": [[["agent"], 2, "0.00222"], [["team"], 1, "0.00111"]],
        "spooled": 2,
        "moved": 2,
        "spool_left": False,
        "replayed": [[["gpt-4"], 2, "0.00222"]],
        "fcntl": None,
        "register_at_fork": False,
    }


def test_the_command_line_without_posix(tmp_path: Path) -> None:
    """``budget`` and ``report`` over a SQLite ledger, and ``cost``, in the same interpreter."""
    cli = MISSING + "from llmtally.cli import main\nraise SystemExit(main(sys.argv[1:]))\n"
    ledger = f"sqlite:///{tmp_path / 'calls.db'}"
    for argv, out in [
        (["budget", "set", "team", "--max-cost", "5", "--period", "day", "--ledger", ledger], ""),
        (["budget", "reset", "team", "--ledger", ledger], ""),
        (["budget", "list", "--ledger", ledger], "team: spent $0 of $5 (per day since "),
        (["report", "--ledger", ledger, "--format", "csv"], ""),
        (["cost", "gpt-4", "-i", "11", "-o", "13"], "$0.00111\n"),
    ]:
        done = run(cli, *argv, tmp_path=tmp_path)
        assert (done.returncode, done.stderr) == (0, ""), argv
        assert done.stdout.startswith(out), (argv, done.stdout)
