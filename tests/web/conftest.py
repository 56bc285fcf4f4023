"""Fixtures for the page tests: the seeded store chain (see shop.py) and a client on the app."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.web.shop import make_app, seed


@pytest.fixture
def shop(engine):
    """The seeded database."""
    seed(engine)
    return engine


@pytest.fixture
def web(shop):
    """A TestClient on the app as tests build it (operator pages public, Shanghai time)."""
    with TestClient(make_app(shop), base_url="http://scrm") as client:
        yield client
