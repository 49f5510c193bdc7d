import json

import pytest

from runs.hub import shutdown_frame
from runs.sse import HEARTBEAT, RETRY, encode_event


def test_encode_event_is_one_frame_of_compact_json():
    frame = encode_event(7, "token", {"delta": " me through"})
    assert frame == b'id: 7\nevent: token\ndata: {"delta":" me through"}\n\n'


def test_encode_event_keeps_newlines_inside_json():
    frame = encode_event(1, "token", {"delta": "line one\nline two\r\n"})
    lines = frame.decode().split("\n")
    assert lines[:3] == ["id: 1", "event: token", 'data: {"delta":"line one\\nline two\\r\\n"}']
    assert lines[3:] == ["", ""]
    assert json.loads(lines[2].removeprefix("data: ")) == {"delta": "line one\nline two\r\n"}


def test_encode_event_writes_utf8_without_escaping():
    assert encode_event(2, "token", {"delta": "café ☾"}) == 'id: 2\nevent: token\ndata: {"delta":"café ☾"}\n\n'.encode()


@pytest.mark.parametrize("event_type", ["bad\nevent", "", "Token", "a b", "x:y"])
def test_encode_event_refuses_unsafe_event_types(event_type):
    with pytest.raises(ValueError, match="unsafe SSE event type"):
        encode_event(1, event_type, {})


def test_retry_and_heartbeat_lines():
    assert RETRY == b"retry: 3000\n"
    assert HEARTBEAT == b": heartbeat\n"


@pytest.mark.parametrize(
    "delta", ["", " plain", 'q"uote\\back', "tab\tnul\x00", "\u2028\u2029\x85", "é☾😀", "\x7f\x1f", "a\u2028é\x85"]
)
def test_token_frames_are_the_general_encoders_bytes(delta):
    # Token frames take a shorter path; a delta of any kind must come out exactly as any other event's data does.
    payload = json.dumps({"delta": delta}, separators=(",", ":"), ensure_ascii=False)
    payload = payload.replace("\x85", "\\u0085").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    assert encode_event(3, "token", {"delta": delta}) == f"id: 3\nevent: token\ndata: {payload}\n\n".encode()
    assert encode_event(3, "message", {"delta": delta}) == f"id: 3\nevent: message\ndata: {payload}\n\n".encode()
    assert encode_event(3, "token", {"delta": delta, "extra": 1}).startswith(b'id: 3\nevent: token\ndata: {"delta":')


def test_token_frames_escape_the_line_breaks_of_str_splitlines():
    # U+2028, U+2029 and U+0085 are valid raw in JSON, but httpx's iter_lines (str.splitlines) breaks lines on them.
    frame = encode_event(4, "token", {"delta": "one\u2028two\u2029three\x85four é☾😀\r\n"})
    assert (
        frame == 'id: 4\nevent: token\ndata: {"delta":"one\\u2028two\\u2029three\\u0085four é☾😀\\r\\n"}\n\n'.encode()
    )
    lines = frame.decode().splitlines()
    assert lines == ["id: 4", "event: token", 'data: {"delta":"one\\u2028two\\u2029three\\u0085four é☾😀\\r\\n"}', ""]
    assert json.loads(lines[2].removeprefix("data: ")) == {"delta": "one\u2028two\u2029three\x85four é☾😀\r\n"}


def test_every_frame_escapes_the_line_breaks_of_str_splitlines():
    frame = encode_event(5, "step.completed", {"note\u2028": ["a\u2029b", {"c": "\x85"}], "step": "lore_weave"})
    assert frame == (
        b'id: 5\nevent: step.completed\ndata: {"note\\u2028":["a\\u2029b",{"c":"\\u0085"}],"step":"lore_weave"}\n\n'
    )


def test_the_shutdown_frame_repeats_the_last_id():
    assert shutdown_frame(9) == (
        b"id: 9\nevent: error\n"
        b'data: {"error":"The server is shutting down; resume this stream.","code":"server_shutdown","retryable":true}\n\n'
    )
