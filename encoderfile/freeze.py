"""Freeze a bundle into one executable: sh stub + runtime.tar.gz + bundle files + SBOM + index +
trailer.

The runtime (PyInstaller onedir of encoderfile.runtime) does not depend on the bundle, so it is
built once per encoderfile source + installed packages and cached in the work dir. Every step is
deterministic (PYTHONHASHSEED=0, sorted tar members, zero mtimes/owners): the same bundle and
environment give a byte-identical artifact. See docs/artifact.md.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.metadata
import importlib.resources
import os
import pkgutil
import platform
import shutil
import string
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import encoderfile
from encoderfile import elf, sbom
from encoderfile.errors import ArtifactError, BuildError
from encoderfile.resolve import sha256_file
from encoderfile.runtime import artifact
from encoderfile.runtime.artifact import BUNDLE_FILES, open_bundle
from encoderfile.runtime.manifest import MANIFEST_FILE, SBOM_FILE

PACKAGE = Path(encoderfile.__file__).resolve().parent
TEMPLATES = Path(str(importlib.resources.files("encoderfile.templates")))
RUNTIME_FORMAT = 2  # bump to invalidate cached runtimes when this module's output changes
STUB_ALIGN = 4096
KEEP_RUNTIMES = 3  # cached runtime archives kept per work dir
LIBRARY_DIR = "_internal"  # the onedir's library folder: the bundled loader's --library-path
RUNTIME_SIDE = ("encoderfile.errors", "encoderfile.runtime", "encoderfile.proto")


def builder_modules() -> list[str]:
    """Every encoderfile module outside the runtime, errors and proto: the build side."""
    found = pkgutil.walk_packages([str(PACKAGE)], prefix="encoderfile.")
    return sorted(
        m.name
        for m in found
        if not any(m.name == r or m.name.startswith(r + ".") for r in RUNTIME_SIDE)
    )


# The builder, and what the runtime's dependencies pull in on optional paths but never use.
EXCLUDES = sorted(
    [
        *builder_modules(),
        # the builder's libraries (pydantic stays: the MCP SDK needs it, for `mcp` only)
        "onnx",
        "yaml",
        "huggingface_hub",
        "typer",
        "torch",
        "transformers",
        "sentence_transformers",
        "PyInstaller",
        # onnxruntime's python tooling (needs onnx/torch), not its inference API
        "onnxruntime.transformers",
        "onnxruntime.quantization",
        "onnxruntime.tools",
        "onnxruntime.backend",
        "onnxruntime.datasets",
        # optional imports of dependencies: grpc's runtime proto compiler, numpy's f2py
        "grpc_tools",
        "numpy.f2py",
        "charset_normalizer",
        "readline",
        "scipy",
        "pandas",
        "matplotlib",
        # what the MCP SDK and pydantic reach on paths the server never takes: the SDK's
        # developer CLI and client-side schema validation, pydantic's mypy plugin, rich logging
        "mcp.cli",
        "rich",
        "pygments",
        "jsonschema",
        "jsonschema_specifications",
        "referencing",
        "rpds",
        "attr",
        "attrs",
        "jwt",
        "mypy",
        "mypy_extensions",
        "ast_serialize",
        "librt",
        "pydantic.mypy",
        "pydantic.v1",
        "requests",
        "urllib3",
        "truststore",
        "toml",
        "curses",
        "IPython",
        "PIL.ImageTk",
        "PIL._avif",  # AVIF decoding (libavif, 5 MB): not among the formats the runtime accepts
        "PIL.AvifImagePlugin",
        "PIL.ImageQt",
        "PIL.ImageShow",
        "pytest",
        "setuptools",
        "pip",
        "distutils",
        "tkinter",
        "_tkinter",
        "turtle",
        "idlelib",
        "lib2to3",
        "pydoc",  # drops pkgutil too: see HIDDEN_IMPORTS
        "pydoc_data",
        "ensurepip",
        "venv",
        "sqlite3",
        "test",
    ]
)
# grpc's C extension imports pkgutil, which only pydoc pulled in (excluded above).
HIDDEN_IMPORTS = ["pkgutil"]


def build(bundle_dir: Path, dist_dir: Path, work_dir: Path | None = None) -> Path:
    """Freeze `bundle_dir` into `dist_dir/<name>` (chmod 755, written atomically); return it."""
    bundle_dir, dist_dir = Path(bundle_dir), Path(dist_dir)
    if not bundle_dir.is_dir():
        raise BuildError(f"{bundle_dir} is not a bundle directory. Pass build/<name>.")
    try:
        bundle = open_bundle(bundle_dir)  # refuse to freeze a bundle that fails its own hashes
    except ArtifactError as e:
        raise BuildError(f"cannot freeze {bundle_dir}: {e}") from None
    work_dir = Path(work_dir).resolve() if work_dir is not None else default_work_dir()
    runtime = runtime_archive(work_dir)
    return write_artifact(bundle_dir, bundle.manifest.name, runtime, dist_dir)


def default_work_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "encoderfile" / "freeze"


def runtime_archive(work_dir: Path) -> Path:
    """runtime-<key>.tar.gz in `work_dir`, built with PyInstaller unless already there.

    Concurrent builders each use their own build dir and publish by atomic rename; being
    reproducible, they publish identical archives.
    """
    stem = f"runtime-{runtime_key()[:16]}"
    archive, log = work_dir / f"{stem}.tar.gz", work_dir / f"{stem}.log"
    if archive.is_file():
        return archive
    work_dir.mkdir(parents=True, exist_ok=True)
    build_root = Path(tempfile.mkdtemp(dir=work_dir, prefix=f"{stem}.build-"))
    build_log = build_root / "pyinstaller.log"  # named by BuildError; kept on failure
    onedir = _pyinstaller(build_root, build_log)
    _strip(onedir, build_log)
    bundle_libc(onedir)
    if problems := elf.audit(onedir, LIBRARY_DIR):
        raise BuildError(
            f"the runtime would need libraries of the host: {'; '.join(problems[:5])}. Install "
            "them on the build machine (they are copied from beside its dynamic loader)."
        )
    packed = build_root / "runtime.tar.gz"
    pack(onedir, packed)
    os.replace(build_log, log)
    os.replace(packed, archive)
    shutil.rmtree(build_root, ignore_errors=True)
    _prune(work_dir)
    return archive


def runtime_key() -> str:
    """sha256 over everything that shapes the runtime: sources, templates, packages, python."""
    h = hashlib.sha256(f"{RUNTIME_FORMAT}\0{sys.version}\0{platform.machine()}\0".encode())
    h.update(f"{shutil.which('strip')}\0{EXCLUDES}\0{HIDDEN_IMPORTS}\0".encode())
    h.update(hashlib.sha256(loader().read_bytes()).digest())  # the glibc copied in
    for path in _frozen_sources():
        h.update(f"{path.relative_to(PACKAGE.parent)}\0".encode())
        h.update(hashlib.sha256(path.read_bytes()).digest())
    dists = sorted(
        f"{d.metadata['Name']}=={d.version}".lower() for d in importlib.metadata.distributions()
    )
    h.update("\n".join(dists).encode())
    return h.hexdigest()


def _frozen_sources() -> list[Path]:
    """The files that can end up in the runtime (the builder's modules are excluded)."""
    roots = [PACKAGE / "runtime", PACKAGE / "proto", TEMPLATES]
    files = [PACKAGE / "__init__.py", PACKAGE / "errors.py", Path(__file__).resolve()]
    for root in roots:
        files += [p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    return sorted(files)


def _pyinstaller(build_root: Path, log: Path) -> Path:
    entry = build_root / "entry.py"
    shutil.copyfile(TEMPLATES / "entry.py", entry)
    spec = build_root / "runtime.spec"
    template = string.Template((TEMPLATES / "runtime.spec").read_text(encoding="utf-8"))
    spec.write_text(
        template.substitute(
            entry=repr(str(entry)),
            pathex=repr(str(PACKAGE.parent)),
            hiddenimports=repr(HIDDEN_IMPORTS),
            excludes=repr(EXCLUDES),
        ),
        encoding="utf-8",
    )
    env = {**os.environ, "PYTHONHASHSEED": "0", "ORT_DISABLE_TELEMETRY": "1"}
    command = [
        sys.executable,
        "-m",
        "PyInstaller",
        "--noconfirm",
        "--clean",
        "--log-level=WARN",
        f"--distpath={build_root / 'dist'}",
        f"--workpath={build_root / 'build'}",
        str(spec),
    ]
    with open(log, "wb") as out:
        result = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    onedir = build_root / "dist" / "encoderfile"
    if result.returncode != 0 or not (onedir / "encoderfile").is_file():
        errors = [ln for ln in log.read_text(errors="replace").splitlines() if "ERROR" in ln]
        detail = f": {errors[-1].strip()}" if errors else ""
        raise BuildError(
            f"PyInstaller failed (exit {result.returncode}){detail}. See the log {log}; fix "
            "what it names and build again."
        )
    return onedir


def _strip(onedir: Path, log: Path) -> None:
    """Strip shared libraries except vendored ones in *.libs/ (stripping numpy's breaks it)."""
    strip = shutil.which("strip")
    if strip is None:
        return
    libs = [
        p
        for p in sorted(onedir.rglob("*.so*"))
        if p.is_file()
        and not p.is_symlink()
        and not any(part.endswith(".libs") for part in p.relative_to(onedir).parts)
    ]
    with open(log, "ab") as out:
        for lib in libs:
            subprocess.run(
                [strip, "--strip-unneeded", str(lib)], stdout=out, stderr=subprocess.STDOUT
            )


def loader() -> Path:
    """The build machine's dynamic loader (the PT_INTERP of this Python), symlinks resolved."""
    interpreter = elf.read(Path(sys.executable).resolve()).interpreter
    if interpreter is None:
        raise BuildError(f"{sys.executable} names no dynamic loader. Build with a dynamic Python.")
    return Path(interpreter).resolve()


def bundle_libc(onedir: Path) -> None:
    """Copy the dynamic loader and the C library parts the runtime needs into its library folder.

    PyInstaller leaves glibc out (it expects the host's); the stub instead starts the runtime
    through this loader with --library-path, so the runtime never uses a library of the host and
    runs on any x86-64 Linux, whatever its libc. The parts come from beside the loader (glibc
    installs them together), unmodified (never stripped): their sha256 are the distribution's.
    """
    libdir = onedir / LIBRARY_DIR
    ld = loader()
    wanted = {ld.name}
    for path in sorted(onedir.rglob("*")):
        if path.is_file() and not path.is_symlink() and elf.is_elf(path):
            wanted.update(elf.read(path).needed)
    for name in sorted(wanted):
        source = ld.parent / name
        if not (libdir / name).exists() and source.exists():
            shutil.copyfile(source.resolve(), libdir / name)
            (libdir / name).chmod(0o755)


def pack(onedir: Path, target: Path) -> None:
    """A deterministic tar.gz of `onedir`: sorted members, mtime 0, owner 0, gzip mtime 0."""
    with (
        open(target, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for path in sorted(onedir.rglob("*"), key=lambda p: p.relative_to(onedir).as_posix()):
            info = tar.gettarinfo(str(path), arcname=path.relative_to(onedir).as_posix())
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            executable = info.isdir() or info.mode & 0o111
            info.mode = 0o755 if executable else 0o644
            if info.isfile():
                with open(path, "rb") as fh:
                    tar.addfile(info, fh)
            else:
                tar.addfile(info)


def render_stub(name: str, runtime_sha256: str, runtime_length: int) -> bytes:
    """The sh stub, padded to a multiple of STUB_ALIGN; the runtime starts right after it."""
    template = (TEMPLATES / "stub.sh").read_text(encoding="utf-8")
    offset = STUB_ALIGN
    while True:
        text = (
            template.replace("@NAME@", name)
            .replace("@RUNTIME_SHA256@", runtime_sha256)
            .replace("@RUNTIME_LENGTH@", str(runtime_length))
            .replace("@RUNTIME_OFFSET@", str(offset))
            .replace("@LOADER@", f"{LIBRARY_DIR}/{loader().name}")
            .replace("@LIBRARY_DIR@", LIBRARY_DIR)
            .encode()
        )
        needed = -(-(len(text) + 1) // STUB_ALIGN) * STUB_ALIGN
        if needed == offset:
            return text + b"#" * (offset - len(text) - 1) + b"\n"
        offset = needed


def write_artifact(bundle_dir: Path, name: str, runtime: Path, dist_dir: Path) -> Path:
    runtime_sha256, runtime_length = sha256_file(runtime), runtime.stat().st_size
    stub = render_stub(name, runtime_sha256, runtime_length)
    dist_dir.mkdir(parents=True, exist_ok=True)
    present = [f for f in BUNDLE_FILES if (bundle_dir / f).is_file()]
    entries: list[tuple[str, Path | bytes]] = [
        (f, bundle_dir / f) for f in (*present, MANIFEST_FILE)
    ]
    entries.append((SBOM_FILE, sbom.generate(bundle_dir, runtime)))
    return artifact.write(dist_dir / name, stub, runtime, entries)


def _prune(work_dir: Path) -> None:
    def mtime(path: Path) -> float:
        try:
            return path.stat().st_mtime
        except FileNotFoundError:  # pruned by a concurrent build
            return 0.0

    archives = sorted(work_dir.glob("runtime-*.tar.gz"), key=mtime)
    for old in archives[:-KEEP_RUNTIMES]:
        old.unlink(missing_ok=True)
        old.with_name(old.name.removesuffix(".tar.gz") + ".log").unlink(missing_ok=True)
