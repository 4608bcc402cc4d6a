"""Each wire parser on bodies and streams of the shapes the providers send."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import ClassVar

from llmtally._core.usage import Usage
from llmtally.wire import SSEDecoder, provider_for_host, route
from llmtally.wire.anthropic import Messages
from llmtally.wire.gemini import EmbedContent, GenerateContent
from llmtally.wire.openai import ChatCompletions, Completions, Embeddings, Responses


def run_stream(parser, raw: bytes):
    sp = parser.stream()
    dec = SSEDecoder()
    for name, data in dec.feed(raw) + dec.close():
        sp.event(name, data)
    return sp.result


def sse(*objs, event_names=False) -> bytes:
    out = b""
    for o in objs:
        if isinstance(o, bytes):
            out += b"data: " + o + b"\n\n"
            continue
        if event_names:
            out += f"event: {o['type']}\n".encode()
        out += b"data: " + json.dumps(o).encode() + b"\n\n"
    return out


class TestStreamText:
    """The text a stream keeps for an offline count is bounded, whatever the stream's length."""

    def test_joined_and_capped(self) -> None:
        from llmtally.wire._base import Result, Text

        text = Result().text
        assert isinstance(text, Text)
        for i in range(1000):
            text.append(str(i % 10))
        assert "".join(text) == "0123456789" * 100 and len(text) < 300  # pieces joined as they pile up
        big = Text()
        piece = "x" * 1000
        for _ in range(200):
            big.append(piece)
        assert big.kept == Text.CAP + 1000 - Text.CAP % 1000 and big.dropped == 200 * 1000 - big.kept
        big.extend(["abc", "de"])
        assert big.dropped == 200 * 1000 - big.kept + 5


class TestEventStream:
    """AWS event streams: deltas sliced by their header bytes, everything else through botocore."""

    FRAMES = (
        ({":event-type": "messageStart", ":message-type": "event"}, b'{"role":"assistant"}'),
        ({":event-type": "contentBlockDelta", ":content-type": "application/json", ":message-type": "event"},
         b'{"delta":{"text":"Hel"}}'),
        ({":message-type": "event", ":event-type": "contentBlockDelta"}, b'{"delta":{"text":"lo"}}'),
        ({":event-type": "chunk", ":message-type": "event"}, b'{"bytes":"e30="}'),
        ({":event-type": "metadata", ":message-type": "event"}, b'{"usage":{"inputTokens":3}}'),
        ({":message-type": "exception", ":exception-type": "throttlingException"}, b'{"message":"slow"}'),
        # An exception whose payload happens to hold a delta header's bytes is still an exception.
        ({":message-type": "exception", ":exception-type": "x", "note": "\x0b:event-type\x07\x00\x05chunk"},
         b"{}"),
    )  # fmt: skip
    EXPECTED = (
        ("messageStart", b'{"role":"assistant"}'),
        ("contentBlockDelta", b'{"delta":{"text":"Hel"}}'),
        ("contentBlockDelta", b'{"delta":{"text":"lo"}}'),
        ("chunk", b'{"bytes":"e30="}'),
        ("metadata", b'{"usage":{"inputTokens":3}}'),
        ("!throttlingException", b'{"message":"slow"}'),
        ("!x", b"{}"),
    )

    def test_cut_anywhere(self) -> None:
        from llmtally.testing._bedrock import event_frame
        from llmtally.wire import EventStreamDecoder

        raw = b"".join(event_frame(h, p) for h, p in self.FRAMES)
        for step in (1, 7, 64, len(raw)):
            dec = EventStreamDecoder()
            got = [e for i in range(0, len(raw), step) for e in dec.feed(raw[i : i + step])]
            assert got == list(self.EXPECTED), step

    def test_garbage_is_refused_by_botocore(self) -> None:
        import pytest
        from botocore.eventstream import ParserError

        from llmtally.wire import EventStreamDecoder

        with pytest.raises(ParserError):
            EventStreamDecoder().feed(b"\xff" * 40)
        assert EventStreamDecoder().feed(b"\x00\x00") == []  # too short to say: wait for more


