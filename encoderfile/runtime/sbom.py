"""The CycloneDX SBOM that freeze embeds in an artifact as sbom.json, read and checked in place."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from encoderfile.errors import ArtifactError
from encoderfile.runtime.artifact import read_entry, resolve_source
from encoderfile.runtime.manifest import SBOM_FILE


def read(path: str | os.PathLike[str] | None = None) -> bytes:
    """sbom.json's bytes from the artifact (default: the one running), checked against its sha256."""
    source = resolve_source(path)
    if source.is_dir():
        raise ArtifactError(
            f"{source} is a bundle directory: the SBOM is written when it is frozen. "
            "Run 'encoderfile build' and ask the artifact."
        )
    blob = read_entry(SBOM_FILE, source)
    if blob is None:
        raise ArtifactError(
            f"{source} carries no {SBOM_FILE} (built by an encoderfile without SBOMs). Rebuild it."
        )
    return blob


def summary(blob: bytes) -> dict[str, Any]:
    """What `info` shows: format, serial number and how many components of each type."""
    bom = json.loads(blob)
    counts: dict[str, int] = {}
    stack = list(bom.get("components", []))
    while stack:
        component = stack.pop()
        counts[component["type"]] = counts.get(component["type"], 0) + 1
        stack += component.get("components", [])
    return {
        "format": f"{bom['bomFormat']} {bom['specVersion']} JSON",
        "serialNumber": bom.get("serialNumber"),
        "components": dict(sorted(counts.items())),
    }


def describe(path: Path) -> dict[str, Any] | None:
    """`summary` of the artifact at `path`, or None for a bundle directory."""
    return None if path.is_dir() else summary(read(path))


def summary_line(described: dict[str, Any] | None) -> str:
    """One line for `info`: format and component counts, or why there is no SBOM."""
    if described is None:
        return "none (a bundle directory; the SBOM is written when it is frozen)"
    counts = described["components"]
    parts = ", ".join(f"{n} {kind}" for kind, n in counts.items())
    return f"{described['format']}, {sum(counts.values())} components ({parts}); print it: sbom"
