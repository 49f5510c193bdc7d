"""`moonborn_site.http.validate`: one serializer instance per class and thread, the same answers as `is_valid()`."""

import json
import threading
from typing import Any

import pytest
from djangorestframework_camel_case.util import underscoreize
from rest_framework import serializers

from chat.serializers import MessageCreateSerializer, plain_message_content
from moonborn_site.http import ApiError, parse_json_object, validate
from personas.serializers import PersonaCreateSerializer

CASES: list[tuple[type[serializers.Serializer], dict[str, Any]]] = [
    (MessageCreateSerializer, {"content": "Hello"}),
    (MessageCreateSerializer, {"content": "   "}),
    (MessageCreateSerializer, {"content": ""}),
    (MessageCreateSerializer, {"content": 12}),
    (MessageCreateSerializer, {"content": "x" * 8001}),
    (MessageCreateSerializer, {}),
    (MessageCreateSerializer, {"content": "Still fine", "extra": 1}),
    (PersonaCreateSerializer, {"prompt": "  A keeper  "}),
    (PersonaCreateSerializer, {"prompt": "A keeper", "name": None}),
    (PersonaCreateSerializer, {"prompt": "", "name": "x" * 201}),
]


def fresh(serializer_class: type[serializers.Serializer], data: dict[str, Any]) -> tuple[Any, Any]:
    serializer = serializer_class(data=data)
    if serializer.is_valid():
        return dict(serializer.validated_data), None
    return None, dict(serializer.errors)


def reused(serializer_class: type[serializers.Serializer], data: dict[str, Any]) -> tuple[Any, Any]:
    try:
        return validate(serializer_class, data), None
    except ApiError as exc:
        return None, (exc.status, exc.details)


def test_validate_answers_as_a_fresh_serializer_would_every_time() -> None:
    expected = [fresh(cls, data) for cls, data in CASES]
    expected = [(data, None if errors is None else (400, errors)) for data, errors in expected]
    # Twice over, interleaved: an error answered before must not leak into the next answer.
    assert [reused(cls, data) for cls, data in CASES + CASES] == expected + expected
    assert expected[0] == ({"content": "Hello"}, None)
    assert expected[1] == (None, (400, {"content": ["This field may not be blank."]}))
    assert expected[7] == ({"prompt": "A keeper", "name": "", "model": ""}, None)


def test_validate_names_the_first_field_in_the_message() -> None:
    with pytest.raises(ApiError) as caught:
        validate(PersonaCreateSerializer, {"prompt": "", "name": "x" * 201})
    assert caught.value.message == "prompt: This field may not be blank."
    assert caught.value.details == {
        "prompt": ["This field may not be blank."],
        "name": ["Ensure this field has no more than 200 characters."],
    }


def test_validate_in_threads_gives_each_thread_its_answers() -> None:
    expected = [reused(cls, data) for cls, data in CASES]
    seen: list[list[tuple[Any, Any]]] = []

    def work() -> None:
        seen.append([reused(cls, data) for _ in range(50) for cls, data in CASES])

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen == [expected * 50] * 4


MESSAGES: list[Any] = [
    {"content": "Hello"},
    {"content": " padded \n"},
    {"content": "🙂 émoji"},
    {"content": "x" * 8000},
    {"content": "Still fine", "extra": 1},
    {"content": "x" * 8001},
    {"content": ""},
    {"content": " \t\n"},
    {"content": "nul\x00inside"},
    {"content": "lone \ud800 surrogate"},
    {"content": 12},
    {"content": True},
    {"content": None},
    {"content": ["Hello"]},
    {},
]


def test_plain_message_content_accepts_only_what_the_serializer_accepts_and_keeps_it() -> None:
    answers = [(plain_message_content(data), fresh(MessageCreateSerializer, data)) for data in MESSAGES]
    for plain, (valid, _) in answers:
        assert plain is None or valid == {"content": plain}
    # The plain cases are taken without the serializer; everything else is left to it.
    assert [plain for plain, _ in answers] == [
        "Hello",
        " padded \n",
        "🙂 émoji",
        "x" * 8000,
        "Still fine",
    ] + [None] * 10
    assert [valid is not None for _, (valid, _) in answers] == [True] * 5 + [False] * 10


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"content": "Hi", "on_disconnect": null}', {"content": "Hi", "on_disconnect": None}),
        (b'{"personaId": "per_1"}', {"persona_id": "per_1"}),
        (b'{"field1": 1}', {"field_1": 1}),
        (b'{"nested": {"innerKey": [{"deepKey": 1}]}}', {"nested": {"inner_key": [{"deep_key": 1}]}}),
        (b'{"ok": 1.5, "Flag": true}', {"ok": 1.5, "_flag": True}),
    ],
)
def test_parse_json_object_gives_snake_case_keys_as_underscoreize_does(body: bytes, expected: dict[str, Any]) -> None:
    assert parse_json_object(body) == expected
    assert parse_json_object(body) == underscoreize(json.loads(body))