class TestRoute:
    """Requests are recognised by method and path suffix, on any host."""

    def test_paths(self) -> None:
        assert isinstance(route("POST", "/v1/chat/completions"), ChatCompletions)
        assert isinstance(route("POST", "/openai/deployments/d/chat/completions"), ChatCompletions)
        assert type(route("POST", "/v1/completions")) is Completions
        assert isinstance(route("POST", "/v1/embeddings"), Embeddings)
        assert isinstance(route("POST", "/v1/responses"), Responses)
        assert isinstance(route("POST", "/v1/messages"), Messages)

    def test_not_metered(self) -> None:
        assert route("GET", "/v1/chat/completions") is None
        assert route("POST", "/v1/messages/count_tokens") is None
        assert route("POST", "/v1/files") is None
        assert route("GET", "/v1/responses/resp_1") is None

    def test_hosts(self) -> None:
        assert provider_for_host("api.openai.com") == "openai"
        assert provider_for_host("api.anthropic.com") == "anthropic"
        assert provider_for_host("myres.openai.azure.com") == "azure"
        assert provider_for_host("127.0.0.1") is None


class TestOpenAIChat:
    """Chat Completions: cached and reasoning tokens are parts of prompt and completion."""

    BODY: ClassVar[dict] = {
        "id": "chatcmpl-abc",
        "object": "chat.completion",
        "model": "o3-2025-04-16",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": 1200,
            "completion_tokens": 300,
            "total_tokens": 1500,
            "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 256, "audio_tokens": 0},
        },
    }

    def test_body(self) -> None:
        r = ChatCompletions().body(self.BODY)
        assert r.model == "o3-2025-04-16"
        assert r.request_id == "chatcmpl-abc"
        assert r.usage == Usage(1200, 300, 1024, 0, 256)

    def test_fast_body_agrees_with_full_parse(self) -> None:
        for indent in (None, 2):
            raw = json.dumps(self.BODY, indent=indent).encode()
            fast = ChatCompletions().fast_body(raw)
            assert fast == ChatCompletions().body(self.BODY)

    def test_fast_body_ignores_usage_inside_strings(self) -> None:
        body = {
            "id": "x",
            "model": "gpt-4o",
            "choices": [
                {
                    "message": {
                        "content": 'say "usage": {"prompt_tokens": 999}',
                        "tool_calls": [{"function": {"arguments": '{"usage": {"prompt_tokens": 5}}'}}],
                    }
                }
            ],
            "usage": {"prompt_tokens": 3, "completion_tokens": 4},
        }
        assert ChatCompletions().fast_body(json.dumps(body).encode()).usage == Usage(3, 4)
        assert ChatCompletions().fast_body(b'{"model": "m", "usage": null}') is None

    def test_body_without_details(self) -> None:
        body = {"model": "llama3", "usage": {"prompt_tokens": 5, "completion_tokens": 7}}
        assert ChatCompletions().body(body).usage == Usage(5, 7)

    def test_deepseek_cache_hits(self) -> None:
        body = {
            "model": "deepseek-chat",
            "usage": {
                "prompt_tokens": 100,
                "completion_tokens": 7,
                "prompt_cache_hit_tokens": 64,
                "prompt_cache_miss_tokens": 36,
            },
        }
        assert ChatCompletions().body(body).usage == Usage(100, 7, 64)

    def test_no_usage_keeps_text_for_estimate(self) -> None:
        r = ChatCompletions().body({"model": "m", "choices": [{"message": {"content": "hello there"}}]})
        assert r.usage is None and r.text == ["hello there"]

    def test_garbage_counts(self) -> None:
        body = {
            "model": 5,
            "usage": {"prompt_tokens": "x", "completion_tokens": -3, "prompt_tokens_details": 7},
        }
        r = ChatCompletions().body(body)
        assert r.model is None and r.usage == Usage(0, 0)

    def test_stream_with_usage(self) -> None:
        chunk = {"id": "c1", "object": "chat.completion.chunk", "model": "gpt-4o-2024-08-06", "usage": None}
        raw = sse(
            {**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
            {**chunk, "choices": [{"index": 0, "delta": {"content": "Hel"}}]},
            {**chunk, "choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": "stop"}]},
            {
                **chunk,
                "choices": [],
                "usage": {
                    "prompt_tokens": 9,
                    "completion_tokens": 2,
                    "total_tokens": 11,
                    "prompt_tokens_details": {"cached_tokens": 0},
                },
            },
            b"[DONE]",
        )
        r = run_stream(ChatCompletions(), raw)
        assert r.model == "gpt-4o-2024-08-06"
        assert r.usage == Usage(9, 2)
        assert "".join(r.text) == "Hello"

    def test_skims_chunks_when_usage_was_requested(self) -> None:
        chunk = {"id": "c1", "model": "gpt-4o", "usage": None}
        content = [{**chunk, "choices": [{"index": 0, "delta": {"content": w}}]} for w in ("a", "b", "c")]
        sp = ChatCompletions().stream(b'{"stream": true, "stream_options": {"include_usage": true}}')
        dec = SSEDecoder()
        for name, data in dec.feed(sse(*content, b"[DONE]")):
            sp.event(name, data)
        # No usage came after all: the output is one token per chunk, the text was never parsed.
        assert sp.result.usage is None and sp.result.text == [] and sp.chunks == 3
        for name, data in dec.feed(
            sse({**chunk, "choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 3}})
        ):
            sp.event(name, data)
        assert sp.result.usage == Usage(4, 3)

    def test_stream_tool_call_text_collected(self) -> None:
        chunk = {"id": "c1", "model": "gpt-4"}
        raw = sse(
            {
                **chunk,
                "choices": [
                    {
                        "index": 0,
                        "delta": {
                            "tool_calls": [
                                {
                                    "index": 0,
                                    "id": "call_1",
                                    "type": "function",
                                    "function": {"name": "search", "arguments": ""},
                                }
                            ]
                        },
                    }
                ],
            },
            {
                **chunk,
                "choices": [
                    {
                        "index": 0,
                        "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"q": 1}'}}]},
                    }
                ],
            },
            b"[DONE]",
        )
        r = run_stream(ChatCompletions(), raw)
        assert r.usage is None
        assert "".join(r.text) == 'search{"q": 1}'

    def test_legacy_completions_stream(self) -> None:
        raw = sse(
            {"id": "cmpl", "model": "gpt-3.5-turbo-instruct", "choices": [{"text": "abc", "index": 0}]},
            {
                "id": "cmpl",
                "model": "gpt-3.5-turbo-instruct",
                "choices": [],
                "usage": {"prompt_tokens": 3, "completion_tokens": 1},
            },
            b"[DONE]",
        )
        r = run_stream(Completions(), raw)
        assert r.text == ["abc"] and r.usage == Usage(3, 1)


class TestEmbeddings:
    """Embeddings have input tokens only."""

    def test_body(self) -> None:
        body = {
            "object": "list",
            "data": [{"object": "embedding", "index": 0, "embedding": [0.1] * 64}],
            "model": "text-embedding-3-small",
            "usage": {"prompt_tokens": 8, "total_tokens": 8},
        }
        r = Embeddings().body(body)
        assert r.model == "text-embedding-3-small" and r.usage == Usage(8, 0)
        assert Embeddings().fast_body(json.dumps(body).encode()) == r


class TestResponses:
    """Responses API: input/output tokens with details; streams settle on response.completed."""

    USAGE: ClassVar[dict] = {
        "input_tokens": 2000,
        "input_tokens_details": {"cached_tokens": 1536},
        "output_tokens": 500,
        "output_tokens_details": {"reasoning_tokens": 384},
        "total_tokens": 2500,
    }

    def test_body(self) -> None:
        r = Responses().body({"id": "resp_1", "object": "response", "model": "gpt-5", "usage": self.USAGE})
        assert r.usage == Usage(2000, 500, 1536, 0, 384) and r.model == "gpt-5" and r.request_id == "resp_1"

    def test_other_objects_on_the_path_are_not_calls(self) -> None:
        assert Responses().body({"object": "list", "data": []}) is None

    def test_stream(self) -> None:
        resp = {
            "id": "resp_1",
            "object": "response",
            "model": "gpt-5",
            "status": "in_progress",
            "usage": None,
        }
        raw = sse(
            {"type": "response.created", "sequence_number": 0, "response": resp},
            {"type": "response.output_text.delta", "sequence_number": 1, "delta": "Hi"},
            {"type": "response.output_text.delta", "sequence_number": 2, "delta": " there"},
            {
                "type": "response.completed",
                "sequence_number": 3,
                "response": {**resp, "status": "completed", "usage": self.USAGE},
            },
            event_names=True,
        )
        r = run_stream(Responses(), raw)
        assert r.usage == Usage(2000, 500, 1536, 0, 384)
        assert r.model == "gpt-5"


class TestAnthropic:
    """Anthropic input_tokens exclude cache reads and writes; llmtally adds them back."""

    def test_body(self) -> None:
        body = {
            "id": "msg_1",
            "type": "message",
            "model": "claude-sonnet-4-5-20250929",
            "usage": {
                "input_tokens": 21,
                "cache_creation_input_tokens": 1000,
                "cache_read_input_tokens": 3000,
                "output_tokens": 393,
                "cache_creation": {"ephemeral_5m_input_tokens": 400, "ephemeral_1h_input_tokens": 600},
            },
        }
        r = Messages().body(body)
        assert r.usage == Usage(4021, 393, 3000, 1000, 0, 600)
        assert r.model == "claude-sonnet-4-5-20250929"

    def test_openai_thread_messages_are_not_calls(self) -> None:
        assert Messages().body({"id": "msg_1", "object": "thread.message", "role": "user"}) is None

    def test_claude_on_vertex(self) -> None:
        from llmtally import cost_of
        from llmtally.wire.anthropic import VertexMessages

        base = "/v1/projects/p/locations/us-east5/publishers/anthropic/models/claude-sonnet-4-5@20250929"
        for verb in (":rawPredict", ":streamRawPredict"):
            parser = route("POST", base + verb)
            assert isinstance(parser, VertexMessages)
            assert parser.model_in_path(base + verb) == "claude-sonnet-4-5@20250929"
        # Other publishers' rawPredict (Mistral, Llama...) is not Anthropic's format.
        assert route("POST", base.replace("anthropic", "mistralai") + ":rawPredict") is None
        # Vertex's host is Google's; the catalogue prices Claude there as Anthropic does.
        assert provider_for_host("us-east5-aiplatform.googleapis.com") == "google"
        google = cost_of(
            "claude-sonnet-4-5@20250929", provider="google", input_tokens=1000, output_tokens=100
        )
        direct = cost_of(
            "claude-sonnet-4-5-20250929", provider="anthropic", input_tokens=1000, output_tokens=100
        )
        assert google == direct == Decimal("0.0045")
        assert Messages().body({"type": "error", "error": {}}) is None

    def test_stream_delta_wins(self) -> None:
        raw = sse(
            {
                "type": "message_start",
                "message": {
                    "id": "msg_1",
                    "type": "message",
                    "model": "claude-3-5-haiku-20241022",
                    "usage": {
                        "input_tokens": 25,
                        "cache_read_input_tokens": 100,
                        "cache_creation_input_tokens": 0,
                        "output_tokens": 1,
                    },
                },
            },
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            {"type": "ping"},
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}},
            {"type": "content_block_stop", "index": 0},
            {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 15}},
            {"type": "message_stop"},
            event_names=True,
        )
        r = run_stream(Messages(), raw)
        assert r.usage == Usage(125, 15, 100, 0)
        assert r.model == "claude-3-5-haiku-20241022" and r.request_id == "msg_1"
        assert r.text == []  # dropped once the final count arrived

    def test_stream_cut_before_final_count(self) -> None:
        raw = sse(
            {
                "type": "message_start",
                "message": {"model": "claude-opus-4-1", "usage": {"input_tokens": 9, "output_tokens": 1}},
            },
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello wor"}},
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "ld, friend"},
            },
            event_names=True,
        )
        sp = Messages().stream()
        dec = SSEDecoder()
        for name, data in dec.feed(raw):
            sp.event(name, data)
        assert not sp.complete
        assert sp.result.usage == Usage(9, 1) and "".join(sp.result.text) == "Hello world, friend"

    def test_stream_delta_with_input_counts(self) -> None:
        # Newer API versions repeat cumulative input counts in message_delta.
        raw = sse(
            {
                "type": "message_start",
                "message": {"model": "claude-opus-4-1", "usage": {"input_tokens": 10, "output_tokens": 1}},
            },
            {
                "type": "message_delta",
                "usage": {"input_tokens": 12, "cache_read_input_tokens": 5, "output_tokens": 40},
            },
            event_names=True,
        )
        assert run_stream(Messages(), raw).usage == Usage(17, 40, 5, 0)


