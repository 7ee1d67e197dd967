"""One file for every x86-64 Linux: the runtime carries its own loader and C library.

The slow tests run the real MiniLM artifact in a chroot that holds only busybox-static (Debian's
`busybox-static`), /dev/null and writable /tmp and $HOME — no libc, no ELF interpreter, no /proc —
and audit every ELF file of the frozen runtime for libraries it would need from the host.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from encoderfile import elf, freeze
from encoderfile.runtime.artifact import TRAILER
from tests.fixtures.artifacts import run_artifact

BUSYBOX = Path("/bin/busybox")  # Debian's busybox-static (build.py setup installs it)
APPLETS = (
    *("sh", "ls", "tail", "head", "tar", "gzip", "sha256sum", "mkdir", "mktemp", "mv", "rm"),
    *("cmp", "id"),
)
TEXTS = "hello\nThe quick brown fox jumps over the lazy dog.\nnaïve café\n".encode()


def make_rootfs(root: Path, busybox: Path = BUSYBOX) -> Path:
    """A root file system holding only a static busybox, /dev/null, /tmp and /home/user."""
    (root / "bin").mkdir(parents=True)
    shutil.copyfile(busybox, root / "bin" / "busybox")
    (root / "bin" / "busybox").chmod(0o755)
    for applet in APPLETS:
        (root / "bin" / applet).symlink_to("busybox")
    for path in ("tmp", "home/user", "dev", "app"):
        (root / path).mkdir(parents=True, exist_ok=True)
    (root / "tmp").chmod(0o1777)
    os.mknod(root / "dev" / "null", 0o666 | 0o020000, os.makedev(1, 3))
    (root / "dev" / "null").chmod(0o666)
    return root


def chroot_prefix(root: Path) -> list[str]:
    """`chroot ROOT` as root, else inside a user namespace; skip where neither is allowed."""
    chroot = shutil.which("chroot") or "/usr/sbin/chroot"
    if os.geteuid() == 0:
        return [chroot, str(root)]
    unshare = shutil.which("unshare")
    if unshare is None or subprocess.run([unshare, "-r", "true"]).returncode != 0:
        pytest.skip("chroot needs root or an unprivileged user namespace (unshare -r)")
    return [unshare, "-r", chroot, str(root)]


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory: pytest.TempPathFactory, minilm_artifact: Path) -> Path:
    if not BUSYBOX.is_file():
        pytest.skip(f"{BUSYBOX} is missing: install busybox-static (python3 build.py setup)")
    if os.geteuid() != 0:
        pytest.skip("the rootfs needs a /dev/null device node: run as root (CI does)")
    root = make_rootfs(tmp_path_factory.mktemp("busybox") / "root")
    shutil.copyfile(minilm_artifact, root / "app" / "minilm")
    (root / "app" / "minilm").chmod(0o755)
    return root


def in_chroot(
    root: Path, *args: str, home: bool = True, input: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    env = {"PATH": "/bin", **({"HOME": "/home/user"} if home else {})}
    return subprocess.run(
        [*chroot_prefix(root), "/app/minilm", *args],
        input=input,
        env=env,
        capture_output=True,
        timeout=300,
    )


def vectors(jsonl: bytes) -> np.ndarray:
    return np.array([json.loads(ln)["embedding"] for ln in jsonl.splitlines()], dtype=np.float32)


@pytest.mark.slow
def test_the_artifact_runs_in_a_busybox_chroot(
    rootfs: Path, minilm_artifact: Path, artifact_env: dict[str, str]
) -> None:
    """embed, info and verify with no libc and no /proc: the host's vectors, bit for bit."""
    host = run_artifact(minilm_artifact, "embed", env=artifact_env, input=TEXTS)
    assert host.returncode == 0, host.stderr
    chrooted = in_chroot(rootfs, "embed", input=TEXTS)
    assert chrooted.returncode == 0, chrooted.stderr.decode()
    assert chrooted.stdout == host.stdout  # same bytes: same vectors, same formatting
    argv = in_chroot(rootfs, "embed", "naïve café")  # UTF-8 argv without any locale files
    assert vectors(argv.stdout).tobytes() == vectors(host.stdout)[2:].tobytes()
    for command in (["info"], ["verify"]):
        result = in_chroot(rootfs, *command)
        assert result.returncode == 0, (command, result.stderr.decode())
    assert b"max |diff| 0 " in in_chroot(rootfs, "verify").stdout
    # the user cache: the runtime under $HOME/.cache, and the optimised model beside it
    cache = rootfs / "home" / "user" / ".cache" / "encoderfile"
    assert (cache / "models").is_dir() and len(list(cache.glob("*/.complete"))) == 1
    # without HOME the stub falls back to $TMPDIR (here /tmp) and still runs
    bare = in_chroot(rootfs, "embed", input=TEXTS, home=False)
    assert bare.returncode == 0 and bare.stdout == host.stdout, bare.stderr.decode()
    assert list((rootfs / "tmp").glob("encoderfile-*/*/.complete"))


