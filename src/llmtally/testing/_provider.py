"""`FakeProvider`: the script, the request log and the routing every front end shares."""

from __future__ import annotations

import json
import re
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from . import _anthropic, _bedrock, _cohere, _gemini, _ollama, _openai
from ._script import FakeRequest, Reply
from ._wire import Answer

if TYPE_CHECKING:
    from ._server import LoopbackServer

__all__ = ["FakeProvider"]

Route = Callable[[FakeRequest, Reply, str], Answer]

# Longest suffix first: "/chat/completions" must not be taken for legacy "/completions".
_ROUTES: list[tuple[str, Route, Callable[[Reply, str], Answer]]] = [
    ("/messages/count_tokens", _anthropic.count_tokens, _anthropic.error),
    ("/chat/completions", _openai.chat_completions, _openai.error),
    ("/completions", _openai.completions, _openai.error),
    ("/embeddings", _openai.embeddings, _openai.error),
    ("/responses", _openai.responses, _openai.error),
    ("/messages", _anthropic.messages, _anthropic.error),
    (":generateContent", _gemini.generate_content, _gemini.error),
    (":streamGenerateContent", _gemini.generate_content, _gemini.error),
    (":embedContent", _gemini.embed_content, _gemini.error),
    (":batchEmbedContents", _gemini.embed_content, _gemini.error),
    (":predict", _gemini.embed_content, _gemini.error),  # Vertex AI, for embedding models
    ("/api/chat", _ollama.chat, _ollama.error),
    ("/api/generate", _ollama.generate, _ollama.error),
    ("/api/embed", _ollama.embed, _ollama.error),
    ("/v2/chat", _cohere.chat, _cohere.error),
    ("/v2/embed", _cohere.embed, _cohere.error),
    # Claude on Vertex AI: .../publishers/anthropic/models/{model}:rawPredict, Messages bodies.
    (":rawPredict", _anthropic.messages, _anthropic.error),
    (":streamRawPredict", _anthropic.messages, _anthropic.error),
    # Amazon Bedrock's runtime: /model/{modelId}/converse, ...
    ("/converse", _bedrock.converse, _bedrock.error),
    ("/converse-stream", _bedrock.converse, _bedrock.error),
    ("/invoke", _bedrock.invoke, _bedrock.error),
    ("/invoke-with-response-stream", _bedrock.invoke, _bedrock.error),
]
_AZURE_DEPLOYMENT = re.compile(r"/openai/deployments/([^/]+)/")
_VERTEX_MODEL = re.compile(r"/publishers/[^/]+/models/([^/:]+):")