GEMINI_BODY = {
    "candidates": [{"content": {"role": "model", "parts": [{"text": "Paris."}]}, "finishReason": "STOP"}],
    "usageMetadata": {
        "promptTokenCount": 1200,
        "cachedContentTokenCount": 1000,
        "candidatesTokenCount": 80,
        "thoughtsTokenCount": 300,
        "toolUsePromptTokenCount": 40,
        "totalTokenCount": 1620,
    },
    "modelVersion": "gemini-2.5-flash",
    "responseId": "resp-1",
}


class TestGemini:
    """Gemini API and Vertex AI generateContent: usage normalised, model from the URL."""

    def test_routes_and_model_in_path(self) -> None:
        from llmtally.wire.gemini import model_in_path

        assert isinstance(route("POST", "/v1beta/models/gemini-2.5-flash:generateContent"), GenerateContent)
        assert isinstance(
            route("POST", "/v1beta/models/gemini-2.5-flash:streamGenerateContent"), GenerateContent
        )
        assert model_in_path("/v1beta/models/gemini-2.5-flash:generateContent") == "gemini-2.5-flash"
        vertex = (
            "/v1/projects/p/locations/us-central1/publishers/google/models/gemini-2.5-pro:generateContent"
        )
        assert model_in_path(vertex) == "gemini-2.5-pro"
        assert provider_for_host("generativelanguage.googleapis.com") == "google"
        assert provider_for_host("us-central1-aiplatform.googleapis.com") == "google"

    def test_body_in_our_convention(self) -> None:
        r = GenerateContent().body(GEMINI_BODY)
        assert r is not None and r.model == "gemini-2.5-flash" and r.request_id == "resp-1"
        # prompt includes tool-use prompt tokens; completion includes thoughts.
        assert r.usage == Usage(1240, 380, 1000, 0, 300)

    def test_same_as_genai_prices_extractor(self) -> None:
        import genai_prices

        from llmtally import cost_of

        extracted = genai_prices.extract_usage(GEMINI_BODY, provider_id="google")
        u = extracted.usage
        r = GenerateContent().body(GEMINI_BODY)
        assert r is not None and r.usage is not None
        assert (u.input_tokens, u.output_tokens, u.cache_read_tokens, u.output_reasoning_tokens) == (
            r.usage.prompt_tokens,
            r.usage.completion_tokens,
            r.usage.cached_tokens,
            r.usage.reasoning_tokens,
        )
        theirs = genai_prices.calc_price(u, "gemini-2.5-flash", provider_id="google").total_price
        ours = cost_of(
            "gemini-2.5-flash",
            provider="google",
            input_tokens=r.usage.prompt_tokens,
            output_tokens=r.usage.completion_tokens,
            cached_tokens=r.usage.cached_tokens,
            reasoning_tokens=r.usage.reasoning_tokens,
        )
        assert ours == theirs

    def test_streams_sse_and_json_array(self) -> None:
        chunks = [
            {"candidates": [{"content": {"parts": [{"text": "Par"}]}}], "modelVersion": "gemini-2.5-flash",
             "usageMetadata": {"promptTokenCount": 12, "totalTokenCount": 12}},
            {"candidates": [{"content": {"parts": [{"text": "is."}]}}], "modelVersion": "gemini-2.5-flash",
             "usageMetadata": {"promptTokenCount": 12, "candidatesTokenCount": 3, "thoughtsTokenCount": 5}},
        ]  # fmt: skip
        r = run_stream(GenerateContent(), sse(*chunks))
        assert r.model == "gemini-2.5-flash" and r.usage == Usage(12, 8, 0, 0, 5)
        whole = GenerateContent().body(chunks)  # a stream without ?alt=sse: one JSON array
        assert whole is not None and whole.usage == Usage(12, 8, 0, 0, 5)

    def test_request_text(self) -> None:
        texts, count = GenerateContent().request_text(
            {
                "systemInstruction": {"parts": [{"text": "Be brief."}]},
                "contents": [{"role": "user", "parts": [{"text": "Capital of France?"}, {"inlineData": {}}]}],
            }
        )
        assert texts == ["Be brief.", "Capital of France?"] and count == 2

    def test_garbage(self) -> None:
        p = GenerateContent()
        for obj in ({}, {"usageMetadata": None}, {"usageMetadata": {"promptTokenCount": "x"}}, [1, None]):
            r = p.body(obj)  # type: ignore[arg-type]
            assert r is not None

    def test_embeddings(self) -> None:
        p = EmbedContent()
        batch = {
            "embeddings": [{"values": [0.1]}, {"values": [0.2]}],
            "usageMetadata": {"promptTokenCount": 9},
        }
        predict = {
            "predictions": [
                {"embeddings": {"values": [0.1], "statistics": {"token_count": 4, "truncated": False}}},
                {"embeddings": {"values": [0.2], "statistics": {"token_count": 6.0, "truncated": False}}},
            ],
            "metadata": {"billableCharacterCount": 40},
        }
        assert (r := p.body(batch)) is not None and r.usage == Usage(9, 0)
        assert (r := p.body(predict)) is not None and r.usage == Usage(10, 0)
        # No usage (older Gemini API models), or a prediction without its count: counted offline.
        for unknown in (
            {"embedding": {"values": [0.1]}},
            {"predictions": [{"embeddings": {}}]},
            {},
            {"embeddings": [], "usageMetadata": {}},
            {"embeddings": [], "usageMetadata": {"promptTokenCount": "4"}},
        ):
            assert (r := p.body(unknown)) is not None and r.usage is None
        assert p.body([1]) is None  # type: ignore[arg-type]
        texts, _ = p.request_text(
            {"requests": [{"content": {"parts": [{"text": "a"}]}}, {"content": {"parts": [{"text": "b"}]}}]}
        )
        assert texts == ["a", "b"]
        assert p.request_text({"instances": [{"content": "c"}]})[0] == ["c"]
        assert p.model_in_path("/v1beta/models/gemini-embedding-001:embedContent") == "gemini-embedding-001"


