import json

import pytest

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


@pytest.mark.parametrize("delta", ["", " plain", 'q"uote\\back', "tab\tnul\x00", "\u2028\u2029", "é☾😀", "\x7f\x1f"])
def test_token_frames_are_the_general_encoders_bytes(delta):
    # Token frames take a shorter path; a delta of any kind must come out exactly as any other event's data does.
    expected = (
        f"id: 3\nevent: token\ndata: {json.dumps({'delta': delta}, separators=(',', ':'), ensure_ascii=False)}\n\n"
    )
    assert encode_event(3, "token", {"delta": delta}) == expected.encode()
    assert encode_event(3, "token", {"delta": delta, "extra": 1}).startswith(b'id: 3\nevent: token\ndata: {"delta":')
