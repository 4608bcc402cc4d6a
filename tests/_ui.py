"""What the dashboard's tests share: ledgers written through real SDK calls, and a running dashboard.

``record_calls`` sends real openai and anthropic SDK requests over loopback to llmtally's fake
provider with llmtally recording into the ledger at a URL (SQLite or PostgreSQL): priced and
unpriced models, a stream counted offline (estimated), a failure, nested scopes, tags, and model
names a hostile server could send. The prompts carry a marker (``PROMPT_MARK``) that must never
reach the dashboard, and the clients an API key (``API_KEY``) that must not either.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anthropic
import openai

import llmtally
from llmtally.testing import FakeProvider, FakeRequest, Reply

#: How many calls record_calls makes (without extra).
CALLS_MADE = 14
PROMPT_MARK = "prompt-text-that-must-never-show-7f3a"
API_KEY = "sk-test-key-that-must-never-show-91c2"
#: Names a server can answer with (tests/test_report_safety.py's HOSTILE, some of them).
HOSTILE = [
    "<script>alert(1)</script>",
    "[/x] closing tag",
    "\x1b]0;pwned\x07title",
    '=HYPERLINK("http://evil.example","x")',
    "\u202egnp.exe",
]


def _handler(req: FakeRequest) -> Reply:
    model = req.model or "unknown"
    if model == "broken":
        return Reply(status=500, error="upstream failure")
    if model.startswith("hostile-"):
        return Reply(prompt_tokens=50, completion_tokens=5, model=HOSTILE[int(model[8:])])
    size = 100 + 37 * len(model)
    return Reply(prompt_tokens=size, completion_tokens=size // 10, model=model)


def _messages() -> list[dict[str, str]]:
    return [{"role": "user", "content": f"{PROMPT_MARK} hello"}]


def _chat(client: openai.OpenAI, model: str, **kw: Any) -> None:
    client.chat.completions.create(model=model, messages=_messages(), **kw)  # type: ignore[call-overload]


def record_calls(url: str, fake: FakeProvider | None = None, *, extra: int = 0) -> None:
    """Make the scenario's SDK calls with llmtally recording into ``url``, flushed when it returns."""
    fake = fake or FakeProvider(handler=_handler)
    llmtally.configure(ledger=url)
    try:
        with fake.serve() as base:
            oa = openai.OpenAI(base_url=base + "/v1", api_key=API_KEY, max_retries=0)
            an = anthropic.Anthropic(base_url=base, api_key=API_KEY, max_retries=0)
            with llmtally.track("search", tags={"team": "search", "user": "u1"}):
                _chat(oa, "gpt-4o")
                _chat(oa, "gpt-4o-mini")
                _chat(oa, "gpt-4o-mini")
                oa.embeddings.create(model="text-embedding-3-small", input=[PROMPT_MARK])
            with llmtally.track("agent", tags={"team": "ads", "user": "u2"}):
                with llmtally.track("step"):
                    an.messages.create(model="claude-sonnet-4-5", max_tokens=100, messages=_messages())  # type: ignore[arg-type]
                    an.messages.create(model="claude-haiku-4-5", max_tokens=100, messages=_messages())  # type: ignore[arg-type]
                # A stream without usage: counted offline, marked estimated.
                for _ in oa.chat.completions.create(model="gpt-4o", messages=_messages(), stream=True):  # type: ignore[call-overload]
                    pass
            # No price is known for it: counted apart, never $0.
            _chat(oa, "my-finetune-v1")
            try:
                _chat(oa, "broken")
            except openai.InternalServerError:
                pass
            with llmtally.track("hostile", tags={"team": HOSTILE[0]}):
                for i in range(len(HOSTILE)):
                    _chat(oa, f"hostile-{i}")
            for _ in range(extra):
                with llmtally.track("later", tags={"team": "later"}):
                    _chat(oa, "gpt-4.1")
        assert llmtally.flush()
    finally:
        llmtally.configure(ledger="none")


def report_json(url: str, *args: str) -> dict[str, Any]:
    """``llmtally report --format json`` on ``url`` (the command, not the function)."""
    import contextlib
    import io

    from llmtally.cli import cli_logic

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli_logic(["report", "--ledger", url, "--format", "json", *args]) == 0
    doc: dict[str, Any] = json.loads(out.getvalue())
    return doc


def iso(t: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(t, tz=UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


@contextmanager
def dashboard(url: str, **kw: Any) -> Iterator[Any]:
    """The dashboard over the ledger at ``url``, served on a free loopback port for the block."""
    from llmtally.ledger import open_ledger
    from llmtally.ui.server import Dashboard

    ledger = open_ledger(url, create=False)
    assert ledger is not None
    dash = Dashboard(ledger, port=0, **kw).start()
    deadline = time.monotonic() + 30
    while not dash.server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield dash
    finally:
        dash.stop()
        ledger.close()
