"""README.zh-CN.md, the Chinese edition, stays in step with README.md, mechanically.

Both files must have the same headings (level 2 and 3, in the same order of levels), the same
fenced code blocks (byte for byte, in the same order: code is never translated), the same images,
the same link targets and the same inline code, and each must link to the other at its top.
When README.md changes, this test says what the Chinese edition is missing.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EN = ROOT / "README.md"
ZH = ROOT / "README.zh-CN.md"

EN_LINK = "[简体中文](README.zh-CN.md) | English"
ZH_LINK = "[English](README.md) | 简体中文"
CROSS_TARGETS = {"README.md", "README.zh-CN.md"}


def split(text: str) -> tuple[list[str], str]:
    """The fenced code blocks (fences included) and the prose with each block cut out, from the title on.

    What comes before the title (the language links, the Chinese edition's note on which English
    text it follows) is each edition's own.
    """
    text = text[re.search(r"^# ", text, re.M).start() :]
    blocks: list[str] = []
    prose: list[str] = []
    current: list[str] | None = None
    for line in text.splitlines(keepends=True):
        if line.startswith("```"):
            if current is None:
                current = [line]
            else:
                current.append(line)
                blocks.append("".join(current))
                current = None
                prose.append("\n")
        elif current is not None:
            current.append(line)
        else:
            prose.append(line)
    assert current is None, "a code fence is never closed"
    return blocks, "".join(prose)


def headings(prose: str) -> list[int]:
    return [len(m.group(1)) for m in re.finditer(r"^(#{2,3}) \S", prose, re.M)]


def images(prose: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", prose)


def link_targets(prose: str) -> list[str]:
    targets = re.findall(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)", prose)
    return [t for t in targets if t not in CROSS_TARGETS]


def inline_code(prose: str) -> Counter[str]:
    spans = re.findall(r"`([^`]+)`", prose)
    return Counter(" ".join(span.split()) for span in spans)


@pytest.fixture(scope="module")
def en() -> tuple[list[str], str]:
    return split(EN.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def zh() -> tuple[list[str], str]:
    return split(ZH.read_text(encoding="utf-8"))


def test_cross_links_at_the_top() -> None:
    assert EN.read_text(encoding="utf-8").splitlines()[:2] == [EN_LINK, ""]
    assert ZH.read_text(encoding="utf-8").splitlines()[0] == ZH_LINK


def test_same_headings(en: tuple[list[str], str], zh: tuple[list[str], str]) -> None:
    assert headings(zh[1]) == headings(en[1])
    assert len(re.findall(r"^# \S", zh[1], re.M)) == len(re.findall(r"^# \S", en[1], re.M)) == 1


def test_same_code_blocks(en: tuple[list[str], str], zh: tuple[list[str], str]) -> None:
    assert len(zh[0]) == len(en[0])
    for number, (english, chinese) in enumerate(zip(en[0], zh[0], strict=True), 1):
        assert chinese == english, f"code block {number} differs"


def test_same_images(en: tuple[list[str], str], zh: tuple[list[str], str]) -> None:
    assert images(en[1])
    assert images(zh[1]) == images(en[1])
    for path in images(en[1]):
        assert (ROOT / path).is_file(), path


def test_same_links(en: tuple[list[str], str], zh: tuple[list[str], str]) -> None:
    assert link_targets(zh[1]) == link_targets(en[1])


def test_anchors_resolve_in_the_chinese_edition(zh: tuple[list[str], str]) -> None:
    """Headings are translated, so each #anchor the English links to is kept as an explicit id."""
    for target in link_targets(zh[1]):
        if target.startswith("#"):
            assert f'<a id="{target[1:]}"></a>' in zh[1], target


def test_same_inline_code(en: tuple[list[str], str], zh: tuple[list[str], str]) -> None:
    english, chinese = inline_code(en[1]), inline_code(zh[1])
    assert english - chinese == Counter(), "inline code missing from README.zh-CN.md"
    assert chinese - english == Counter(), "inline code README.md does not have"