class TestOllama:
    """Ollama's native API: counts on the last object, NDJSON streams, other APIs on its paths left out."""

    def test_routes(self) -> None:
        from llmtally.wire.ollama import OllamaChat, OllamaEmbed, OllamaGenerate

        assert type(route("POST", "/api/chat")) is OllamaChat
        assert type(route("POST", "/api/generate")) is OllamaGenerate
        assert type(route("POST", "/api/embed")) is OllamaEmbed

    def test_bodies(self) -> None:
        from llmtally.wire.ollama import OllamaChat, OllamaEmbed, OllamaGenerate

        chat = {"model": "llama3.2", "message": {"role": "assistant", "content": "Hi!"}, "done": True,
                "prompt_eval_count": 26, "eval_count": 290}  # fmt: skip
        r = OllamaChat().body(chat)
        assert r is not None and (r.model, r.usage) == ("llama3.2", Usage(26, 290))
        gen = OllamaGenerate().body({"model": "qwen3", "response": "x", "done": True, "prompt_eval_count": 5})
        assert gen is not None and gen.usage == Usage(5, 0)
        emb = OllamaEmbed().body({"model": "nomic", "embeddings": [[0.1]], "prompt_eval_count": 8})
        assert emb is not None and emb.usage == Usage(8, 0)

    def test_other_apis_on_the_same_paths_are_not_calls(self) -> None:
        from llmtally.wire.ollama import OllamaChat

        assert OllamaChat().body({"reply": "hello from some chat app"}) is None
        stream = OllamaChat().stream()
        stream.event("", b'{"reply": "hi"}')
        assert stream.foreign  # type: ignore[attr-defined]

    def test_ndjson_stream(self) -> None:
        from llmtally.wire import NDJSONDecoder
        from llmtally.wire.ollama import OllamaChat

        lines = [
            b'{"model":"llama3.2","message":{"role":"assistant","content":"Hel"},"done":false}\n',
            b'{"model":"llama3.2","message":{"role":"assistant","content":"lo"},"done":false}\n',
            b'{"model":"llama3.2","message":{"role":"assistant","content":""},"done":true,'
            b'"prompt_eval_count":26,"eval_count":2}',
        ]
        raw = b"".join(lines)
        dec, parser = NDJSONDecoder(), OllamaChat().stream()
        for i in range(0, len(raw), 7):  # cut anywhere, lines rejoined
            for name, data in dec.feed(raw[i : i + 7]):
                parser.event(name, data)
        for name, data in dec.close():  # the last line had no newline
            parser.event(name, data)
        assert parser.result.usage == Usage(26, 2) and not parser.foreign  # type: ignore[attr-defined]


