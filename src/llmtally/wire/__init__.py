"""Wire formats by endpoint: which parser reads a request's response, and whose price applies.

A request is recognised by its method and the end of its URL path, so the same parser serves the
provider's own host, Azure deployments, proxies and OpenAI-compatible servers.
"""

from __future__ import annotations

from ._base import NOTHING, Parser, Result, StreamParser, bad_count, loads, loads_body
from ._eventstream import EventStreamDecoder
from ._ndjson import NDJSONDecoder
from ._sse import SSEDecoder
from .anthropic import Messages, VertexMessages
from .bedrock import Converse, InvokeModel, is_bedrock
from .cohere import CohereChat, CohereEmbed
from .gemini import EmbedContent, GenerateContent, is_vertex_embedding
from .ollama import OllamaChat, OllamaEmbed, OllamaGenerate
from .openai import ChatCompletions, Completions, Embeddings, Responses

__all__ = [
    "NOTHING",
    "EventStreamDecoder",
    "NDJSONDecoder",
    "Parser",
    "Result",
    "SSEDecoder",
    "StreamParser",
    "bad_count",
    "loads",
    "loads_body",
    "looks_like_llm",
    "provider_for_host",
    "route",
]

_CHAT = ChatCompletions()
_COMPLETIONS = Completions()
_EMBEDDINGS = Embeddings()
_RESPONSES = Responses()
_MESSAGES = Messages()
_VERTEX_MESSAGES = VertexMessages()
_GEMINI = GenerateContent()
_GEMINI_EMBED = EmbedContent()
_OLLAMA_CHAT = OllamaChat()
_OLLAMA_GENERATE = OllamaGenerate()
_OLLAMA_EMBED = OllamaEmbed()
_COHERE_CHAT = CohereChat()
_COHERE_EMBED = CohereEmbed()
_CONVERSE = Converse()
_INVOKE = InvokeModel()

# Longest suffix first: "/chat/completions" must win over "/completions".
_SUFFIXES: tuple[tuple[str, Parser], ...] = (
    ("/chat/completions", _CHAT),
    ("/completions", _COMPLETIONS),
    ("/embeddings", _EMBEDDINGS),
    ("/responses", _RESPONSES),
    ("/messages", _MESSAGES),
    (":generateContent", _GEMINI),
    (":streamGenerateContent", _GEMINI),
    (":embedContent", _GEMINI_EMBED),
    (":batchEmbedContents", _GEMINI_EMBED),
    ("/api/chat", _OLLAMA_CHAT),
    ("/api/generate", _OLLAMA_GENERATE),
    ("/api/embed", _OLLAMA_EMBED),
    ("/api/embeddings", _OLLAMA_EMBED),
    ("/v2/chat", _COHERE_CHAT),
    ("/v2/embed", _COHERE_EMBED),
)

_HOSTS = {
    "api.openai.com": "openai",
    "api.anthropic.com": "anthropic",
    "api.cohere.com": "cohere",
    "api.cohere.ai": "cohere",
    "generativelanguage.googleapis.com": "google",
    "aiplatform.googleapis.com": "google",
}


def route(method: str, path: str) -> Parser | None:
    """The parser for a request, or ``None`` if it is not a metered LLM call."""
    if method != "POST":
        return None
    path = path.rstrip("/")
    for suffix, parser in _SUFFIXES:
        if path.endswith(suffix):
            return parser
    if "/publishers/anthropic/" in path and path.endswith((":rawPredict", ":streamRawPredict")):
        return _VERTEX_MESSAGES  # Claude on Vertex AI
    if path.endswith(":predict") and is_vertex_embedding(path):
        return _GEMINI_EMBED
    if is_bedrock(path):
        return _CONVERSE if "/converse" in path[path.rfind("/") :] else _INVOKE
    return None


def provider_for_host(host: str) -> str | None:
    """The catalogue's provider id for a well-known API host, else ``None`` (price by URL, then model)."""
    provider = _HOSTS.get(host)
    if provider is None:
        if host.endswith(".openai.azure.com") or host.endswith(".cognitiveservices.azure.com"):
            provider = "azure"
        elif host.endswith("-aiplatform.googleapis.com"):  # Vertex AI's regional hosts
            provider = "google"
        elif host.startswith("bedrock-runtime") and host.endswith(".amazonaws.com"):
            provider = "aws"  # bedrock-runtime[-fips].<region>.amazonaws.com
    return provider


#: Hosts that serve LLM APIs (exact, or a suffix when it starts with a dot).
_LLM_HOSTS = (
    "api.openai.com",
    "api.anthropic.com",
    "generativelanguage.googleapis.com",
    "aiplatform.googleapis.com",
    ".aiplatform.googleapis.com",
    ".amazonaws.com",  # bedrock-runtime.<region>.amazonaws.com (checked with "bedrock" below)
    "api.cohere.com",
    "api.cohere.ai",
    "api.groq.com",
    "openrouter.ai",
    "api.mistral.ai",
    "api.deepseek.com",
    "api.together.xyz",
    "api.fireworks.ai",
    "api.x.ai",
    ".openai.azure.com",
    ".cognitiveservices.azure.com",
    ".services.ai.azure.com",
)
#: Path endings of LLM APIs that no parser here reads (Vertex's other publishers and models, Cohere's
#: v1, Bedrock's async invoke).
_LLM_PATHS = (
    ":rawpredict",
    ":streamrawpredict",
    ":predict",
    "/async-invoke",
    "/v1/chat",
)


def looks_like_llm(host: str, path: str) -> bool:
    """Whether a POST no parser reads is still, by its host or its path, an LLM API call."""
    host = host.lower()
    path = path.rstrip("/").lower()
    if path.endswith(_LLM_PATHS):
        return True
    for known in _LLM_HOSTS:
        if host == known or (known[0] == "." and host.endswith(known)):
            return known != ".amazonaws.com" or host.startswith("bedrock-runtime")
    return False
