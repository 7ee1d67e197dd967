"""What `encoderfile build` tells the user while it works: one stderr line per stage with its
time, and a warning when the recipe leaves model files without a sha256 pin."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from encoderfile.recipe import GraphSpec, Recipe

STAGES = ("resolve", "quantize", "splice", "verify", "gate", "image", "bundle", "freeze")


class Stages:
    """`next(name)` ends the running stage (printing its time) and starts `name`. Stage lines go
    to `stream` (None: nowhere); warnings always go to `warnings`."""

    def __init__(self, stream: TextIO | None = None, warnings: TextIO | None = None):
        self._stream = stream
        self._warnings = warnings
        self._name: str | None = None
        self._started = 0.0
        self._first = time.perf_counter()
        self.timings: dict[str, float] = {}

    def next(self, name: str, detail: str = "") -> None:
        self._end()
        self._name, self._started = name, time.perf_counter()
        self._say(f"[{name}] {detail}".rstrip() + " …")

    def done(self) -> None:
        self._end()
        total = time.perf_counter() - self._first
        shown = ", ".join(f"{k} {v:.1f} s" for k, v in self.timings.items())
        self._say(f"[done] {total:.1f} s ({shown})")

    def warn(self, message: str) -> None:
        if self._warnings is not None:
            print(f"warning: {message}", file=self._warnings, flush=True)

    def _end(self) -> None:
        if self._name is not None:
            seconds = time.perf_counter() - self._started
            self.timings[self._name] = self.timings.get(self._name, 0.0) + seconds
            self._say(f"[{self._name}] {seconds:.1f} s")
            self._name = None

    def _say(self, line: str) -> None:
        if self._stream is not None:
            print(line, file=self._stream, flush=True)


def stderr(progress: bool | None = None) -> Stages:
    """Warnings on stderr; stage lines too when `progress`, or (None) when it is a terminal."""
    show = sys.stderr.isatty() if progress is None else progress
    return Stages(sys.stderr if show else None, warnings=sys.stderr)


def where(graph: GraphSpec) -> str:
    """`repo@revision (Hub)` or `local <path>`, for the resolve line."""
    if graph.hub is not None:
        return f"{graph.hub.repo}@{graph.hub.revision} (Hub)"
    assert graph.local is not None
    return f"local {graph.local.path}"


def unpinned(spec: Recipe) -> list[str]:
    """The recipe's local model files (text and image) that have no sha256 pin; unpinned Hub
    files never get this far (resolve refuses them)."""
    sections = [("model", spec.model), ("image.model", spec.image.model if spec.image else None)]
    return [
        f"{where}: {key}"
        for where, graph in sections
        if graph is not None and graph.local is not None
        for key, pin in graph.local.files.items()
        if pin is None
    ]


def unpinned_warning(spec: Recipe, files: list[str]) -> str:
    return (
        f"{spec.path} has no sha256 pin for {len(files)} file(s): {', '.join(files)}. "
        f"The build records pinned: false. Run 'encoderfile pin {spec.path}' to pin them."
    )
