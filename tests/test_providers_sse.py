"""The SSE parser: events of every kind, split anywhere, malformed frames, bounds."""

from __future__ import annotations

import pytest

from omixa.engine.errors import UpstreamError
from omixa.engine.providers import SseParser, iter_sse

SAMPLE = (
    b": padding comment\n\n"
    b'data: {"a":1}\n\n'
    b'data: {"b":\r\ndata: 2}\r\n\r\n'
    b"\n"
    b'event: message\nid: 7\ndata: {"c":"x\\ny"}\n\n'
    b"retry: 100\n\n"
    b"data:[DONE]\n\n"
)


def parse_all(chunks: list[bytes]):
    parser = SseParser()
    events = [event for chunk in chunks for event in parser.feed(chunk)]
    parser.close()
    return events


def test_sse_parses_each_kind_of_event():
    events = parse_all([SAMPLE])
    assert [(e.data, e.done, e.comment) for e in events] == [
        (None, False, True),
        ({"a": 1}, False, False),
        ({"b": 2}, False, False),  # two data lines joined with "\n", CRLF line ends
        (None, False, True),  # a stray blank line, passed through
        ({"c": "x\ny"}, False, False),
        (None, False, False),  # fields without data: not content, not a comment
        (None, True, False),
    ]
    assert b"".join(e.raw for e in events) == SAMPLE


def test_sse_split_at_every_byte_boundary_gives_the_same_events():
    whole = parse_all([SAMPLE])
    for cut in range(1, len(SAMPLE)):
        assert parse_all([SAMPLE[:cut], SAMPLE[cut:]]) == whole, cut
    assert parse_all([SAMPLE[i : i + 1] for i in range(len(SAMPLE))]) == whole
    for cut in range(1, len(SAMPLE) - 3, 7):
        parts = [SAMPLE[:cut], SAMPLE[cut : cut + 3], SAMPLE[cut + 3 :]]
        assert parse_all(parts) == whole


def test_sse_crlf_only_stream():
    crlf = b'data: {"x":1}\r\n\r\n: ping\r\n\r\ndata: [DONE]\r\n\r\n'
    events = parse_all([crlf[i : i + 1] for i in range(len(crlf))])
    assert [e.raw for e in events] == [b'data: {"x":1}\r\n\r\n', b": ping\r\n\r\n",
                                       b"data: [DONE]\r\n\r\n"]  # fmt: skip
    assert events[0].data == {"x": 1} and events[1].comment and events[2].done


@pytest.mark.parametrize("frame", [b"data: {nope}\n\n", b"data: [1, 2]\n\n", b"data: \xff\n\n",
                                   b'data: {"a":\ndata: }\n\n'])  # fmt: skip
def test_sse_malformed_frame_is_an_upstream_error(frame):
    with pytest.raises(UpstreamError, match="malformed stream frame"):
        SseParser().feed(frame)


def test_sse_good_events_before_a_malformed_one_in_the_same_chunk_are_kept():
    parser = SseParser()
    events = parser.feed(b'data: {"a":1}\n\ndata: {nope}\n\n')
    assert [e.data for e in events] == [{"a": 1}]
    assert parser.failure is not None
    with pytest.raises(UpstreamError, match="malformed stream frame"):
        parser.close()


def test_sse_bounds_the_buffer():
    parser = SseParser(max_buffer=1000)
    parser.feed(b"data: " + b"x" * 900)
    with pytest.raises(UpstreamError, match="no event boundary"):
        parser.feed(b"x" * 200)


def test_sse_stream_cut_inside_an_event_is_an_error():
    parser = SseParser()
    assert parser.feed(b'data: {"a":1}\n\ndata: {"b"') != []
    with pytest.raises(UpstreamError):
        parser.close()
    trailing = SseParser()
    trailing.feed(b"data: [DONE]\n\n\n")
    trailing.close()  # whitespace after the last event is fine


async def test_iter_sse_over_async_chunks():
    async def chunks():
        for i in range(0, len(SAMPLE), 5):
            yield SAMPLE[i : i + 5]

    events = [event async for event in iter_sse(chunks())]
    assert events == parse_all([SAMPLE])
