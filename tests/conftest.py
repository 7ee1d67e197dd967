"""Shared fixtures: tiny models built in code, real models exported once per machine, artifacts.

The `slow` marker (pyproject.toml) means an integration test: it starts a process, loads a real
model or torch/transformers, freezes, builds a wheel, runs schemathesis, Ray or a browser, or waits
on timeouts and signals. Tests are marked by hand (per test, or a module's `pytestmark`), except
where a fixture decides: a test whose fixture closure includes one of SLOW_FIXTURES is marked slow
here at collection (tests/test_markers.py checks it). The tiny encoder, tiny bundles and the 1 MB
random-weight CLIP (clip_dir, exported once per machine) count as tiny models.
"""

from __future__ import annotations

import pytest

from tests.fixtures.artifacts import *  # noqa: F403
from tests.fixtures.image_bundle import *  # noqa: F403
from tests.fixtures.models import *  # noqa: F403
from tests.fixtures.reranker import *  # noqa: F403
from tests.fixtures.sparse import *  # noqa: F403
from tests.fixtures.tiktoken_offline import *  # noqa: F403

SLOW_FIXTURES = frozenset(
    {
        "cross_encoder_dir",  # torch: the random cross-encoder (reranker bundles, artifact)
        "splade_dir",  # torch: the SPLADE export (splade_bundle, splade_artifact)
        "minilm_dir",  # the real all-MiniLM-L6-v2 (minilm_bundle, minilm_artifact, minilm_server)
        "nomic_full_bundle",  # a full-size NomicBERT
        "freeze_work_dir",  # a PyInstaller runtime (tiny_artifact, minilm_artifact)
        "artifact_env",  # runs a frozen artifact
        "tiny_server",  # server processes (tests/runtime/serve)
        "nomic_like",
        "image_server",
        "mcp_server",
    }
)


@pytest.hookimpl(tryfirst=True)  # before -m deselects
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