class TestOpenAICompatibleExtras:
    """Fields OpenAI-compatible providers add: cache writes (OpenRouter, Azure, Responses), Groq's x_groq."""

    def test_reported_cost(self) -> None:
        from llmtally.wire.openai import reported_cost

        usage = {"prompt_tokens": 10, "completion_tokens": 2, "cost": 0.00010815}
        body = {"id": "gen-1", "model": "openai/gpt-4o", "usage": usage}
        raw = json.dumps(body).encode()
        assert (r := ChatCompletions().body(body)) is not None and r.cost == Decimal("0.00010815")
        assert (r := ChatCompletions().fast_body(raw)) is not None and r.cost == Decimal("0.00010815")
        chunk = {"id": "gen-1", "model": "openai/gpt-4o", "choices": [], "usage": usage}
        assert run_stream(ChatCompletions(), sse(chunk)).cost == Decimal("0.00010815")
        assert reported_cost({"cost": 0}) == 0 and reported_cost({"cost": 2}) == Decimal(2)
        # Not a figure: the call is priced by the catalogue as usual.
        assert str(reported_cost({"cost": -0.0})) == "0" and reported_cost({"cost": 99_999.5}) is not None
        for bad in ("0.1", None, True, -0.5, float("nan"), float("inf"), [1], {"usd": 1}, 1e7, 2**64):
            assert reported_cost({"cost": bad}) is None, bad
        assert reported_cost(None) is None and reported_cost([]) is None
        assert (r := ChatCompletions().body({"usage": {"prompt_tokens": 1}})) is not None and r.cost is None

    def test_openrouter_cache_writes_priced_as_genai_prices(self) -> None:
        import genai_prices

        from llmtally import cost_of

        body = {
            "id": "gen-1",
            "model": "anthropic/claude-sonnet-4.5",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}],
            "usage": {
                "prompt_tokens": 10_000,
                "completion_tokens": 300,
                "prompt_tokens_details": {"cached_tokens": 2_000, "cache_write_tokens": 4_800},
            },
        }
        r = ChatCompletions().body(body)
        assert r is not None and r.usage == Usage(10_000, 300, 2_000, 4_800, 0)
        assert ChatCompletions().fast_body(json.dumps(body).encode()).usage == r.usage  # type: ignore[union-attr]
        u = genai_prices.extract_usage(body, provider_id="openrouter", api_flavor="chat").usage
        assert (u.input_tokens, u.cache_read_tokens, u.cache_write_tokens) == (10_000, 2_000, 4_800)
        theirs = genai_prices.calc_price(
            u, "anthropic/claude-sonnet-4.5", provider_id="openrouter"
        ).total_price
        ours = cost_of(
            "anthropic/claude-sonnet-4.5",
            provider="openrouter",
            input_tokens=10_000,
            output_tokens=300,
            cached_tokens=2_000,
            cache_write_tokens=4_800,
        )
        assert ours == theirs

    def test_responses_cache_writes(self) -> None:
        body = {
            "object": "response",
            "model": "gpt-5",
            "usage": {"input_tokens": 20_000, "output_tokens": 50,
                      "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 16_000}},
        }  # fmt: skip
        r = Responses().body(body)
        assert r is not None and r.usage == Usage(20_000, 50, 0, 16_000, 0)

    def test_cache_parts_never_exceed_the_prompt(self) -> None:
        u = {"prompt_tokens": 100, "completion_tokens": 1,
             "prompt_tokens_details": {"cached_tokens": 80, "cache_write_tokens": 500}}  # fmt: skip
        r = ChatCompletions().body({"model": "m", "usage": u})
        assert (
            r is not None
            and r.usage is not None
            and r.usage.cached_tokens + r.usage.cache_write_tokens == 100
        )

    def test_groq_x_groq_usage_in_default_streams(self) -> None:
        chunks = [
            {"id": "c", "model": "llama-3.3-70b-versatile",
             "choices": [{"index": 0, "delta": {"content": "Hi"}}]},
            {"id": "c", "model": "llama-3.3-70b-versatile",
             "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
             "x_groq": {"id": "req_1", "usage": {"prompt_tokens": 2900, "completion_tokens": 324,
                                                 "prompt_tokens_details": {"cached_tokens": 162},
                                                 "completion_tokens_details": {"reasoning_tokens": 100}}}},
            b"[DONE]",
        ]  # fmt: skip
        r = run_stream(ChatCompletions(), sse(*chunks))
        assert r.usage == Usage(2900, 324, 162, 0, 100)


class TestCohere:
    """Cohere v2: the billed units counted (what Cohere bills), streams' usage from message-end."""

    BODY: ClassVar[dict] = {
        "id": "c-1",
        "message": {"role": "assistant", "content": [{"type": "text", "text": "Hi"}]},
        "finish_reason": "COMPLETE",
        "usage": {"billed_units": {"input_tokens": 17, "output_tokens": 65},
                  "tokens": {"input_tokens": 226, "output_tokens": 65}, "cached_tokens": 0},
    }  # fmt: skip

    def test_body_counts_billed_units_as_genai_prices(self) -> None:
        import genai_prices

        from llmtally import cost_of
        from llmtally.wire.cohere import CohereChat

        r = CohereChat().body(self.BODY)
        assert r is not None and r.usage == Usage(17, 65) and r.request_id == "c-1"
        u = genai_prices.extract_usage({**self.BODY, "model": "command-r-plus"}, provider_id="cohere").usage
        assert (u.input_tokens, u.output_tokens) == (17, 65)
        theirs = genai_prices.calc_price(u, "command-r-plus", provider_id="cohere").total_price
        assert cost_of("command-r-plus", provider="cohere", input_tokens=17, output_tokens=65) == theirs

    def test_stream_and_foreign(self) -> None:
        from llmtally.wire.cohere import CohereChat

        events = [
            {"type": "message-start", "id": "c-2"},
            {"type": "content-delta", "index": 0, "delta": {"message": {"content": {"text": "Hi"}}}},
            {"type": "message-end", "delta": {"finish_reason": "COMPLETE", "usage": self.BODY["usage"]}},
        ]
        r = run_stream(CohereChat(), sse(*events, event_names=True))
        assert r.usage == Usage(17, 65) and r.request_id == "c-2" and r.text == []
        assert CohereChat().body({"answer": "from another API"}) is None
        other = CohereChat().stream()
        other.event("", b'{"answer": "x"}')
        assert other.foreign  # type: ignore[attr-defined]

    def test_embed(self) -> None:
        from llmtally.wire.cohere import CohereEmbed

        body = {"id": "e", "embeddings": {"float": [[0.1]]}, "meta": {"billed_units": {"input_tokens": 8}}}
        r = CohereEmbed().body(body)
        assert r is not None and r.usage == Usage(8, 0)
