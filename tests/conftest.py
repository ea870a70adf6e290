"""Test-wide settings: no progress bars, and paths to the shared development data."""

import os

os.environ.setdefault("JAXLAB_NO_PROGRESS", "1")

import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def shared_data_dir() -> pathlib.Path | None:
    """``../shared/data`` beside the checkout (or $JAXLAB_SHARED_DATA); None when absent."""
    env = os.environ.get("JAXLAB_SHARED_DATA")
    cands = [pathlib.Path(env)] if env else []
    cands.append(REPO.parent / "shared" / "data")
    for c in cands:
        if c.is_dir():
            return c
    return None


@pytest.fixture
def pfllib_digits_dir():
    d = shared_data_dir()
    if d is None or not (d / "pfllib_digits28_dir01_20c").is_dir():
        pytest.skip("shared PFLlib digits partition not found (set JAXLAB_SHARED_DATA=.../shared/data)")
    return d / "pfllib_digits28_dir01_20c"
