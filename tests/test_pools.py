"""A ``track()`` scope counts the calls of the worker processes it sends work to: ProcessPoolExecutor,
multiprocessing pools and processes, with the fork, spawn and forkserver start methods, and a plain
``os.fork``; each task counts in the scopes open where it was *submitted*, not where its pool was
made. Through the real openai SDK in the workers, against the fake provider over loopback HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

WORKERS = """
import os
import openai

def work(i):
    client = openai.OpenAI(base_url=os.environ["FAKE_URL"] + "/v1", api_key="sk-test", max_retries=0)
    client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    return os.getpid()

def several(n):
    for i in range(n):
        work(i)
"""

PROGRAM = """
import json, multiprocessing as mp, os, sys
from concurrent.futures import ProcessPoolExecutor
import llmtally
from llmtally.testing import FakeProvider, Reply
from workers import work, several

def main(method, ledger):
    llmtally.configure(ledger=ledger)
    ctx = mp.get_context(method)
    out = {}
    reply = Reply(text="x", prompt_tokens=10, completion_tokens=5, model="gpt-4o")
    fake = FakeProvider(handler=lambda r: reply)
    with fake.serve() as url:
        os.environ["FAKE_URL"] = url
        with ProcessPoolExecutor(2, mp_context=ctx) as made_outside:
            with llmtally.track("outer") as outer:
                with llmtally.track("inner", tags={"team": "search"}) as inner:
                    list(made_outside.map(work, range(6)))
                    out["inner_after_map"] = inner.requests  # exact as soon as the results are back
                with ctx.Pool(2) as pool:
                    pool.map(work, range(4))
                    pool.apply_async(work, (1,)).get()
                    list(pool.imap_unordered(work, range(3)))
                    with llmtally.track("later") as later:
                        pool.map(work, range(2))  # the pool was made in "outer": its tasks count here
                p = ctx.Process(target=several, args=(2,))
                p.start()
                p.join()
            with ctx.Pool(2) as made_inside_outer:  # made outside "outer" now, used outside any scope
                made_inside_outer.map(work, range(3))
            list(made_outside.map(work, range(2)))  # after the scope: not in it
        out.update(outer=outer.requests, inner=inner.requests, later=later.requests,
                   cost=str(outer.cost), prompt=outer.prompt_tokens, calls=len(outer.calls),
                   models=sorted(outer.by_model), served=len(fake.requests))
    print(json.dumps(out))

if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
"""


def run(tmp_path: Path, method: str, ledger: str = "none") -> dict[str, object]:
    (tmp_path / "workers.py").write_text(WORKERS)
    (tmp_path / "program.py").write_text(PROGRAM)
    out = subprocess.run(
        [sys.executable, "program.py", method, ledger],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_a_scope_counts_its_workers(tmp_path: Path, method: str) -> None:
    got = run(tmp_path, method)
    assert got["inner_after_map"] == 6 and got["inner"] == 6
    assert got["later"] == 2
    # 6 (inner) + 4 + 1 + 3 + 2 (pool tasks) + 2 (a Process started in the scope); not the 3 + 2 after.
    assert got["outer"] == 18 and got["calls"] == 18 and got["prompt"] == 180
    assert got["models"] == ["gpt-4o"]
    assert got["served"] == 18 + 3 + 2  # every request reached the server once
    from decimal import Decimal

    import llmtally

    assert Decimal(str(got["cost"])) == 18 * llmtally.cost_of("gpt-4o", input_tokens=10, output_tokens=5)


def test_workers_record_under_the_scopes_names(tmp_path: Path) -> None:
    """A spawned worker writes its calls to the parent's ledger itself, under the scope path it was
    sent from; nothing is recorded twice (the relay feeds scopes, not the ledger)."""
    import sqlite3

    path = tmp_path / "l.db"
    got = run(tmp_path, "spawn", f"sqlite:///{path}")
    assert got["outer"] == 18
    rows = (
        sqlite3.connect(path).execute("SELECT scope_path, tags, COUNT(*) FROM calls GROUP BY 1, 2").fetchall()
    )
    by_scope = {(tuple(json.loads(s)), t): n for s, t, n in rows}
    assert by_scope == {
        (("outer", "inner"), '{"team": "search"}'): 6,
        (("outer",), None): 10,
        (("outer", "later"), None): 2,
        ((), None): 5,
    }, by_scope


FORK = """
import json, os, sys
import httpx2, llmtally
from llmtally.testing import FakeProvider, Reply

