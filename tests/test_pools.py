"""A ``track()`` scope counts the calls of the worker processes it sends work to: ProcessPoolExecutor,
multiprocessing pools and processes, with the fork, spawn and forkserver start methods, and a plain
``os.fork``; each task counts in the scopes open where it was *submitted*, not where its pool was
made. Through the real openai SDK in the workers, against the fake provider over loopback HTTP."""

from __future__ import annotations

import json
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
            os._exit(0)
        pids.append(pid)
    for pid in pids:
        os.waitpid(pid, 0)
    print(json.dumps({"requests": t.requests, "prompt": t.prompt_tokens}))
"""


def test_a_plain_fork_counts_in_the_scope(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(FORK)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout) == {"requests": 7, "prompt": 70}


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
        tags={"team": "search", "n": 3},
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
