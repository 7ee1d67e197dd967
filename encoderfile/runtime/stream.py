"""`stream`: a batch protocol over stdin/stdout, for engines that keep the artifact running
(encoderfile.ray starts one per Ray actor).

```
artifact → client  hello  b"EFHI" u32 n u32 0  + n bytes of JSON {name, version, width, encoderfile}
client → artifact  one JSON line per batch: {"texts": ["...", ...]}
artifact → client  b"EFOK" u32 rows u32 width  + rows*width float32 little-endian, input order
               or  b"EFER" u32 n u32 0         + n bytes of UTF-8: why the batch was refused
```
Integers are little-endian. End of input ends the process (exit 0). A refused batch leaves the
process ready for the next one.
"""

from __future__ import annotations

import json
import struct
import sys
from dataclasses import dataclass
from typing import IO

from encoderfile import __version__
from encoderfile.errors import RequestError

FRAME = struct.Struct("<4sII")  # kind, then rows and width (EFOK) or byte length and 0
HELLO, VECTORS, REFUSED = b"EFHI", b"EFOK", b"EFER"


@dataclass(frozen=True)
class StreamOptions:
    """What `stream` needs: the artifact and the options that shape every batch's vectors."""

    prompt: str | None = None
    dimensions: int | None = None
    no_truncate: bool = False  # refuse a batch with an over-long text instead of truncating it
    threads: int | None = None
    bundle: str | None = None


def run(options: StreamOptions) -> int:
    from encoderfile.runtime.artifact import open_bundle
    from encoderfile.runtime.embedder import for_bulk

    embedder = for_bulk(open_bundle(options.bundle, read_model=False), options.threads)
    embedder.prefix(options.prompt)  # unknown prompt / dimensions fail before the hello
    width = embedder.manifest.width(options.dimensions)
    out = sys.stdout.buffer
    hello = {
        "name": embedder.manifest.name,
        "version": embedder.manifest.version,
        "width": width,
        "encoderfile": __version__,
    }
    _send(out, HELLO, json.dumps(hello).encode(), 0)
    for n, line in enumerate(sys.stdin.buffer, 1):
        try:
            texts = _texts(line, n)
            result = embedder.embed(
                texts, prompt=options.prompt, dimensions=width, truncate=not options.no_truncate
            )
        except RequestError as e:
            _send(out, REFUSED, f"batch {n}: {e}".encode(), 0)
            continue
        _send(out, VECTORS, result.vectors.astype("<f4", copy=False).tobytes(), width)
    return 0


def _texts(line: bytes, n: int) -> list[str]:
    try:
        request = json.loads(line)
    except ValueError as e:
        raise RequestError(f"not valid JSON ({e}). Send one JSON object per line.") from None
    texts = request.get("texts") if isinstance(request, dict) else None
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise RequestError('expected {"texts": ["...", ...]}: a list of strings.')
    return texts


def _send(out: IO[bytes], kind: bytes, payload: bytes, width: int) -> None:
    if kind == VECTORS:
        out.write(FRAME.pack(kind, len(payload) // (4 * width), width))
    else:
        out.write(FRAME.pack(kind, len(payload), 0))
    out.write(payload)
    out.flush()
