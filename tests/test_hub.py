"""The Hub path as it runs for users, against a loopback server speaking the Hub's download API
(HF_ENDPOINT): pin, a build that downloads (and resumes an interrupted download), an offline
rebuild from the cache, and one-line refusals of a wrong sha256 and an unknown revision."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import numpy as np
import openai
import pytest
import yaml

from tests.fixtures.hub_server import HubServer, Repo
from tests.fixtures.models import recipe_dict, write_recipe, write_tiny_model
from tests.runtime.serve.conftest import Server
from tests.test_cli import cli, fails_cleanly, hub_model

pytestmark = pytest.mark.slow  # integration: the CLI in a process against a loopback Hub

COMMIT = "5f4e3d2c1b0a99887766554433221100ffeeddcc"
# A large file beside the model (as config or external weights would be): huggingface_hub writes
# downloads in 10 MB chunks, so only a file past one chunk can be resumed part-way.
FILES = ("onnx/model.onnx", "tokenizer.json", "weights.bin")
WEIGHTS = np.random.default_rng(0).bytes(24 * 1024 * 1024)


@pytest.fixture
def hub(tmp_path: Path) -> HubServer:
    model_dir = write_tiny_model(tmp_path / "model")
    served = {name: (model_dir / Path(name).name).read_bytes() for name in FILES[:2]}
    served["weights.bin"] = WEIGHTS
    with HubServer({"org/tiny": Repo(COMMIT, served)}) as server:
        yield server


def hub_recipe(path: Path, revision: str = COMMIT, pins: dict | None = None) -> Path:
    data = recipe_dict(path.parent)
    data["model"] = hub_model("org/tiny", revision, pins or dict.fromkeys(FILES), FILES[0])
    return write_recipe(path, data)


def in_terminal(argv: list[str], environ: dict[str, str]) -> tuple[int, str]:
    """Run `argv` with stdout and stderr on a pseudo-terminal, as in a user's shell."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # 120 columns
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env={**os.environ, **environ}
    )
    os.close(slave)
    shown = bytearray()
    while True:
        try:
            chunk = os.read(master, 1 << 16)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    os.close(master)
    return proc.wait(120), shown.decode(errors="replace").replace("\r\n", "\n")


def env(hub: HubServer, cache: Path, offline: bool = False) -> dict[str, str]:
    return {
        "HF_ENDPOINT": hub.url,
        "HF_HUB_CACHE": str(cache),
        "HF_HUB_OFFLINE": "1" if offline else "0",
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }


def test_pin_build_resume_offline_rebuild(hub: HubServer, tmp_path: Path) -> None:
    recipe_path = hub_recipe(tmp_path / "r.yaml")
    pinned = cli("pin", recipe_path, env=env(hub, tmp_path / "pin-cache"))
    assert pinned.returncode == 0, pinned.stderr
    pins = yaml.safe_load(recipe_path.read_text())["model"]["hub"]["files"]
    served = hub.repos["org/tiny"].files
    assert pins == {name: hashlib.sha256(served[name]).hexdigest() for name in FILES}

    # A fresh cache: the build downloads, and the weights' first GET stops half-way.
    hub.cut.add("weights.bin")
    pinning = len(hub.downloads("weights.bin"))
    cache = tmp_path / "cache"
    argv = [sys.executable, "-m", "encoderfile.cli", "build", str(recipe_path), "--bundle-only"]
    code, shown = in_terminal([*argv, "--out", str(tmp_path / "b")], env(hub, cache))
    assert code == 0, shown
    ranges = hub.downloads("weights.bin")[pinning:]
    assert ranges == [None, f"bytes={10 * 1024 * 1024}-"], ranges  # resumed after the first chunk
    assert "Trying to resume download" in shown and "warning" not in shown  # all pinned
    assert re.search(r"weights\.bin: +100%", shown), shown  # huggingface_hub's progress bar
    assert re.search(r"^\[resolve\] \d+\.\d s", shown, re.M), shown  # stage lines on a terminal
    manifest = json.loads((tmp_path / "b" / "tiny" / "manifest.json").read_text())
    assert manifest["model"]["repo"] == "org/tiny" and manifest["model"]["revision"] == COMMIT
    assert manifest["pinned"] is True and manifest["model"]["files"] == pins

    asked = len(hub.requests)
    offline = cli(
        "build", recipe_path, "--bundle-only", "--out", tmp_path / "c", env=env(hub, cache, True)
    )
    assert offline.returncode == 0, offline.stderr
    assert len(hub.requests) == asked, "an offline build asked the Hub"
    again = json.loads((tmp_path / "c" / "tiny" / "manifest.json").read_text())
    assert again["files"] == manifest["files"]

    # The artifact answers OpenAI clients that name the repo it was built from.
    command = [
        sys.executable,
        "-m",
        "encoderfile.runtime",
        "--bundle",
        str(tmp_path / "b" / "tiny"),
    ]
    server = Server(command, tmp_path / "serve.log", "--no-grpc").wait_ready()
    try:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
        reply = client.embeddings.create(model="org/tiny", input="the quick brown fox")
        assert len(reply.data[0].embedding) == 8
        assert [m.id for m in client.models.list()] == ["tiny", "org/tiny"]
    finally:
        assert server.stop() == 0


def test_wrong_sha256_is_one_line(hub: HubServer, tmp_path: Path) -> None:
    recipe_path = hub_recipe(tmp_path / "r.yaml", pins={FILES[0]: "0" * 64, FILES[1]: "1" * 64})
    out = tmp_path / "b"
    result = cli("build", recipe_path, "--bundle-only", "--out", out, env=env(hub, tmp_path / "c"))
    fails_cleanly(result, out, "onnx/model.onnx sha256 is", "the recipe pins 000000000000")


def test_unknown_revision_is_one_line(hub: HubServer, tmp_path: Path) -> None:
    unknown = "0123456789abcdef0123456789abcdef01234567"
    recipe_path = hub_recipe(tmp_path / "r.yaml", revision=unknown)
    out = tmp_path / "b"
    for command in (("pin", recipe_path), ("build", recipe_path, "--bundle-only", "--out", out)):
        result = cli(*command, env=env(hub, tmp_path / "c"))
        fails_cleanly(result, out, f"org/tiny has no revision {unknown}")


def test_unknown_repo_and_missing_file_are_one_line(hub: HubServer, tmp_path: Path) -> None:
    absent = hub_recipe(tmp_path / "absent.yaml")
    absent.write_text(absent.read_text().replace("org/tiny", "org/absent"))
    result = cli("pin", absent, env=env(hub, tmp_path / "c"))
    fails_cleanly(result, tmp_path / "b", "the Hub has no repo org/absent", "HF_TOKEN")
    missing = hub_recipe(tmp_path / "missing.yaml")
    missing.write_text(missing.read_text().replace("weights.bin", "weights.safetensors"))
    result = cli("pin", missing, env=env(hub, tmp_path / "c"))
    fails_cleanly(result, tmp_path / "b", f"org/tiny@{COMMIT} has no file weights.safetensors")
