"""Shared fixtures. Tests that need ../shared (real images, weights) skip with a reason when it is absent."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def find_shared() -> Path | None:
    """The shared data folder: $CXR_EDGE_SHARED, else <repo>/../shared."""
    env = os.environ.get("CXR_EDGE_SHARED")
    candidate = Path(env) if env else REPO.parent / "shared"
    return candidate if (candidate / "data").is_dir() else None


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    path = find_shared()
    if path is None:
        pytest.skip("needs ../shared (real CXR images and weights); set CXR_EDGE_SHARED or place it beside the repo")
    return path


@pytest.fixture(scope="session")
def shared_data(shared_dir) -> Path:
    return shared_dir / "data"


@pytest.fixture(scope="session")
def shared_weights(shared_dir) -> Path:
    return shared_dir / "weights"


@pytest.fixture(scope="session")
def tiny_pack(tmp_path_factory) -> Path:
    """A real int8 pack of three tiny random-weight models (built once per session; needs TensorFlow)."""
    pytest.importorskip("tensorflow", reason="building a test pack needs TensorFlow (pip install -e '.[train]')")
    from tinypack import build_tiny_pack

    return build_tiny_pack(tmp_path_factory.mktemp("packs") / "tiny")
