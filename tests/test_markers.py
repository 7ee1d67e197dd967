"""The `slow` rule for fixtures (tests/conftest.py) holds over the suite as collected."""

from __future__ import annotations

import pytest

from tests.conftest import SLOW_FIXTURES, pytest_collection_modifyitems


def test_every_collected_test_using_a_slow_fixture_is_marked_slow(
    request: pytest.FixtureRequest,
) -> None:
    """Under `-m "not slow"` an unmarked test here would have been run, not deselected."""
    unmarked = [
        item.nodeid
        for item in request.session.items
        if SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ()))
        and item.get_closest_marker("slow") is None
    ]
    assert unmarked == []


class FakeItem:
    def __init__(self, *fixturenames: str) -> None:
        self.fixturenames = list(fixturenames)
        self.markers: list[str] = []

    def add_marker(self, marker: pytest.MarkDecorator) -> None:
        self.markers.append(marker.name)


def test_the_hook_marks_through_the_fixture_closure() -> None:
    heavy = FakeItem("tmp_path", "minilm_bundle", "minilm_dir")  # the closure names minilm_dir
    server = FakeItem("tiny_server", "shared_tiny_bundle")
    tiny = FakeItem("tmp_path", "tiny_bundle", "shared_tiny_bundle", "image_bundle", "clip_dir")
    pytest_collection_modifyitems([heavy, server, tiny])
    assert heavy.markers == server.markers == ["slow"]
    assert tiny.markers == []