@pytest.mark.slow
def test_serve_in_a_busybox_chroot_answers_over_loopback(
    rootfs: Path, minilm_artifact: Path, artifact_env: dict[str, str]
) -> None:
    """serve in the chroot answers one request on loopback and stops cleanly on SIGTERM."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [*chroot_prefix(rootfs), "/app/minilm", "serve", "--port", str(port), "--no-grpc"]
    server = subprocess.Popen(
        command,
        env={"PATH": "/bin", "HOME": "/home/user"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, server.stderr.read().decode()  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "serve did not become ready"
            time.sleep(0.2)
        request = urllib.request.Request(
            f"{url}/embed",
            data=json.dumps({"input": "hello"}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as r:
            served = np.array(json.load(r)["embedding"], dtype=np.float32)
    finally:
        server.terminate()  # SIGTERM reaches the runtime itself: the stub exec'd the loader
        _, err = server.communicate(timeout=60)
    assert server.returncode == 0, err.decode()
    assert b"stopped" in err
    host = run_artifact(minilm_artifact, "embed", "hello", env=artifact_env)
    assert served.tobytes() == vectors(host.stdout)[0].tobytes()


def extract_runtime(artifact: Path, target: Path) -> Path:
    """The runtime.tar.gz embedded in `artifact`, extracted into `target`."""
    data = artifact.read_bytes()
    _, offset, length = TRAILER.unpack(data[-TRAILER.size :])
    start, size = json.loads(data[offset : offset + length])["runtime"]
    archive = target.with_suffix(".tar.gz")
    archive.write_bytes(data[start : start + size])
    with tarfile.open(archive) as tar:
        tar.extractall(target, filter="tar")
    return target


@pytest.mark.slow
def test_no_elf_in_the_runtime_needs_a_library_of_the_host(
    minilm_artifact: Path, tmp_path: Path
) -> None:
    onedir = extract_runtime(minilm_artifact, tmp_path / "runtime")
    assert elf.audit(onedir, freeze.LIBRARY_DIR) == []
    libdir = onedir / freeze.LIBRARY_DIR
    loader = libdir / freeze.loader().name
    assert elf.read(loader).interpreter is None and not elf.read(loader).needed  # self-contained
    assert (libdir / "libc.so.6").is_file()
    # the loader and libc are the build machine's, byte for byte (never stripped)
    assert loader.read_bytes() == freeze.loader().read_bytes()
    elves = [p for p in onedir.rglob("*") if p.is_file() and elf.is_elf(p)]
    assert len(elves) > 50


def test_the_audit_names_a_library_the_runtime_lacks(tmp_path: Path) -> None:
    """A copy of this Python alone needs libc (and libpython) from outside: the audit says so."""
    (tmp_path / "_internal").mkdir()
    shutil.copyfile(Path(sys.executable).resolve(), tmp_path / "python")
    problems = elf.audit(tmp_path, "_internal")
    assert "python needs libc.so.6, which the runtime does not carry" in problems
    (tmp_path / "_internal" / "libc.so.6").write_bytes(b"")
    assert not any("libc.so.6" in p for p in elf.audit(tmp_path, "_internal"))


def test_elf_reading() -> None:
    python = elf.read(Path(sys.executable).resolve())
    assert python.interpreter is not None and python.interpreter.startswith("/")
    assert "libc.so.6" in python.needed or any(n.startswith("libpython") for n in python.needed)
    assert elf.read(freeze.loader()).interpreter is None
    with pytest.raises(ValueError):
        elf.read(Path(__file__))
