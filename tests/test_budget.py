"""Limits that refuse requests before they are sent, and offline estimates."""

from __future__ import annotations

import logging
import threading
from decimal import Decimal

import httpx2
import openai
import pytest
import quicktok

import llmtally
from llmtally.testing import FakeProvider, Reply

CALL = Decimal("0.00111")  # gpt-4, 11 prompt + 13 completion tokens


def joke() -> Reply:
    return Reply(text="ha", prompt_tokens=11, completion_tokens=13, model="gpt-4")


@pytest.fixture
def fake() -> FakeProvider:
    return FakeProvider(handler=lambda req: joke())


@pytest.fixture
def client(fake: FakeProvider) -> openai.OpenAI:
    return openai.OpenAI(
        api_key="sk-test",
        base_url="http://fake/v1",
        max_retries=0,
        http_client=httpx2.Client(transport=fake.httpx2_transport()),
    )


def ask(client: openai.OpenAI, **kw: object) -> None:
    client.chat.completions.create(
        model="gpt-4", messages=[{"role": "user", "content": "Tell me a joke"}], **kw
    )


class TestLimits:
    """A scope at its limit refuses the next request; the provider never sees it."""

    def test_max_requests(self, fake: FakeProvider, client: openai.OpenAI) -> None:
        with llmtally.track("agent", max_requests=2) as t:
            ask(client)
            ask(client)
            with pytest.raises(llmtally.BudgetExceeded) as info:
                ask(client)
        assert len(fake.requests) == 2 and t.successful_requests == 2
        assert info.value.scope == "agent" and info.value.limit == "requests" and info.value.spent == 2
        assert "the request was not sent" in str(info.value)

    def test_max_cost_at_the_boundary(self, fake: FakeProvider, client: openai.OpenAI) -> None:
        with llmtally.track("agent", max_cost=CALL * 2) as t:
            ask(client)
            ask(client)  # spent exactly the limit after this one
            with pytest.raises(llmtally.BudgetExceeded, match=r"cost limit: \$0.00222 of \$0.00222"):
                ask(client)
        assert len(fake.requests) == 2 and t.cost == CALL * 2

    def test_just_below_the_boundary_sends(self, fake: FakeProvider, client: openai.OpenAI) -> None:
        with llmtally.track(max_cost=CALL * 2 + Decimal("0.00001")):
            for _ in range(3):
                ask(client)
            with pytest.raises(llmtally.BudgetExceeded):
                ask(client)
        assert len(fake.requests) == 3

    def test_max_tokens(self, fake: FakeProvider, client: openai.OpenAI) -> None:
        with llmtally.track(max_tokens=48):
            ask(client)
            ask(client)
            with pytest.raises(llmtally.BudgetExceeded, match="token limit: 48 of 48"):
                ask(client)
        assert len(fake.requests) == 2

    def test_nested_scopes(self, fake: FakeProvider, client: openai.OpenAI) -> None:
        with llmtally.track("run", max_cost="1") as outer:
            with llmtally.track("step", max_requests=1):
                ask(client)
                with pytest.raises(llmtally.BudgetExceeded) as info:
                    ask(client)
            ask(client)  # the outer scope still has budget
        assert info.value.scope == "step"
        assert outer.successful_requests == 2 and len(fake.requests) == 2

    def test_warn_mode(
        self, fake: FakeProvider, client: openai.OpenAI, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.WARNING, "llmtally")
        with llmtally.track("soft", max_requests=1, on_exceed="warn") as t:
            for _ in range(3):
                ask(client)
        assert len(fake.requests) == 3 and t.successful_requests == 3
        warnings = [r for r in caplog.records if "request limit" in r.getMessage()]
        assert len(warnings) == 1 and "sending anyway" in warnings[0].getMessage()

    async def test_async(self, fake: FakeProvider) -> None:
        client = openai.AsyncOpenAI(
            api_key="sk-test",
            base_url="http://fake/v1",
            max_retries=0,
            http_client=httpx2.AsyncClient(transport=fake.httpx2_transport()),
        )
        async with llmtally.track(max_requests=1):
            await client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}])
            with pytest.raises(llmtally.BudgetExceeded):
                await client.chat.completions.create(
                    model="gpt-4", messages=[{"role": "user", "content": "hi"}]
                )
        assert len(fake.requests) == 1

    def test_bad_mode(self) -> None:
        with pytest.raises(ValueError, match="on_exceed"):
            llmtally.track(max_cost="1", on_exceed="ignore")


