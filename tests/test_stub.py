"""The frozen artifact's sh stub against crafted caches: a planted, foreign or world-writable
cache directory, a damaged or replaced runtime, symlinks and files at the cache path; and the
integrity check of the embedded manifest. Each runs the real frozen artifact."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.artifacts import run_artifact

pytestmark = pytest.mark.slow

PLANTED = "#!/bin/sh\necho PLANTED\n"
NOBODY = 65534


def env_without_home(tmp: Path) -> dict[str, str]:
    """What a service started under `env -i` has: no HOME, no XDG_CACHE_HOME."""
    return {"PATH": os.environ["PATH"], "TMPDIR": str(tmp)}


def plant_runtime(directory: Path) -> None:
    """A fake runtime that passes the old stub's only test (its completion marker)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "encoderfile").write_text(PLANTED)
    (directory / "encoderfile").chmod(0o755)
    (directory / ".complete").write_text("")


def runtime_sha(artifact: Path) -> str:
    for line in artifact.read_bytes()[:4096].decode(errors="replace").splitlines():
        if line.startswith("sha="):
            return line[4:]
    raise AssertionError("no sha= line in the stub")


def embeds(result: subprocess.CompletedProcess[bytes]) -> None:
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.startswith(b'{"embedding":[') and b"PLANTED" not in result.stdout


def one_error_line(result: subprocess.CompletedProcess[bytes], *expected: str) -> str:
    err = result.stderr.decode()
    assert result.returncode == 2, err
    assert err.startswith("encoderfile: ") and err.count("\n") == 1, err
    for text in expected:
        assert text in err
    assert b"PLANTED" not in result.stdout
    return err


# ------------------------------------------------------------------- item 1: a private cache


def test_without_home_the_cache_is_created_private(tiny_artifact: Path, tmp_path: Path) -> None:
    embeds(run_artifact(tiny_artifact, "embed", "hello", env=env_without_home(tmp_path)))
    cache = tmp_path / f"encoderfile-{os.getuid()}"
    mode = cache.lstat()
    assert stat.S_ISDIR(mode.st_mode) and stat.S_IMODE(mode.st_mode) == 0o700
    assert mode.st_uid == os.getuid()


def test_a_cache_planted_by_another_user_is_refused(tiny_artifact: Path, tmp_path: Path) -> None:
    cache = tmp_path / f"encoderfile-{os.getuid()}"
    plant_runtime(cache / runtime_sha(tiny_artifact))
    cache.chmod(0o755)
    for path in (cache, *cache.rglob("*")):
        os.lchown(path, NOBODY, NOBODY)  # as if user 'nobody' had made it before us
    result = run_artifact(tiny_artifact, "embed", "hello", env=env_without_home(tmp_path))
    one_error_line(result, f"belongs to uid {NOBODY}", "XDG_CACHE_HOME")


def test_a_world_writable_cache_is_refused(tiny_artifact: Path, tmp_path: Path) -> None:
    cache = tmp_path / f"encoderfile-{os.getuid()}"
    cache.mkdir()
    cache.chmod(0o777)  # ours, but anyone could swap the runtime inside
    result = run_artifact(tiny_artifact, "embed", "hello", env=env_without_home(tmp_path))
    one_error_line(result, "writable by others", "chmod go-w")
    cache.chmod(0o775)
    one_error_line(
        run_artifact(tiny_artifact, "embed", "hello", env=env_without_home(tmp_path)),
        "writable by others",
    )


def test_a_symlink_at_the_cache_root_is_refused(tiny_artifact: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    plant_runtime(elsewhere / runtime_sha(tiny_artifact))
    elsewhere.chmod(0o700)
    (tmp_path / f"encoderfile-{os.getuid()}").symlink_to(elsewhere)
    result = run_artifact(tiny_artifact, "embed", "hello", env=env_without_home(tmp_path))
    one_error_line(result, "symbolic link")


# ------------------------------------------------- item 2: a self-checking, self-healing cache


@pytest.fixture
def cache_env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "xdg")}


def extracted(artifact: Path, env: dict[str, str]) -> Path:
    embeds(run_artifact(artifact, "embed", "hello", env=env))
    return Path(env["XDG_CACHE_HOME"]) / "encoderfile" / runtime_sha(artifact)


def test_a_replaced_runtime_binary_is_not_run(tiny_artifact: Path, cache_env: dict) -> None:
    runtime = extracted(tiny_artifact, cache_env)
    binary = runtime / "encoderfile"
    binary.unlink()
    binary.write_text(PLANTED)
    binary.chmod(0o755)
    embeds(run_artifact(tiny_artifact, "embed", "hello", env=cache_env))
    assert PLANTED.encode() not in binary.read_bytes()


def test_a_modified_library_is_extracted_again(tiny_artifact: Path, cache_env: dict) -> None:
    runtime = extracted(tiny_artifact, cache_env)
    library = max(runtime.rglob("*.so*"), key=lambda p: p.stat().st_size)
    original = library.read_bytes()
    with library.open("r+b") as fh:  # same size, one byte flipped in place
        fh.seek(len(original) // 2)
        fh.write(bytes([original[len(original) // 2] ^ 0xFF]))
    embeds(run_artifact(tiny_artifact, "embed", "hello", env=cache_env))
    assert library.read_bytes() == original


def test_a_deleted_file_is_extracted_again(tiny_artifact: Path, cache_env: dict) -> None:
    runtime = extracted(tiny_artifact, cache_env)
    victim = next(p for p in sorted(runtime.rglob("*.so*")) if p.is_file())
    victim.unlink()
    embeds(run_artifact(tiny_artifact, "embed", "hello", env=cache_env))
    assert victim.is_file()


def test_a_symlink_at_the_runtime_path_is_not_followed(
    tiny_artifact: Path, cache_env: dict, tmp_path: Path
) -> None:
    runtime = extracted(tiny_artifact, cache_env)
    shutil.rmtree(runtime)
    planted = tmp_path / "planted"
    plant_runtime(planted)
    runtime.symlink_to(planted)
    embeds(run_artifact(tiny_artifact, "embed", "hello", env=cache_env))
    assert not runtime.is_symlink() and runtime.is_dir()
    assert (planted / "encoderfile").read_text() == PLANTED  # the target was left alone


@pytest.mark.parametrize("kind", ["dangling symlink", "plain file"])
def test_a_dangling_symlink_or_file_at_the_runtime_path_heals(
    tiny_artifact: Path, cache_env: dict, tmp_path: Path, kind: str
) -> None:
    runtime = extracted(tiny_artifact, cache_env)
    shutil.rmtree(runtime)
    if kind == "plain file":
        runtime.write_text("not a runtime")
    else:
        runtime.symlink_to(tmp_path / "gone")
    embeds(run_artifact(tiny_artifact, "embed", "hello", env=cache_env))
    assert runtime.is_dir() and not runtime.is_symlink()


# ----------------------------------------------------- item 3: the manifest is hash-checked


def test_a_flipped_manifest_byte_is_refused(
    tiny_artifact: Path, artifact_env: dict, tmp_path: Path
) -> None:
    data = tiny_artifact.read_bytes()
    assert data.count(b'"dimension": 8') == 1
    tampered = tmp_path / "tiny"
    tampered.write_bytes(data.replace(b'"dimension": 8', b'"dimension": 9'))
    tampered.chmod(0o755)
    embeds(run_artifact(tiny_artifact, "embed", "hello", env=artifact_env))  # the original works
    for args in (("info",), ("embed", "--dimensions", "9", "hello"), ("verify",)):
        result = run_artifact(tampered, *args, env=artifact_env)
        one_error_line(result, "manifest.json")
