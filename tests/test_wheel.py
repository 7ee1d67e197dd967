"""A wheel installed into a fresh venv, outside the checkout, freezes a working artifact."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.models import recipe_dict, write_recipe, write_tiny_model

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_installed_wheel_builds_a_working_artifact(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + ["-w", str(wheels), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = wheels.glob("encoderfile-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    # A real install, as a user gets it: the wheel and its dependencies (pip's cache keeps it quick).
    subprocess.run([python, "-m", "pip", "install", "-q", str(wheel)], check=True)
    own_site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()

    work = tmp_path / "elsewhere"  # not the checkout: nothing may come from ROOT
    recipe = write_recipe(work / "tiny.yaml", recipe_dict(write_tiny_model(work / "model")))
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "c")}
    where = subprocess.run(
        [python, "-c", "import encoderfile, encoderfile.templates as t; print(t.__file__)"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert where.startswith(own_site), where  # the installed copy, not the checkout
    build = subprocess.run(
        [venv / "bin" / "encoderfile", "build", recipe, "--out", "b", "--dist", "d"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr
    embedded = subprocess.run(
        [work / "d" / "tiny", "embed", "hello world"], env=env, capture_output=True, check=True
    )
    assert len(json.loads(embedded.stdout)["embedding"]) == 8
