"""Shared fixtures: tiny models built in code, real models exported once per machine, artifacts."""

from tests.fixtures.artifacts import *  # noqa: F403
from tests.fixtures.image_bundle import *  # noqa: F403
from tests.fixtures.models import *  # noqa: F403
