from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from llmtally.wire import SSEDecoder

STREAM = (
    b": comment\n"
    b"event: message_start\n"
    b'data: {"a": 1}\n\n'
    b"id: 7\n"
    b"data: line one\n"
    b"data: line two\n\n"
    b"data: [DONE]\n\n"
)
EVENTS = [("message_start", b'{"a": 1}'), ("", b"line one\nline two"), ("", b"[DONE]")]


def decode_in_pieces(data: bytes, cuts: list[int]) -> list[tuple[str, bytes]]:
    dec = SSEDecoder()
    out = []
    last = 0
    for cut in sorted(set(cuts)):
        out += dec.feed(data[last:cut])
        last = cut
    out += dec.feed(data[last:])
    out += dec.close()
    return out


class TestSSEDecoder:
    """Events come out the same however the bytes are chunked."""

    def test_whole(self) -> None:
        assert decode_in_pieces(STREAM, []) == EVENTS

    def test_every_single_split(self) -> None:
        for i in range(len(STREAM)):
            assert decode_in_pieces(STREAM, [i]) == EVENTS, i

    def test_byte_by_byte(self) -> None:
        assert decode_in_pieces(STREAM, list(range(len(STREAM)))) == EVENTS

    def test_crlf_and_cr_line_ends(self) -> None:
        for sep in (b"\r\n", b"\r"):
            data = STREAM.replace(b"\n", sep)
            assert decode_in_pieces(data, list(range(0, len(data), 3))) == EVENTS
            assert decode_in_pieces(data, list(range(len(data)))) == EVENTS

    def test_stream_without_final_blank_line(self) -> None:
        assert decode_in_pieces(b"data: x\n\ndata: tail", []) == [("", b"x"), ("", b"tail")]

    def test_event_name_resets_after_dispatch(self) -> None:
        assert decode_in_pieces(b"event: a\ndata: 1\n\ndata: 2\n\n", []) == [("a", b"1"), ("", b"2")]

    @given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
    def test_any_chunking(self, cuts: list[int]) -> None:
        assert decode_in_pieces(STREAM, cuts) == EVENTS

    @given(st.binary(max_size=300), st.lists(st.integers(min_value=0, max_value=300), max_size=8))
    def test_garbage_never_raises(self, data: bytes, cuts: list[int]) -> None:
        decode_in_pieces(data, [c for c in cuts if c <= len(data)])


def test_a_long_line_in_small_pieces() -> None:
    """A 2 MB event (a base64 image, say) read 256 bytes at a time: kept as pieces, joined once."""
    from llmtally.wire import NDJSONDecoder

    big = b"A" * 2_000_000
    raw = b"data: " + big + b"\r\n\r\ndata: end\n\n"
    dec = SSEDecoder()
    got = [e for i in range(0, len(raw), 256) for e in dec.feed(raw[i : i + 256])]
    assert got == [("", big), ("", b"end")]
    assert len(dec._tail) < 256 and not dec._parts  # nothing held once the line ended
    lines = NDJSONDecoder()
    raw = b'{"a": "' + big + b'"}\n{"b": 1}'
    got = [e for i in range(0, len(raw), 256) for e in lines.feed(raw[i : i + 256])] + lines.close()
    assert got == [("", b'{"a": "' + big + b'"}'), ("", b'{"b": 1}')]
