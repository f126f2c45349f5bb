"""Shared test set-up: vpose_d2 (and so its compat shims) is imported before Detectron2."""

from pathlib import Path

import pytest

import vpose_d2  # noqa: F401  isort: skip  (compat must run before detectron2 imports)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real fixtures in ../shared/data; tests that need them skip where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real fixtures not found at {SHARED_DATA} (../shared/data beside the repo)")
    return SHARED_DATA
