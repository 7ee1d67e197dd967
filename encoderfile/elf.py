"""Just enough ELF reading for the freeze step: a file's interpreter, NEEDED libraries and
RUNPATH, and the audit that every library a runtime's ELF files need is inside the runtime.

Read with the standard library (no readelf), so the audit runs wherever the builder does.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

MAGIC = b"\x7fELF"
PT_INTERP, PT_DYNAMIC = 3, 2
DT_NULL, DT_NEEDED, DT_STRTAB, DT_RPATH, DT_RUNPATH = 0, 1, 5, 15, 29


@dataclass
class Elf:
    """What the dynamic loader reads from one ELF file."""

    interpreter: str | None = None
    needed: list[str] = field(default_factory=list)
    runpath: list[str] = field(default_factory=list)  # DT_RUNPATH, else DT_RPATH


def is_elf(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == MAGIC
    except OSError:
        return False


def read(path: Path) -> Elf:
    """Parse a 64-bit little-endian ELF file (x86-64, aarch64); ValueError for anything else."""
    data = Path(path).read_bytes()
    if data[:4] != MAGIC or data[4] != 2 or data[5] != 1:
        raise ValueError(f"{path} is not a 64-bit little-endian ELF file")
    (phoff,) = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    segments = [struct.unpack_from("<IIQQQQQQ", data, phoff + i * phentsize) for i in range(phnum)]
    found = Elf()
    dynamic: list[tuple[int, int]] = []
    for kind, _flags, offset, _vaddr, _paddr, filesz, _memsz, _align in segments:
        if kind == PT_INTERP:
            found.interpreter = data[offset : offset + filesz].rstrip(b"\0").decode()
        elif kind == PT_DYNAMIC:
            for at in range(offset, offset + filesz, 16):
                tag, value = struct.unpack_from("<qQ", data, at)
                if tag == DT_NULL:
                    break
                dynamic.append((tag, value))
    strtab = next((v for t, v in dynamic if t == DT_STRTAB), None)
    if strtab is None:
        return found  # static: no dynamic section
    strtab = _file_offset(segments, strtab)

    def string(offset: int) -> str:
        end = data.index(b"\0", strtab + offset)
        return data[strtab + offset : end].decode()

    found.needed = [string(v) for t, v in dynamic if t == DT_NEEDED]
    paths = [string(v) for t, v in dynamic if t == DT_RUNPATH] or [
        string(v) for t, v in dynamic if t == DT_RPATH
    ]
    found.runpath = [p for entry in paths for p in entry.split(":") if p]
    return found


def _file_offset(segments: list[tuple[int, ...]], address: int) -> int:
    """The file offset of a virtual address (DT_STRTAB holds an address)."""
    for kind, _flags, offset, vaddr, _paddr, filesz, _memsz, _align in segments:
        if kind == 1 and vaddr <= address < vaddr + filesz:  # PT_LOAD
            return address - vaddr + offset
    raise ValueError(f"address {address:#x} is in no loaded segment")


def audit(root: Path, library_dir: str) -> list[str]:
    """Every dependency of every ELF file under `root` that the runtime cannot satisfy itself.

    A NEEDED library is satisfied when a file of that name is in `root/library_dir` (the
    loader's --library-path) or in one of the ELF's RUNPATH directories that resolve inside
    `root` ($ORIGIN-relative). An empty list means the runtime needs no library of the host.
    """
    root = Path(root).resolve()
    problems = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
        if not is_elf(path):
            continue
        try:
            elf = read(path)
        except ValueError as e:
            problems.append(str(e))
            continue
        dirs = [root / library_dir]
        for entry in elf.runpath:
            origin = str(path.parent)
            candidate = Path(entry.replace("${ORIGIN}", origin).replace("$ORIGIN", origin))
            candidate = candidate.resolve()
            if candidate.is_relative_to(root):
                dirs.append(candidate)
        name = path.relative_to(root).as_posix()
        for lib in elf.needed:
            if not any((d / lib).exists() for d in dirs):
                problems.append(f"{name} needs {lib}, which the runtime does not carry")
    return problems
