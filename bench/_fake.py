"""``FakeProvider`` over loopback, served from a child process, for the benchmarks of real HTTP clients.

The provider's HTTP server is pure Python. In the benchmark's own process its threads would take
the GIL and the CPU caches from the client being timed, and with them some of the difference being
measured; in a child process it runs on the other core and the benchmark's thread does only the
client's work. The child imports ``llmtally.testing`` (the standard library and the fake), never
instruments anything, and on exit reports how many requests it answered.

Every request gets ``Reply(text=JOKE, prompt_tokens=11, completion_tokens=13)``, the model being
the one the request names (body or path), unless its body says ``"<N> chunks"``: then the reply is
N words in exactly N stream pieces, ``completion_tokens=N`` (for long streams).

    with FakeServer() as fake:
        requests.post(fake.url + "/v1/chat/completions", json=...)
    fake.requests  # answered, read when the child has stopped

``python bench/_fake.py`` runs the child: it prints the URL, serves until its stdin closes, then
prints a JSON line with the request count.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

JOKE = "Why did the chicken cross the road? To get to the other side."
PROMPT_TOKENS = 11
COMPLETION_TOKENS = 13


def _reply(request: Any) -> Any:
    import re

    from llmtally.testing import Reply

    found = re.search(rb"(\d+) chunks", request.body or b"")
    if found:
        n = int(found.group(1))
        return Reply(text="word " * n, chunks=n, prompt_tokens=PROMPT_TOKENS, completion_tokens=n)
    return Reply(text=JOKE, prompt_tokens=PROMPT_TOKENS, completion_tokens=COMPLETION_TOKENS)


def _serve() -> None:
    from llmtally.testing import FakeProvider

    fake = FakeProvider(handler=_reply)
    with fake.serve() as url:
        print(url, flush=True)
        sys.stdin.read()  # until the parent closes it
    paths: dict[str, int] = {}
    for r in fake.requests:
        paths[r.path] = paths.get(r.path, 0) + 1
    print(json.dumps({"requests": len(fake.requests), "paths": paths}), flush=True)


class FakeServer:
    """The child process serving ``FakeProvider``; ``url`` while open, ``requests`` once closed."""

    def __init__(self) -> None:
        self.url = ""
        self.requests: int | None = None
        self.paths: dict[str, int] = {}
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> FakeServer:
        env = dict(os.environ, PYTHONWARNINGS="ignore")
        self._proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert self._proc.stdout is not None
        self.url = self._proc.stdout.readline().strip()
        if not self.url.startswith("http://"):
            self._proc.kill()
            raise RuntimeError(f"the fake provider did not start: {self.url!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        out, _ = proc.communicate(timeout=60)  # closes stdin: the child stops and reports
        lines = out.strip().splitlines()
        if lines:
            report = json.loads(lines[-1])
            self.requests, self.paths = report["requests"], report["paths"]


if __name__ == "__main__":
    _serve()
