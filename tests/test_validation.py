"""`moonborn_site.http.validate`: one serializer instance per class and thread, the same answers as `is_valid()`."""

import threading
from typing import Any

import pytest
from rest_framework import serializers

from chat.serializers import MessageCreateSerializer
from moonborn_site.http import ApiError, validate
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
