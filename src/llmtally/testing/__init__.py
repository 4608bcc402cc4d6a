"""A fake LLM provider for tests: every wire format llmtally reads, answering from a script.

`FakeProvider` serves the real JSON and streamed formats over loopback HTTP
(``with fake.serve() as url``) or in memory (``fake.httpx2_transport()``), so the real
``openai``, ``anthropic`` and ``langchain-openai`` clients can be pointed at it:

    from llmtally.testing import FakeProvider, Reply, ToolCall

    fake = FakeProvider()
    fake.add(Reply(text="Why did the chicken...", prompt_tokens=11, completion_tokens=13))
    fake.add(Reply(tool_calls=[ToolCall("search", {"query": "x"})]))
    fake.add(Reply(status=429, error="rate limited"))
    with fake.serve() as base_url:
        client = openai.OpenAI(base_url=base_url + "/v1", api_key="sk-test", max_retries=0)
        ...
    fake.requests[0].json  # what the SDK sent

`unmetered()` lists the POSTs in a block that looked like LLM calls but that llmtally could not read.

Importing this package costs only the standard library.
"""

from __future__ import annotations

from ._provider import FakeProvider
from ._script import FakeRequest, Reply, ToolCall
from ._unmetered import unmetered

__all__ = ["FakeProvider", "FakeRequest", "Reply", "ToolCall", "unmetered"]