fake = FakeProvider(handler=lambda r: Reply(prompt_tokens=10, completion_tokens=5))
client = httpx2.Client(transport=fake.httpx2_transport())
post = lambda: client.post("http://fake/v1/chat/completions", json={"model": "gpt-4o", "messages": []})
with llmtally.track("job") as t:
    post()
    pids = []
    for _ in range(3):
        pid = os.fork()
        if pid == 0:
            post(); post()
            how = sys.argv[1]
            if how == "os._exit":
                os._exit(0)
            elif how == "sys.exit":
                sys.exit(0)
            raise SystemExit  # ends as a script that falls off its end would, atexit and all
        pids.append(pid)
    for pid in pids:
        os.waitpid(pid, 0)
    print(json.dumps({"requests": t.requests, "prompt": t.prompt_tokens}))
"""


@pytest.mark.parametrize("how", ["os._exit", "sys.exit", "end"])
def test_a_plain_fork_counts_in_the_scope(tmp_path: Path, how: str) -> None:
    """With no ledger too: a child that ended with sys.exit lost its calls (no exit hook settled them)."""
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(FORK), how], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"requests": 7, "prompt": 70}
    assert "Traceback" not in out.stderr, out.stderr[-2000:]


LONG_LIVED = """
import json, os, sys
from concurrent.futures import ProcessPoolExecutor
import multiprocessing as mp
import httpx2, llmtally
from llmtally._core import relay
from llmtally.testing import FakeProvider, Reply

def call(_=None):
    fake = FakeProvider(handler=lambda r: Reply(prompt_tokens=10, completion_tokens=5))
    httpx2.Client(transport=fake.httpx2_transport()).post(
        "http://fake/v1/chat/completions", json={"model": "gpt-4o", "messages": []})
    return len(os.listdir("/proc/self/fd"))

if __name__ == "__main__":
    relay.ROTATE, relay._SETTLED = 5, 0.0  # small files, retired at once: the folder stays small
    fds = []
    with ProcessPoolExecutor(1, mp_context=mp.get_context(sys.argv[1])) as pool:
        for i in range(150):  # a service: one scope per request, one long-lived worker
            with llmtally.track(f"req-{i}") as t:
                fds.append(pool.submit(call).result())
            assert t.requests == 1, (i, t.requests)
        import gc
        gc.collect()
        with llmtally.track("batch") as batch:
            list(pool.map(call, range(60)))
            n = batch.requests
            r = batch._relay
            files = len(os.listdir(os.path.join(r.folder, r.uid)))
            scopes = len(os.listdir(r.folder))  # the 150 requests' scopes are gone, and their files
    print(json.dumps({"first": fds[0], "last": fds[-1], "batch": n, "files": files, "scopes": scopes}))
