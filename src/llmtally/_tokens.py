"""Offline token counts, for responses that carry no usage (and for estimates before a call).

OpenAI models are counted with their real BPE (o200k for the GPT-4o / GPT-4.1 / GPT-5 / o-series
families, cl100k for GPT-4 and GPT-3.5), Llama 3 and Qwen with theirs, via quicktok, which ships the
vocabularies (no download) and matches tiktoken token for token. Other models (Claude, Gemini, ...)
have no public offline tokenizer; they are approximated with o200k and the result is marked
estimated like every offline count.

Chat requests add the framing tokens OpenAI documents: 3 per message, 1 more per ``name``, and 3
that prime the reply.
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["count", "encoding_name", "estimate_chat_input", "names_in"]

log = logging.getLogger("llmtally")

# (prefix, encoding): longest match wins; the model name is lower-cased and an "org/" prefix dropped.
_PREFIX_LIST = (
    ("gpt-4o", "o200k_base"),
    ("chatgpt-4o", "o200k_base"),
    ("gpt-4.1", "o200k_base"),
    ("gpt-4.5", "o200k_base"),
    ("gpt-5", "o200k_base"),
    ("gpt-oss", "o200k_harmony"),
    ("o1", "o200k_base"),
    ("o3", "o200k_base"),
    ("o4", "o200k_base"),
    ("gpt-4", "cl100k_base"),
    ("gpt-3.5", "cl100k_base"),
    ("gpt-35", "cl100k_base"),
    ("text-embedding-3", "cl100k_base"),
    ("text-embedding-ada", "cl100k_base"),
    ("llama-3", "llama3"),
    ("llama3", "llama3"),
    ("meta-llama-3", "llama3"),
    ("qwen3", "qwen3"),
    ("qwen2.5", "qwen3"),
    ("qwen-2.5", "qwen3"),
)
_PREFIXES: tuple[tuple[str, str], ...] = tuple(sorted(_PREFIX_LIST, key=lambda p: -len(p[0])))
#: The approximation for models without a public offline tokenizer.
FALLBACK = "o200k_base"

_encodings: dict[str, Any] = {}


def encoding_name(model: str | None) -> tuple[str, bool]:
    """(encoding, exact): the model's own tokenizer, or the fallback approximation."""
    if model:
        m = model.lower().rsplit("/", 1)[-1]
        for prefix, enc in _PREFIXES:
            if m.startswith(prefix):
                return enc, True
    return FALLBACK, False


def _encoding(name: str) -> Any:
    enc = _encodings.get(name)
    if enc is None:
        import quicktok

        enc = _encodings[name] = quicktok.get_encoding(name)
    return enc


def count(texts: list[str] | str, model: str | None) -> int:
    """Tokens in ``texts`` for ``model`` (special-token text counted as ordinary text)."""
    if isinstance(texts, str):
        texts = [texts]
    name, _ = encoding_name(model)
    try:
        enc = _encoding(name)
    except Exception:  # no wheel for this platform: a stated approximation, ~4 bytes per token
        log.warning("llmtally: tokenizer %s unavailable; approximating 4 bytes per token", name)
        return sum((len(t.encode()) + 3) // 4 for t in texts)
    total = 0
    for t in texts:
        if not t:
            continue
        try:
            total += len(enc.encode_ordinary(t))
        except (TypeError, UnicodeError):
            # A lone surrogate (json.loads accepts "\ud83d"): counted as U+FFFD, as tiktoken does.
            fixed = t.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
            total += len(enc.encode_ordinary(fixed))
    return total


def names_in(messages: Any) -> int:
    """How many chat messages carry a ``name`` (each costs one more framing token)."""
    if not isinstance(messages, list):
        return 0
    return sum(1 for m in messages if isinstance(m, dict) and isinstance(m.get("name"), str))


def estimate_chat_input(texts: list[str], messages: int, model: str | None, names: int = 0) -> int:
    """Prompt tokens of a chat request: its texts plus OpenAI's per-message framing."""
    framing = 3 * messages + names + 3 if messages else 0
    return count(texts, model) + framing