class FakeProvider:
    """A scripted stand-in for the OpenAI and Anthropic APIs, for tests and benchmarks.

    Each request the provider answers takes the next `Reply` from the script (or asks ``handler``);
    when the script runs dry it answers like ``Reply()``: the text ``"ok"``. It speaks the real wire
    formats, so the real SDKs can talk to it, over loopback HTTP or in memory:

        fake = FakeProvider()
        fake.add(Reply(text="Hello there", prompt_tokens=11, completion_tokens=2))
        with fake.serve() as base_url:
            client = openai.OpenAI(base_url=base_url + "/v1", api_key="sk-test", max_retries=0)
            client.chat.completions.create(model="gpt-4o", messages=[...])
        assert fake.requests[0].json["model"] == "gpt-4o"

    Routes are matched on the path's suffix, so ``/v1/chat/completions`` and Azure's
    ``/openai/deployments/{name}/chat/completions`` both work: ``/chat/completions``,
    ``/completions``, ``/embeddings``, ``/responses`` (OpenAI), ``/messages``,
    ``/messages/count_tokens`` (Anthropic), ``:generateContent``, ``:streamGenerateContent``,
    ``:embedContent``, ``:batchEmbedContents`` (Gemini API and Vertex AI; ``base_url`` as it is),
    ``:rawPredict``, ``:streamRawPredict`` (Claude on Vertex AI), ``/converse``,
    ``/converse-stream``, ``/invoke``, ``/invoke-with-response-stream`` (Amazon Bedrock's runtime,
    AWS event streams included; ``endpoint_url`` as it is), ``/api/chat``, ``/api/generate``,
    ``/api/embed`` (Ollama; ``host`` as it is) and ``/v2/chat``, ``/v2/embed`` (Cohere; ``base_url``
    as it is). Groq's ``/openai/v1/chat/completions`` and OpenRouter's ``/api/v1/chat/completions``
    answer in those providers' dialects (``x_groq.usage``; ``usage.cost`` from ``Reply.cost``).
    Anything else is a 404, which takes no reply.
    """

    def __init__(
        self, replies: Iterable[Reply] = (), *, handler: Callable[[FakeRequest], Reply] | None = None
    ) -> None:
        self.handler = handler
        self.requests: list[FakeRequest] = []
        self._script: deque[Reply] = deque(replies)
        self._lock = threading.Lock()
        self._server: LoopbackServer | None = None

    # -- the script ---------------------------------------------------------------------------

    def add(self, reply: Reply | str) -> FakeProvider:
        """Queue one reply (a string is shorthand for ``Reply(text=...)``). Returns the provider."""
        with self._lock:
            self._script.append(Reply(text=reply) if isinstance(reply, str) else reply)
        return self

    def extend(self, replies: Iterable[Reply | str]) -> FakeProvider:
        """Queue several replies, in order."""
        for reply in replies:
            self.add(reply)
        return self

    def add_many(self, reply: Reply, n: int) -> FakeProvider:
        """Queue the same reply ``n`` times."""
        with self._lock:
            self._script.extend([reply] * n)
        return self

    @property
    def pending(self) -> int:
        """How many scripted replies are still unused."""
        return len(self._script)

    def reset(self) -> None:
        """Forget the script and the recorded requests."""
        with self._lock:
            self._script.clear()
            self.requests.clear()

    def _next_reply(self, request: FakeRequest) -> Reply:
        if self.handler is not None:
            return self.handler(request)
        with self._lock:
            return self._script.popleft() if self._script else Reply()

    # -- answering ----------------------------------------------------------------------------

    def answer(self, method: str, target: str, headers: Mapping[str, str], body: bytes) -> Answer:
        """Record one request and build its answer; ``target`` is the path plus any query string."""
        path, _, query = target.partition("?")
        try:
            parsed: Any = json.loads(body) if body else None
        except ValueError:
            parsed = None
        request = FakeRequest(
            method=method.upper(),
            path=path,
            headers={k.lower(): v for k, v in headers.items()},
            body=body,
            query=dict(parse_qsl(query)),
            json=parsed,
        )
        with self._lock:
            self.requests.append(request)
        route = next((r for r in _ROUTES if path.endswith(r[0])), None)
        if route is None or request.method != "POST":
            # Only Anthropic clients send anthropic-version; everyone else gets OpenAI's shape.
            shape = _anthropic.error if "anthropic-version" in request.headers else _openai.error
            if ":" in path.rsplit("/", 1)[-1]:  # a Google-style "resource:verb" path
                shape = _gemini.error
            return shape(Reply(status=404), f"Unknown route: {method} {path}")
        _, build, error, reply = (*route, self._next_reply(request))
        if reply.status >= 400:
            answer = error(reply, reply.error or _phrase(reply.status))
        else:
            answer = build(request, reply, _served_model(request, reply))
        if reply.encoding:
            from ._encoding import encode

            encode(answer, reply.encoding)
        return answer

    # -- front ends ---------------------------------------------------------------------------

    def start(self) -> str:
        """Start the loopback HTTP server and return its base URL (prefer `serve`)."""
        from ._server import LoopbackServer

        if self._server is not None:
            raise RuntimeError("FakeProvider is already serving at " + self._server.url)
        self._server = LoopbackServer(self)
        return self._server.url

    def stop(self) -> None:
        """Stop the loopback server, closing every open connection."""
        server, self._server = self._server, None
        if server is not None:
            server.close()

    @contextmanager
    def serve(self) -> Iterator[str]:
        """Serve on ``127.0.0.1`` (an ephemeral port) for the ``with`` block; yields the base URL.

        OpenAI clients want ``base_url + "/v1"``; Anthropic clients want ``base_url`` itself.
        """
        url = self.start()
        try:
            yield url
        finally:
            self.stop()

    @property
    def url(self) -> str:
        """The base URL while serving."""
        if self._server is None:
            raise RuntimeError("FakeProvider is not serving; use `with fake.serve() as url:`")
        return self._server.url

    def httpx_transport(self) -> Any:
        """An ``httpx.MockTransport`` that answers in memory, streams included, for sync and async clients."""
        from ._transport import make_transport

        return make_transport(self, "httpx")

    def httpx2_transport(self) -> Any:
        """The same as `httpx_transport`, for ``httpx2``, the HTTP client of the openai and anthropic SDKs."""
        from ._transport import make_transport

        return make_transport(self, "httpx2")


def _served_model(request: FakeRequest, reply: Reply) -> str:
    if reply.model:
        return reply.model
    found = _AZURE_DEPLOYMENT.search(request.path) or _VERTEX_MODEL.search(request.path)
    if found:
        return found.group(1)
    in_path = _bedrock.model_in_path(request.path) or _gemini.model_in_path(request.path)
    return in_path or request.model or "fake-model"


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"
