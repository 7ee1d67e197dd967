"""Freezing: deterministic packing, the stub, the artifact layout; slow tests run PyInstaller."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

from encoderfile import freeze
from encoderfile.errors import BuildError
from encoderfile.runtime.artifact import MAGIC, TRAILER, open_bundle
from tests.fixtures.artifacts import run_artifact
from tests.fixtures.tiny_bundle import make_tiny_bundle

FAKE_RUNTIME = '#!/bin/sh\nprintf "%s|" "$ENCODERFILE_ARTIFACT" "$@"\n'


def fake_runtime(tmp_path: Path, script: str = FAKE_RUNTIME) -> Path:
    """A runtime.tar.gz whose `encoderfile` echoes its environment and arguments."""
    onedir = tmp_path / "onedir"
    (onedir / "_internal").mkdir(parents=True)
    (onedir / "encoderfile").write_text(script)
    (onedir / "encoderfile").chmod(0o755)
    (onedir / "_internal" / "lib.so").write_bytes(b"\0" * 100)
    (onedir / "_internal" / "link.so").symlink_to("lib.so")
    archive = tmp_path / "runtime.tar.gz"
    freeze.pack(onedir, archive)
    return archive


@pytest.fixture
def fake_artifact(tiny_bundle: Path, tmp_path: Path) -> Path:
    return freeze.write_artifact(tiny_bundle, "tiny", fake_runtime(tmp_path), tmp_path / "dist")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------ packing


@pytest.mark.slow  # sleeps so that mtimes differ
def test_pack_is_deterministic(tmp_path: Path) -> None:
    first = fake_runtime(tmp_path / "a")
    time.sleep(1.1)  # different mtimes on disk must not matter
    second = fake_runtime(tmp_path / "b")
    assert first.read_bytes() == second.read_bytes()
    with tarfile.open(first) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == sorted(m.name for m in members)
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in members} == {(0, 0, 0, "", "")}
    modes = {m.name: (m.mode, m.type) for m in members}
    assert modes["encoderfile"] == (0o755, tarfile.REGTYPE)
    assert modes["_internal/lib.so"] == (0o644, tarfile.REGTYPE)
    assert modes["_internal/link.so"][1] == tarfile.SYMTYPE
    assert first.read_bytes()[4:8] == b"\0\0\0\0"  # gzip header mtime


def test_stub_is_aligned_and_names_the_runtime() -> None:
    stub = freeze.render_stub("tiny", "ab" * 32, 12345)
    assert len(stub) % freeze.STUB_ALIGN == 0 and stub.startswith(b"#!/bin/sh\n")
    assert len(freeze.render_stub("n" * 64, "ab" * 32, 10**12)) == freeze.STUB_ALIGN  # one page
    text = stub.decode()
    assert f"sha={'ab' * 32}" in text and "head -c 12345" in text
    assert f"$(({len(stub)} + 1))" in text


def test_artifact_layout(fake_artifact: Path, tiny_bundle: Path) -> None:
    data = fake_artifact.read_bytes()
    magic, offset, length = TRAILER.unpack(data[-TRAILER.size :])
    assert magic == MAGIC and offset + length + TRAILER.size == len(data)
    index = json.loads(data[offset : offset + length])
    start, size = index["runtime"]
    assert start % freeze.STUB_ALIGN == 0 and data[start : start + 2] == b"\x1f\x8b"
    files = index["files"]
    for name, (start, size) in files.items():
        expected = (tiny_bundle / name).read_bytes() if name != "sbom.json" else None
        assert expected is None or data[start : start + size] == expected
    start, size = files["sbom.json"]
    assert hashlib.sha256(data[start : start + size]).hexdigest() == index["sha256"]["sbom.json"]
    assert fake_artifact.stat().st_mode & 0o777 == 0o755
    assert [p.name for p in fake_artifact.parent.iterdir()] == ["tiny"]  # no temp file left
    assert open_bundle(fake_artifact).manifest.name == "tiny"


# ---------------------------------------------------------------------------------- stub


def stub_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"PATH": os.environ["PATH"], "HOME": str(tmp_path / "home"), **extra}


@pytest.mark.slow  # runs the stub of an artifact
def test_stub_extracts_once_and_execs_with_the_artifact(
    fake_artifact: Path, tmp_path: Path
) -> None:
    env = stub_env(tmp_path, XDG_CACHE_HOME=str(tmp_path / "xdg"))
    result = run_artifact(fake_artifact, "embed", "two words", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode() == f"{fake_artifact}|embed|two words|"
    (cached,) = (tmp_path / "xdg" / "encoderfile").iterdir()  # no leftover temp dir
    assert (cached / ".complete").is_file() and (cached / "_internal" / "link.so").is_symlink()
    inode = (cached / "encoderfile").stat().st_ino
    assert run_artifact(fake_artifact, "x", env=env).stdout.endswith(b"|x|")
    assert (cached / "encoderfile").stat().st_ino == inode  # not extracted again
    (cached / "encoderfile").write_text("#!/bin/sh\necho modified\n")
    assert run_artifact(fake_artifact, "x", env=env).stdout.endswith(b"|x|")  # extracted again


@pytest.mark.slow  # runs the stub of an artifact
def test_stub_reextracts_an_incomplete_cache(fake_artifact: Path, tmp_path: Path) -> None:
    env = stub_env(tmp_path)
    run_artifact(fake_artifact, env=env)
    (cached,) = (tmp_path / "home" / ".cache" / "encoderfile").iterdir()
    (cached / ".complete").unlink()
    (cached / "encoderfile").unlink()
    assert run_artifact(fake_artifact, "x", env=env).stdout.endswith(b"|x|")


@pytest.mark.slow  # runs the stub of an artifact
def test_stub_runs_from_a_relative_path_without_home(fake_artifact: Path, tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"], "TMPDIR": str(tmp_path / "tmp")}
    (tmp_path / "tmp").mkdir()
    result = subprocess.run(
        ["./tiny", "x"], cwd=fake_artifact.parent, env=env, capture_output=True, check=True
    )
    assert result.stdout.decode() == f"{fake_artifact}|x|"
    assert len(list((tmp_path / "tmp").glob("encoderfile-*/*/.complete"))) == 1


@pytest.mark.slow  # runs the stub of an artifact
def test_stub_refuses_a_damaged_runtime(fake_artifact: Path, tmp_path: Path) -> None:
    data = bytearray(fake_artifact.read_bytes())
    data[freeze.STUB_ALIGN + 20] ^= 0xFF
    fake_artifact.write_bytes(bytes(data))
    result = run_artifact(fake_artifact, env=stub_env(tmp_path))
    assert result.returncode == 2
    assert re.fullmatch(
        rb"encoderfile: .* is damaged \(runtime sha256 mismatch\)\..*\n", result.stderr
    )
    assert list((tmp_path / "home" / ".cache" / "encoderfile").iterdir()) == []


@pytest.mark.slow  # runs the stub of an artifact
def test_stub_reports_an_unwritable_cache(fake_artifact: Path, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    result = run_artifact(
        fake_artifact, env=stub_env(tmp_path, XDG_CACHE_HOME=str(tmp_path / "file"))
    )
    assert result.returncode == 2 and result.stderr.startswith(
        b"encoderfile: cannot write the cache"
    )


@pytest.mark.slow  # runs the stub of an artifact
def test_concurrent_first_runs_share_one_cache(fake_artifact: Path, tmp_path: Path) -> None:
    env = stub_env(tmp_path)
    procs = [
        subprocess.Popen([str(fake_artifact), str(i)], env=env, stdout=subprocess.PIPE)
        for i in range(6)
    ]
    outputs = [p.communicate()[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 6
    assert [o.decode().split("|")[1] for o in outputs] == [str(i) for i in range(6)]
    (cached,) = (tmp_path / "home" / ".cache" / "encoderfile").iterdir()
    assert sorted(p.name for p in cached.iterdir()) == [".complete", "_internal", "encoderfile"]


# --------------------------------------------------------------------------------- build


def test_build_refuses_a_bad_bundle(tiny_bundle: Path, tmp_path: Path) -> None:
    (tiny_bundle / "model.onnx").write_bytes(b"changed")
    with pytest.raises(BuildError, match="model.onnx fails its sha256 check"):
        freeze.build(tiny_bundle, tmp_path / "dist", tmp_path / "work")
    with pytest.raises(BuildError, match="not a bundle directory"):
        freeze.build(tmp_path / "missing", tmp_path / "dist", tmp_path / "work")
    assert not (tmp_path / "dist").exists()


def test_pyinstaller_failure_names_the_log(
    tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(freeze.sys, "executable", shutil.which("false"))
    with pytest.raises(BuildError, match=r"PyInstaller failed \(exit 1\)\. See the log .*\.log"):
        freeze.build(tiny_bundle, tmp_path / "dist", tmp_path / "work")
    assert not (tmp_path / "dist").exists()


def test_runtime_key_follows_the_runtime_sources(monkeypatch: pytest.MonkeyPatch) -> None:
    key = freeze.runtime_key()
    assert key == freeze.runtime_key()
    monkeypatch.setattr(freeze, "EXCLUDES", [*freeze.EXCLUDES, "something"])
    assert freeze.runtime_key() != key
    sources = {p.relative_to(freeze.PACKAGE.parent).as_posix() for p in freeze._frozen_sources()}
    assert "encoderfile/runtime/cli.py" in sources and "templates/stub.sh" in sources
    assert "encoderfile/recipe.py" not in sources  # builder edits do not rebuild the runtime


# ------------------------------------------------------------------- frozen (PyInstaller)


@pytest.mark.slow
def test_frozen_tiny_artifact_embeds_like_the_venv(
    tiny_artifact: Path, artifact_env: dict[str, str]
) -> None:
    frozen = run_artifact(tiny_artifact, "embed", env=artifact_env, input=b"hello world\nfox\n")
    assert frozen.returncode == 0, frozen.stderr
    bundle = make_tiny_bundle(tiny_artifact.parent / "again")  # same seed: same bundle
    venv = subprocess.run(
        [os.sys.executable, "-m", "encoderfile.runtime", "--bundle", str(bundle), "embed"],
        input=b"hello world\nfox\n",
        capture_output=True,
        cwd=freeze.PACKAGE.parent,
        check=True,
    )
    assert frozen.stdout == venv.stdout
    for args in (["info"], ["info", "--json"], ["verify"], ["--version"], ["embed", "--help"]):
        result = run_artifact(tiny_artifact, *args, env=artifact_env)
        assert result.returncode == 0, (args, result.stderr)
    version = run_artifact(tiny_artifact, "--version", env=artifact_env).stdout
    assert version == b"tiny 1.0.0 (encoderfile 0.1.0, format 1)\n"


@pytest.mark.slow
def test_frozen_npy_output(
    tiny_artifact: Path, artifact_env: dict[str, str], tmp_path: Path
) -> None:
    target = tmp_path / "v.npy"
    result = run_artifact(
        tiny_artifact, "embed", "--format", "npy", "-o", str(target), "fox", env=artifact_env
    )
    assert result.returncode == 0, result.stderr
    assert np.load(target).shape == (1, 8)


@pytest.mark.slow
def test_tampered_artifact_refuses_to_run(
    tiny_artifact: Path, artifact_env: dict[str, str], tmp_path: Path
) -> None:
    tampered = tmp_path / "tiny"
    data = bytearray(tiny_artifact.read_bytes())
    _, offset, length = TRAILER.unpack(data[-TRAILER.size :])
    start, size = json.loads(data[offset : offset + length])["files"]["model.onnx"]
    data[start + size // 2] ^= 0x01
    tampered.write_bytes(bytes(data))
    tampered.chmod(0o755)
    # A fresh cache: a cached optimised copy (checked at every start) would run instead.
    env = {**artifact_env, "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    for args in (["embed", "fox"], ["info"], ["verify"]):
        result = run_artifact(tampered, *args, env=env)
        assert result.returncode == 2 and result.stdout == b""
        lines = result.stderr.decode().splitlines()
        assert len(lines) == 1 and "model.onnx fails its sha256 check" in lines[0]


@pytest.mark.slow
def test_build_is_reproducible(
    tiny_artifact: Path, tmp_path: Path, artifact_env: dict[str, str]
) -> None:
    """A second PyInstaller run in another work dir gives a byte-identical artifact and SBOM."""
    bundle = make_tiny_bundle(tmp_path / "tiny")
    again = freeze.build(bundle, tmp_path / "dist", tmp_path / "work")
    assert sha256(again) == sha256(tiny_artifact)
    sboms = [run_artifact(a, "sbom", env=artifact_env) for a in (tiny_artifact, again)]
    assert sboms[0].returncode == 0 and sboms[0].stdout.startswith(b"{")
    assert sboms[0].stdout == sboms[1].stdout


# ---------------------------------------------------------------------- MiniLM, frozen

ENV = shutil.which("env") or "/usr/bin/env"  # absolute: tracers run it with an empty PATH
TEXTS = b"hello\nThe quick brown fox jumps over the lazy dog.\nna\xc3\xafve caf\xc3\xa9\n"


def network_namespace() -> list[str] | None:
    """A command prefix that runs without any network, or None if the kernel forbids it."""
    if shutil.which("unshare") is None:
        return None
    for prefix in (["unshare", "-n"], ["unshare", "-r", "-n"]):
        if subprocess.run([*prefix, "true"], capture_output=True).returncode == 0:
            return prefix
    return None


def air_gapped(tmp_path: Path) -> tuple[list[str], Path]:
    """A command prefix with no network, an empty environment and a fresh HOME (skips the test
    where the kernel forbids network namespaces), and that HOME."""
    prefix = network_namespace()
    if prefix is None:
        pytest.skip("the kernel forbids network namespaces (unshare -n and unshare -r -n fail)")
    home = tmp_path / "home"
    home.mkdir()
    return [*prefix, ENV, "-i", f"HOME={home}", "PATH=/usr/bin:/bin"], home


@pytest.mark.slow
def test_minilm_artifact_matches_the_venv(
    minilm_artifact: Path, minilm_bundle: Path, artifact_env: dict[str, str]
) -> None:
    frozen = run_artifact(minilm_artifact, "embed", env=artifact_env, input=TEXTS)
    assert frozen.returncode == 0, frozen.stderr
    venv = subprocess.run(
        [os.sys.executable, "-m", "encoderfile.runtime", "--bundle", str(minilm_bundle), "embed"],
        input=TEXTS,
        capture_output=True,
        cwd=freeze.PACKAGE.parent,
        check=True,
    )
    assert frozen.stdout == venv.stdout
    rows = [json.loads(line) for line in frozen.stdout.splitlines()]
    assert [len(r["embedding"]) for r in rows] == [384] * 3
    verify = run_artifact(minilm_artifact, "verify", env=artifact_env)
    assert verify.returncode == 0 and verify.stdout.startswith(b"ok: max |diff|"), verify
    info = json.loads(run_artifact(minilm_artifact, "info", "--json", env=artifact_env).stdout)
    manifest = json.loads((minilm_bundle / "manifest.json").read_text())
    assert info["files"] == manifest["files"] and info["dimensions"] == [384, 256, 128]


@pytest.mark.slow
def test_minilm_artifact_size(minilm_artifact: Path, minilm_bundle: Path) -> None:
    model = (minilm_bundle / "model.onnx").stat().st_size
    # issue 26's budget: the runtime, its own loader and libc, the stub and the SBOM in 70 MB
    assert minilm_artifact.stat().st_size <= model + 70_000_000


@pytest.mark.slow
def test_minilm_artifact_runs_air_gapped(
    minilm_artifact: Path, artifact_env: dict[str, str], tmp_path: Path
) -> None:
    """No network namespace, an empty environment and HOME: embed, info and verify still work."""
    bare, home = air_gapped(tmp_path)
    expected = run_artifact(minilm_artifact, "embed", env=artifact_env, input=TEXTS).stdout
    offline = run_artifact(minilm_artifact, "embed", env={}, input=TEXTS, prefix=bare)
    assert offline.returncode == 0, offline.stderr
    assert offline.stdout == expected
    for args in (["info"], ["verify"]):
        result = run_artifact(minilm_artifact, *args, env={}, prefix=bare)
        assert result.returncode == 0, (args, result.stderr)
    written = {p.relative_to(home).as_posix() for p in home.glob("*/*")}
    assert written == {".cache/encoderfile"}  # e.g. no onnxruntime telemetry files


@pytest.mark.slow
def test_minilm_artifact_makes_no_network_connections(
    minilm_artifact: Path, tmp_path: Path
) -> None:
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed")
    home = tmp_path / "home"
    home.mkdir()
    log = tmp_path / "connect.log"
    bare = [ENV, "-i", f"HOME={home}", "PATH=/usr/bin:/bin"]
    tracer = [strace, "-f", "-qq", "-e", "trace=connect", "-o", str(log), *bare]
    for args in (["embed"], ["verify"]):
        result = run_artifact(minilm_artifact, *args, env={}, input=TEXTS, prefix=tracer)
        if result.returncode != 0 and b"ptrace" in result.stderr:
            pytest.skip(f"strace cannot trace here: {result.stderr.decode()[:200]}")
        assert result.returncode == 0, result.stderr
        calls = [line for line in log.read_text().splitlines() if "connect(" in line]
        remote = [
            c for c in calls if "AF_UNIX" not in c and "127.0.0.1" not in c and '"::1"' not in c
        ]
        assert remote == []