"""


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_long_lived_worker_holds_no_file_per_scope(tmp_path: Path, method: str) -> None:
    """Was: one file descriptor per scope left open in the worker, until the user's own calls failed
    with EMFILE; and a relay file that grew for the scope's whole life."""
    (tmp_path / "service.py").write_text(LONG_LIVED)
    out = subprocess.run(
        [sys.executable, "service.py", method],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["last"] - got["first"] < 5, got
    assert got["batch"] == 60 and got["files"] <= 4, got  # 60 lines in files of 5: all but the last retired
    assert got["scopes"] <= 3, got


ORPHAN = """
import os, sys, time
import httpx2, llmtally
from llmtally.testing import FakeProvider, Reply

fake = FakeProvider(handler=lambda r: Reply(prompt_tokens=10, completion_tokens=5))
client = httpx2.Client(transport=fake.httpx2_transport())
post = lambda: client.post("http://fake/v1/chat/completions", json={"model": "gpt-4o", "messages": []})
with llmtally.track("job"):
    if os.fork() == 0:
        time.sleep(1.0)  # the parent has exited by now, its relay folder gone
        for _ in range(3):
            post()
        print("child done", flush=True)
        os._exit(0)
"""


def test_a_child_that_outlives_its_scope_says_so_once(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(ORPHAN)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = proc.communicate(timeout=60)  # the pipes close when the child ends too
    assert "child done" in out, err[-2000:]
    assert "Traceback" not in err and err.count("has ended") == 1, err[-2000:]


def test_no_relay_folder_is_left_behind(tmp_path: Path) -> None:
    """Workers that open a scope and start a pool of their own end with os._exit: their relay folders
    were left in the temporary directory."""
    (tmp_path / "workers.py").write_text(WORKERS)
    (tmp_path / "program.py").write_text(PROGRAM)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    code = textwrap.dedent(
        """
        import multiprocessing as mp, os, sys
        from concurrent.futures import ProcessPoolExecutor
        import llmtally
        from llmtally.testing import FakeProvider, Reply
        from workers import work

        def nested(i):
            with llmtally.track("sub"):
                with ProcessPoolExecutor(1, mp_context=mp.get_context("fork")) as inner:
                    return sum(inner.map(work, range(2)))

        if __name__ == "__main__":
            reply = Reply(prompt_tokens=10, completion_tokens=5, model="gpt-4o")
            fake = FakeProvider(handler=lambda r: reply)
            with fake.serve() as url:
                os.environ["FAKE_URL"] = url
                with llmtally.track("top") as t:
                    with ProcessPoolExecutor(2, mp_context=mp.get_context(sys.argv[1])) as pool:
                        list(pool.map(nested, range(3)))
                print(t.requests)
        """
    )
    (tmp_path / "nested.py").write_text(code)
    for method in ("fork", "forkserver"):
        out = subprocess.run(
            [sys.executable, "nested.py", method],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "TMPDIR": str(tmp), "PYTHONPATH": str(tmp_path)},
        )
        assert out.returncode == 0, out.stderr[-3000:]
        assert out.stdout.strip().splitlines()[-1] == "6"
        assert [p.name for p in tmp.iterdir() if p.name.startswith("llmtally-relay-")] == [], method


def test_a_call_crosses_as_it_was(tmp_path: Path) -> None:
    """Every field a Tally adds up, and the record's own, survive the relay line exactly."""
    from decimal import Decimal

    from llmtally._core import relay
    from llmtally._core.tally import Tally
    from llmtally._core.usage import TOKEN_NAMES, Call, Usage

    usage = Usage(**{name: i + 1 for i, name in enumerate(TOKEN_NAMES)})
    call = Call(
        "openai",
        "chat.completions",
        "gpt-4o\x1b[2J",  # what a server sent: data, never acted on
        requested_model="gpt-4o",
        usage=usage,
        cost=Decimal("0.000123456789"),
        computed_cost=Decimal("0.0002"),
        native_cost=Decimal("0.0001"),
        native_currency="EUR",
        status=200,
        estimated=True,
        started_at=1_790_000_000.25,
        latency=0.5,
        scope_path=("a", "b"),
        tags={"team": "search", "n": 3, "none": None},
        context=(("service_tier", "flex"),),
        run_id="r1",
    )
    back = relay.load(relay.dump(call))
    for name in Call.__slots__:
        if name != "span":
            assert getattr(back, name) == getattr(call, name), name
    owner = Tally("owner")
    r = relay.ensure(owner)
    worker_side = relay.Relay(r.uid, r.folder, owner=-1)  # as a worker sees it: owned elsewhere
    worker_side.push(call)
    assert owner.requests == 1 and owner.cost == call.cost and owner.cached_tokens == usage.cached_tokens


def test_a_garbled_or_unfinished_line_never_breaks_the_scope(caplog: pytest.LogCaptureFixture) -> None:
    import os

    from llmtally._core import relay
    from llmtally._core.tally import Tally
    from llmtally._core.usage import Call, Usage

    owner = Tally("owner")
    r = relay.ensure(owner)
    folder = Path(r.folder) / r.uid
    folder.mkdir(mode=0o700)
    good = relay.dump(Call("openai", "chat.completions", "gpt-4o", usage=Usage(10, 5)))
    (folder / "1.jsonl").write_bytes(b"{not json\n" + good + good[:20])  # the last one still being written
    assert owner.requests == 1 and "garbled" in caplog.text
    with open(folder / "1.jsonl", "ab") as f:
        f.write(good[20:])
    assert owner.requests == 2  # the rest of the line arrived: counted once
    assert oct(os.stat(r.folder).st_mode & 0o777) == "0o700"


LIMITED = """
import json, multiprocessing as mp, os, sys
from concurrent.futures import ProcessPoolExecutor
import llmtally
from llmtally.testing import FakeProvider, Reply
from workers import work

if __name__ == "__main__":
    method, limit = sys.argv[1], sys.argv[2]
    reply = Reply(text="x", prompt_tokens=10, completion_tokens=5, model="gpt-4o")
    fake = FakeProvider(handler=lambda r: reply)
    kwargs = {"max_requests": 10} if limit == "requests" else {"max_cost": str(llmtally.cost_of(
        "gpt-4o", input_tokens=10 * 10, output_tokens=10 * 5))}
    refused = None
    with fake.serve() as url:
        os.environ["FAKE_URL"] = url
        try:
            with llmtally.track("capped", **kwargs) as t:
                with ProcessPoolExecutor(2, mp_context=mp.get_context(method)) as pool:
                    list(pool.map(work, range(40)))
        except llmtally.BudgetExceeded as exc:
            refused = {"limit": exc.limit, "scope": exc.scope, "text": str(exc)}
        print(json.dumps({"served": len(fake.requests), "counted": t.requests, "refused": refused}))
"""


@pytest.mark.parametrize("limit", ["requests", "cost"])
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_scopes_limits_hold_across_its_workers(tmp_path: Path, method: str, limit: str) -> None:
    """Each worker checks the scope's limits against everything the scope has spent: what it had when
    the task was sent, the other workers' calls since, and its own (was: 40 of 40 sent on a limit of
    10). Spend passes the limit by the calls in flight at most (two workers); the refusal raised in a
    worker reaches the caller as itself."""
    (tmp_path / "workers.py").write_text(WORKERS)
    out = subprocess.run(
        [sys.executable, "-c", LIMITED, method, limit],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Exception ignored" not in out.stderr, out.stderr[-3000:]  # no at-fork hook out of step
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert 10 <= got["served"] <= 12 and got["counted"] == got["served"], got
    assert (
        got["refused"] is not None
        and got["refused"]["limit"] == limit
        and got["refused"]["scope"] == "capped"
    )


def test_a_refusal_pickles_whole() -> None:
    import pickle
    from decimal import Decimal

    import llmtally

    refusal = llmtally.BudgetExceeded("agent", "cost", Decimal("0.50"), Decimal("0.51"), worst=Decimal("0.1"))
    back = pickle.loads(pickle.dumps(refusal))
    assert type(back) is llmtally.BudgetExceeded and str(back) == str(refusal)
    assert (back.scope, back.limit, back.allowed, back.spent, back.worst) == (
        "agent",
        "cost",
        Decimal("0.50"),
        Decimal("0.51"),
        Decimal("0.1"),
    )


SHARED = """
import json, multiprocessing as mp, os, sys
from concurrent.futures import ProcessPoolExecutor
import llmtally
from llmtally.testing import FakeProvider, Reply
from workers import work

if __name__ == "__main__":
    method, ledger = sys.argv[1], sys.argv[2]
    llmtally.configure(ledger=ledger)
    reply = Reply(text="x", prompt_tokens=10, completion_tokens=5, model="gpt-4o")
    fake = FakeProvider(handler=lambda r: reply)
    refused = None
    with fake.serve() as url:
        os.environ["FAKE_URL"] = url
        try:
            # Room for one worst case at a time (4,096 output tokens, reserved), and a dozen calls.
            with llmtally.budget("team", max_cost="0.042"):
                with ProcessPoolExecutor(2, mp_context=mp.get_context(method)) as pool:
                    list(pool.map(work, range(40)))
        except llmtally.BudgetExceeded as exc:
            refused = exc.scope
    print(json.dumps({"served": len(fake.requests), "refused": refused}))
"""


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_shared_budget_holds_in_the_workers(tmp_path: Path, method: str) -> None:
    (tmp_path / "workers.py").write_text(WORKERS)
    out = subprocess.run(
        [sys.executable, "-c", SHARED, method, f"sqlite:///{tmp_path / 'l.db'}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(tmp_path), "LLMTALLY_SPOOL_DIR": str(tmp_path / "spool")},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["refused"] == "team" and 0 < got["served"] < 40, got