class TestRefused:
    """``Tally.refused``: the scope whose limit refused a request knows it, even if the code caught it."""

    def test_caught_refusal_is_kept(self, fake: FakeProvider, client: openai.OpenAI) -> None:
        with llmtally.track("outer") as outer, llmtally.track("agent", max_requests=1) as t:
            ask(client)
            assert t.refused is None
            try:
                ask(client)
            except llmtally.BudgetExceeded as exc:
                caught = exc
        assert t.refused is caught and t.refused.limit == "requests"
        assert outer.refused is None  # not its limit
        assert len(fake.requests) == 1

    def test_only_the_refusing_scope(self, fake: FakeProvider, client: openai.OpenAI) -> None:
        with (
            llmtally.track("outer", max_requests=1) as outer,
            llmtally.track("inner", max_requests=5) as inner,
        ):
            ask(client)
            with pytest.raises(llmtally.BudgetExceeded):
                ask(client)
        assert outer.refused is not None and outer.refused.scope == "outer"
        assert inner.refused is None

    def test_warn_mode_refuses_nothing(self, fake: FakeProvider, client: openai.OpenAI) -> None:
        with llmtally.track("agent", max_requests=1, on_exceed="warn") as t:
            ask(client)
            ask(client)
        assert t.refused is None and len(fake.requests) == 2


class TestPreflight:
    """With preflight, a request whose worst case could cross the limit is refused before any spend."""

    def test_worst_case(self, fake: FakeProvider, client: openai.OpenAI) -> None:
        with llmtally.track("careful", max_cost="0.01", preflight=True) as t:
            with pytest.raises(llmtally.BudgetExceeded, match="could cost up to") as info:
                ask(client, max_tokens=1000)  # up to 1000 output tokens at $60/M = $0.06
            # Nothing was spent yet: it says "could pass", not "reached".
            assert "'careful' could pass its cost limit ($0 spent of $0.01)" in str(info.value)
            assert info.value.worst is not None and info.value.worst > Decimal("0.06")
            ask(client, max_tokens=10)  # worst case well under $0.01
            with pytest.raises(llmtally.BudgetExceeded):
                ask(client)  # no max_tokens: 4,096 output tokens assumed, $0.25 at worst
        assert len(fake.requests) == 1 and t.successful_requests == 1


class TestConcurrency:
    """32 workers on one $0.01 budget: spend passes it only by what was in flight."""

    def test_32_workers(self, fake: FakeProvider, client: openai.OpenAI) -> None:
        limit = Decimal("0.01")
        refused = []

        def worker() -> None:
            while True:
                try:
                    ask(client)
                except llmtally.BudgetExceeded:
                    refused.append(1)
                    return

        with llmtally.track("swarm", max_cost=limit) as t:
            threads = [threading.Thread(target=worker) for _ in range(32)]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
        assert len(refused) == 32  # every worker was stopped
        assert t.cost >= limit  # the limit was reached
        assert t.cost <= limit + 32 * CALL  # and passed by at most the calls in flight
        assert len(fake.requests) == t.successful_requests


class TestEstimate:
    """Offline estimates with the model's own tokenizer."""

    def test_text(self) -> None:
        text = "Hello, world! 你好世界 🌍 def f(x): return x**2"  # English, Chinese, emoji, code
        e = llmtally.estimate(text, model="gpt-4o", max_output_tokens=100)
        assert e.input_tokens == len(quicktok.get_encoding("o200k_base").encode_ordinary(text))
        assert e.exact_tokenizer
        assert e.min_cost == llmtally.cost_of("gpt-4o", input_tokens=e.input_tokens, output_tokens=0)
        assert e.max_cost == llmtally.cost_of("gpt-4o", input_tokens=e.input_tokens, output_tokens=100)
        assert e.max_cost is not None and e.min_cost is not None and e.max_cost > e.min_cost

    def test_chat_framing(self) -> None:
        messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me a joke"}]
        enc = quicktok.get_encoding("cl100k_base")
        body = sum(len(enc.encode_ordinary(m[k])) for m in messages for k in ("role", "content"))
        e = llmtally.estimate(messages, model="gpt-4")
        assert e.input_tokens == body + 3 * 2 + 3

    def test_unknown_tokenizer_is_marked(self) -> None:
        assert not llmtally.estimate("hi there", model="claude-sonnet-4-5").exact_tokenizer


class TestEstimateCommand:
    """llmtally estimate reads text or JSON messages."""

    def test_messages_file(self, tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
        from llmtally.cli import cli_logic

        path = tmp_path / "prompt.json"
        path.write_text('[{"role": "user", "content": "Tell me a joke"}]')
        assert cli_logic(["estimate", "--model", "gpt-4", "--max-output", "13", str(path)]) == 0
        out = capsys.readouterr().out
        e = llmtally.estimate(
            [{"role": "user", "content": "Tell me a joke"}], model="gpt-4", max_output_tokens=13
        )
        assert f"input tokens: {e.input_tokens}" in out
        assert f"max cost (input + output allowance): ${e.max_cost}" in out

    def test_text_from_stdin(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        import io

        from llmtally.cli import cli_logic

        monkeypatch.setattr("sys.stdin", io.StringIO("hello world"))
        assert cli_logic(["estimate", "--model", "my-own-model"]) == 0
        out = capsys.readouterr().out
        assert "input tokens: 2 (approximated with o200k)" in out and "cost: unknown" in out
