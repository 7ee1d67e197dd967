"""kind: sparse — the sparse form of the graph's [batch, vocab] output, and its files.

The graph outputs each text's vector densely (the vocabulary's width, mostly zeros); the runtime
keeps the nonzero terms: indices (token ids, ascending) and their values (float32, > 0). Written
as JSONL `{"id"?, "indices": [...], "values": [...], "tokens": n}` or as a CSR matrix in
scipy.sparse's .npz layout (`scipy.sparse.load_npz` reads it; written with numpy alone).
"""

from __future__ import annotations

import functools
import io
import json
from collections.abc import Sequence
from typing import IO, Any

import numpy as np

from encoderfile.runtime.records import Record

NPZ_SUFFIX = ".npz"


def terms(vector: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(indices, values) of one dense row's nonzero terms, indices ascending."""
    indices = np.flatnonzero(vector)
    return indices, vector[indices]


def values(vectors: np.ndarray, tokens: Sequence[str] | None = None) -> list[list[dict[str, Any]]]:
    """Per row, its nonzero terms as TEI's SparseValue {index, value}, with `token` (the
    vocabulary's string) when `tokens` is given: the answer of POST /embed_sparse."""
    out = []
    for vector in vectors:
        indices, weights = terms(vector)
        row = [
            {"index": i, "value": v}
            for i, v in zip(indices.tolist(), weights.tolist(), strict=True)
        ]
        if tokens is not None:
            for term in row:
                term["token"] = tokens[term["index"]]
        out.append(row)
    return out


@functools.lru_cache(maxsize=2)
def vocabulary(tokenizer_json: str) -> list[str]:
    """Token strings by id (the `return_tokens` of the sparse routes), read once per tokenizer."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(tokenizer_json)
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    by_id = {i: t for t, i in tokenizer.get_vocab(with_added_tokens=True).items()}
    return [by_id.get(i, "") for i in range(size)]


class JsonlWriter:
    """One line per text: {"id"?, "indices": [...], "values": [...], "tokens": n}."""

    def __init__(self, out: IO[bytes], width: int):
        self.out = out

    def write(self, chunk: list[Record], vectors: np.ndarray, tokens: list[int]) -> None:
        lines = []
        for record, vector, count in zip(chunk, vectors, tokens, strict=True):
            indices, values = terms(vector)
            prefix = "" if record.id is None else f'"id":{json.dumps(record.id)},'
            lines.append(
                f'{{{prefix}"indices":[{",".join(map(str, indices.tolist()))}],'
                f'"values":[{",".join(f"{v:.9g}" for v in values.tolist())}],"tokens":{count}}}'
            )
        self.out.write(("\n".join(lines) + "\n").encode())

    def close(self) -> None:
        pass


class NpzWriter:
    """A float32 CSR matrix [rows, width] in scipy.sparse.save_npz's layout (keys indices,
    indptr, format, shape, data), held as its nonzero terms until close()."""

    def __init__(self, out: IO[bytes], width: int):
        self.out, self.width = out, width
        self.indices: list[np.ndarray] = []
        self.values: list[np.ndarray] = []
        self.counts: list[int] = []

    def write(self, chunk: list[Record], vectors: np.ndarray, tokens: list[int]) -> None:
        for vector in vectors:
            indices, values = terms(vector)
            self.indices.append(indices.astype(np.int32))
            self.values.append(values.astype(np.float32))
            self.counts.append(len(indices))

    def close(self) -> None:
        self.out.write(csr_npz(self.indices, self.values, self.counts, self.width))


def csr_npz(
    indices: Sequence[np.ndarray], values: Sequence[np.ndarray], counts: Sequence[int], width: int
) -> bytes:
    """The bytes of a compressed .npz holding a CSR matrix as scipy.sparse.save_npz writes it."""
    arrays: dict[str, Any] = {
        "indices": np.concatenate([*indices, np.zeros(0, np.int32)]),
        "indptr": np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).astype(np.int32),
        "format": np.array(b"csr"),
        "shape": np.array([len(counts), width], dtype=np.int64),
        "data": np.concatenate([*values, np.zeros(0, np.float32)]),
    }
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


WRITERS: dict[str, Any] = {"jsonl": JsonlWriter, "npz": NpzWriter}
