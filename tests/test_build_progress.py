"""`encoderfile build` as a user runs it: stage lines with times, the unpinned-file warning and
`pinned` in the manifest and `info`; `encoderfile schema` from any directory."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from encoderfile import recipe
from tests.fixtures.models import recipe_dict, write_recipe, write_tiny_model
from tests.test_cli import cli

pytestmark = pytest.mark.slow  # integration: the builder CLI in a process


def info(bundle: Path) -> tuple[dict, str]:
    runtime = [sys.executable, "-m", "encoderfile.runtime", "--bundle", str(bundle), "info"]
    as_json = subprocess.run([*runtime, "--json"], capture_output=True, text=True, timeout=60)
    text = subprocess.run(runtime, capture_output=True, text=True, timeout=60)
    assert as_json.returncode == text.returncode == 0, as_json.stderr + text.stderr
    return json.loads(as_json.stdout), text.stdout


def test_build_reports_stages_and_unpinned_files(tmp_path: Path) -> None:
    model_dir = write_tiny_model(tmp_path / "model")
    data = recipe_dict(model_dir, precision="fp16")
    recipe_path = write_recipe(tmp_path / "r.yaml", data)
    result = cli("build", recipe_path, "--bundle-only", "--progress", "--out", tmp_path / "b")
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    timed = [m.group(1) for line in lines if (m := re.fullmatch(r"\[(\w+)\] \d+\.\d s", line))]
    assert timed == ["resolve", "quantize", "splice", "verify", "gate", "bundle"]
    assert any(line.startswith("[resolve] local ") for line in lines)
    assert re.search(r"^\[done\] \d+\.\d s \(resolve \d+\.\d s, quantize", result.stderr, re.M)
    warning = next(line for line in lines if line.startswith("warning:"))
    assert "no sha256 pin for 2 file(s): model: model.onnx, model: tokenizer.json" in warning
    assert f"encoderfile pin {recipe_path}" in warning and "pinned: false" in warning
    described, text = info(tmp_path / "b" / "tiny")
    assert described["pinned"] is False and "NO: some source files had no sha256 pin" in text

    assert cli("pin", recipe_path).returncode == 0
    quiet = cli("build", recipe_path, "--bundle-only", "--no-progress", "--out", tmp_path / "c")
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr.splitlines() == [
        f"bundle {tmp_path / 'c' / 'tiny'} (dimension 8, verified)"
    ]
    described, text = info(tmp_path / "c" / "tiny")
    assert described["pinned"] is True and re.search(r"^pinned\s+yes$", text, re.M)


def test_schema_prints_to_stdout_anywhere_or_writes_a_path(tmp_path: Path) -> None:
    printed = cli("schema", cwd=tmp_path)
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout == recipe.json_schema()
    out = tmp_path / "schema.json"
    written = cli("schema", "--out", out, cwd=tmp_path)
    assert written.returncode == 0 and out.read_text() == recipe.json_schema()
    refused = cli("schema", "--out", tmp_path / "missing" / "s.json", cwd=tmp_path)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert refused.stderr.startswith("encoderfile: cannot write ")
