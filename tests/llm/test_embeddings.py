"""The numpy all-MiniLM-L6-v2 (``llm.embeddings``) against reference vectors from sentence-transformers.

The reference vectors in ``tests/fixtures/minilm_reference.json`` were made with PyTorch + sentence-transformers by
``tests/fixtures/make_minilm_reference.py`` (see its docstring). No database, no Django settings.
"""

from __future__ import annotations

import json
import math
import threading
import time
from typing import Any

import numpy as np
import pytest

from llm.embeddings import Embedder, MiniLMEmbedder, _gelu_inplace, erf, get_embedder
from tests.conftest import ROOT

FIXTURE = ROOT / "tests" / "fixtures" / "minilm_reference.json"


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(FIXTURE.read_text(encoding="utf-8"))
    return data


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return get_embedder()


def _texts(reference: dict[str, Any]) -> list[str]:
    return [item["text"] for item in reference["items"]]


def _ref_vectors(reference: dict[str, Any]) -> np.ndarray:
    return np.array([item["vector"] for item in reference["items"]], dtype=np.float64)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    cos: np.ndarray = np.einsum("ij,ij->i", a64, b64) / (np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1))
    return cos


def test_fixture_is_what_the_tests_expect(reference: dict[str, Any]) -> None:
    assert reference["model_id"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert len(reference["items"]) >= 12
    assert all(len(item["vector"]) == 384 for item in reference["items"])
    assert max(item["n_tokens"] for item in reference["items"]) == 256  # one text is truncated
    assert {"torch", "sentence_transformers"} <= set(reference["generated_with"])


def test_matches_sentence_transformers_batched(embedder: Embedder, reference: dict[str, Any]) -> None:
    vectors = embedder.embed(_texts(reference))
    cos = _cosines(vectors, _ref_vectors(reference))
    assert cos.min() >= 0.9999, dict(zip(_texts(reference), cos.round(7).tolist(), strict=True))


def test_matches_sentence_transformers_one_at_a_time(embedder: Embedder, reference: dict[str, Any]) -> None:
    vectors = np.stack([embedder.embed([text])[0] for text in _texts(reference)])
    cos = _cosines(vectors, _ref_vectors(reference))
    assert cos.min() >= 0.9999
    assert np.abs(vectors - _ref_vectors(reference)).max() < 1e-4


def test_tokenisation_and_truncation_match(reference: dict[str, Any]) -> None:
    model = get_embedder()
    assert isinstance(model, MiniLMEmbedder)
    ids = model.tokenize(_texts(reference))
    assert [len(x) for x in ids] == [item["n_tokens"] for item in reference["items"]]
    assert model.max_seq_length == 256
    assert all(x[0] == 101 and x[-1] == 102 for x in ids)  # [CLS] ... [SEP], also after truncation


def test_shape_dtype_normalised(embedder: Embedder) -> None:
    out = embedder.embed(["ok", "Ahoy!", "A much longer sentence about lighthouses, ledgers and the sea. " * 5])
    assert out.shape == (3, 384)
    assert out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert embedder.dim == 384
    assert embedder.model_id == "sentence-transformers/all-MiniLM-L6-v2"


def test_empty_input_and_type_errors(embedder: Embedder) -> None:
    out = embedder.embed([])
    assert out.shape == (0, 384) and out.dtype == np.float32
    with pytest.raises(TypeError):
        embedder.embed("a single string is a sequence of characters")
    with pytest.raises(TypeError):
        embedder.embed([b"bytes"])  # type: ignore[list-item]


def test_deterministic_and_independent_of_batching(embedder: Embedder, reference: dict[str, Any]) -> None:
    texts = _texts(reference)
    a = embedder.embed(texts)
    b = embedder.embed(texts)
    assert np.array_equal(a, b)
    reordered = embedder.embed(texts[::-1])[::-1]
    np.testing.assert_allclose(reordered, a, atol=1e-5)
    single = embedder.embed([texts[2]])[0]
    assert np.array_equal(single, embedder.embed([texts[2]])[0])
    np.testing.assert_allclose(single, a[2], atol=1e-5)


def test_get_embedder_is_cached_and_satisfies_protocol() -> None:
    assert get_embedder() is get_embedder()
    assert isinstance(get_embedder(), Embedder)


def test_lazy_thread_safe_loading() -> None:
    model = MiniLMEmbedder()  # fresh instance: weights not loaded yet
    assert model._model is None
    results: list[np.ndarray] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            results.append(model.embed(["Shiver me timbers!", "Pray, sit down."]))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == 4
    for r in results[1:]:
        np.testing.assert_allclose(r, results[0], atol=1e-6)
    loaded = model._model
    model.embed(["again"])
    assert model._model is loaded  # loaded once, kept


def test_erf_accuracy() -> None:
    x = np.linspace(-9.0, 9.0, 360_001)
    exact = np.array([math.erf(v) for v in x])
    assert np.abs(erf(x) - exact).max() < 1e-7  # the approximation itself (float64 evaluation)
    x32 = x.astype(np.float32)
    assert np.abs(erf(x32).astype(np.float64) - exact).max() < 1e-6  # float32 evaluation: a few ulp more
    assert erf(np.array([0.0]))[0] == 0.0
    assert np.array_equal(erf(-x), -erf(x))


def test_exact_gelu() -> None:
    x = np.linspace(-12.0, 12.0, 240_001)
    exact = x * 0.5 * (1.0 + np.array([math.erf(v / math.sqrt(2.0)) for v in x]))
    got = _gelu_inplace(x.astype(np.float32).copy()).astype(np.float64)
    assert (np.abs(got - exact) / np.maximum(1.0, np.abs(x))).max() < 1e-6
    # not the tanh approximation: they differ by ~1e-4 around |x| ~ 2
    tanh_gelu = 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))
    assert np.abs(got - tanh_gelu).max() > 1e-4


def test_speed_smoke(embedder: Embedder) -> None:
    """Loose guard against gross regressions (e.g. a float64 or per-token Python path); see the report for figures."""
    text = " ".join(["Arr, the tide be turnin' and the crew be restless, so we weigh anchor at dawn."] * 6)
    embedder.embed([text])
    timings = []
    for _ in range(5):
        start = time.perf_counter()
        embedder.embed([text])
        timings.append(time.perf_counter() - start)
    assert sorted(timings)[2] < 0.25


@pytest.mark.parametrize(
    "text",
    [
        "Hello\tWorld\x00!",
        "x\x7fy and x\x00y",
        "a_b-c don't 100% e.g. <3 snake_case",
        "A  B\r\nC",
        "[UNK] and [CLS] kept whole",
        "a" * 150,
        "Café naïve — “quotes” 漢字 😀",
        "",
        "   ",
    ],
)
def test_static_pieces_are_the_tokenizers(text: str) -> None:
    from chat.scoring import tier0

    static = tier0()
    assert static.pieces(text) == static._tokenizer.encode(text, add_special_tokens=False).ids
    assert static.pieces(text) == static.pieces(text)  # and again, from the word cache


def test_static_pieces_match_the_tokenizer_on_every_labelled_text() -> None:
    from bench import drift_set
    from chat.scoring import tier0

    static = tier0()
    texts = [t for p in drift_set.load("dev") for t in p.anchors + p.samples + p.in_character + p.generic]
    assert len(texts) > 1000
    assert [static.pieces(t) for t in texts] == [
        static._tokenizer.encode(t, add_special_tokens=False).ids for t in texts
    ]
