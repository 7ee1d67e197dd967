"""The builder's command line against careless use: usage errors, odd recipes and paths, Ctrl-C
and SIGTERM mid-build. Each answers one line `encoderfile: ...` (exit 2), or 130 / 143."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.models import recipe_dict, write_recipe, write_tiny_model

pytestmark = pytest.mark.slow  # integration: the builder CLI in a process, signals


def cli(*args: str | Path, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        [sys.executable, "-m", "encoderfile.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=120,
        **kwargs,
    )


def one_error_line(result: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("encoderfile: ") and result.stderr.count("\n") == 1, (
        result.stderr
    )
    for text in expected:
        assert text in result.stderr


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    return write_recipe(tmp_path / "r.yaml", recipe_dict(write_tiny_model(tmp_path / "model")))


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("build",), "Missing argument"),
        (("build", "r.yaml", "--nope"), "No such option"),
        (("frobnicate",), "No such command"),
        (("build", "."), "is a directory"),
    ],
)
def test_usage_errors_are_one_line(
    args: tuple[str, ...], expected: str, tmp_path: Path, recipe: Path
) -> None:
    one_error_line(cli(*args, cwd=tmp_path), expected)


@pytest.mark.parametrize("precision", [["fp32"], {"int8": True}])
def test_precision_of_the_wrong_type_is_a_recipe_error(tmp_path: Path, precision: object) -> None:
    model = write_tiny_model(tmp_path / "model")
    path = write_recipe(tmp_path / "r.yaml", recipe_dict(model, precision=precision))
    one_error_line(cli("build", path, "--bundle-only", "--out", tmp_path / "b"), "precision")


def test_yaml_nested_20000_deep_is_a_recipe_error(tmp_path: Path) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text("name: " + "[" * 20_000 + "]" * 20_000 + "\n")
    one_error_line(cli("build", path), "nested too deeply")


@pytest.mark.parametrize("flag", ["--out", "--dist"])
def test_out_or_dist_naming_a_file_is_a_usage_error(
    tmp_path: Path, recipe: Path, flag: str
) -> None:
    existing = tmp_path / "afile"
    existing.write_text("keep me")
    one_error_line(cli("build", recipe, flag, existing), "is a file, not a directory")
    assert existing.read_text() == "keep me"


# Runs the real builder in a process that sends itself a signal (argv[1]) while the bundle's
# staging directory is being written: Ctrl-C or SIGTERM mid-build, at the worst moment (the
# files are written too fast to hit that window from outside).
SIGNAL_WHILE_STAGING = """
import os, signal, sys
from pathlib import Path
from encoderfile import cli
sig = signal.Signals[sys.argv.pop(1)]
write_bytes = Path.write_bytes
def write_then_signal(self, data):
    written = write_bytes(self, data)
    if ".partial-" in self.parent.name:
        os.kill(os.getpid(), sig)
    return written
Path.write_bytes = write_then_signal
sys.argv = ["encoderfile", *sys.argv[1:]]
cli.main()
"""


@pytest.mark.parametrize(
    ("sig", "code", "said"),
    [
        ("SIGINT", 130, "encoderfile: interrupted; nothing was written\n"),
        ("SIGTERM", 143, "encoderfile: interrupted; nothing was written\n"),
    ],
)
def test_signal_mid_build_exits_conventionally_leaving_nothing(
    tmp_path: Path, recipe: Path, sig: str, code: int, said: str
) -> None:
    out = tmp_path / "build"
    result = subprocess.run(
        [sys.executable, "-c", SIGNAL_WHILE_STAGING, sig, "build", str(recipe), "--bundle-only"]
        + ["--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == code, result.stderr
    assert result.stderr == said
    assert sorted(p.name for p in out.iterdir()) == []


def test_stale_partial_dir_of_a_killed_build_is_removed(tmp_path: Path, recipe: Path) -> None:
    out = tmp_path / "build"
    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid that no longer runs, as after SIGKILL
    stale = out / f".tiny.partial-{gone.pid}"
    stale.mkdir(parents=True)
    (stale / "model.onnx").write_bytes(b"half")
    assert cli("build", recipe, "--bundle-only", "--out", out).returncode == 0
    assert sorted(p.name for p in out.iterdir()) == ["tiny"]


# Sends the signal (argv[1]) while module argv[2] is being imported: the handler's exception
# surfaces as an ImportError, as it does when it lands inside an extension module's init.
SIGNAL_WHILE_IMPORTING = """
import importlib.abc, os, signal, sys
sig, target = signal.Signals[sys.argv.pop(1)], sys.argv.pop(1)
class Interrupt(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, module=None):
        if name == target:
            sys.meta_path.remove(self)
            try:
                os.kill(os.getpid(), sig)
                for _ in range(10000):
                    pass  # the Python-level handler runs here
            except BaseException as e:
                raise ImportError("initialization failed") from e
        return None
sys.meta_path.insert(0, Interrupt())
sys.argv = ["encoderfile", *sys.argv[1:]]
from encoderfile import cli
cli.main()
"""


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("module", ["typer", "encoderfile.compiler"])
def test_signal_while_importing_is_one_line(
    tmp_path: Path, recipe: Path, sig: str, module: str
) -> None:
    """typer: before main() runs (the console script's own imports); encoderfile.compiler:
    inside the command, where an interrupted import was 'ImportError: initialization failed'."""
    out = tmp_path / "build"
    result = subprocess.run(
        [sys.executable, "-c", SIGNAL_WHILE_IMPORTING, sig, module, "build", str(recipe)]
        + ["--bundle-only", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == {"SIGINT": 130, "SIGTERM": 143}[sig], result.stderr
    assert result.stderr == "encoderfile: interrupted; nothing was written\n"
    assert not out.exists() or sorted(p.name for p in out.iterdir()) == []
