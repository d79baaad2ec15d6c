"""Shared fixtures: the bundled sample (always present) and the shared NuInsSeg data (optional)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
#: Six spleen tiles in the NuInsSeg release layout, shipped with the repository (CC BY 4.0).
SAMPLE_ROOT = REPO_ROOT / "examples" / "NuInsSeg"
#: The development machines' copy of one full NuInsSeg organ; absent in a user's fresh clone.
#: NUCLEISAM_SHARED_DATA points elsewhere (e.g. from a git worktree that is not next to shared/).
SHARED_DATA = Path(os.environ.get("NUCLEISAM_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
SHARED_NUINSSEG = SHARED_DATA / "NuInsSeg"
SHARED_SPLEEN = SHARED_NUINSSEG / "human spleen"
SHARED_UNLABELLED = SHARED_DATA / "NuInsSeg-unlabelled"

requires_shared_data = pytest.mark.skipif(
    not SHARED_SPLEEN.is_dir(),
    reason=f"shared NuInsSeg spleen tiles not found at {SHARED_SPLEEN} (only on development/CI machines)",
)


@pytest.fixture(scope="session")
def sample_root() -> Path:
    """Root of the bundled NuInsSeg sample (organ folders below it)."""
    assert SAMPLE_ROOT.is_dir(), f"bundled sample missing at {SAMPLE_ROOT}"
    return SAMPLE_ROOT


@pytest.fixture(scope="session")
def shared_nuinsseg() -> Path:
    """Root of the shared NuInsSeg copy; tests using it skip where it is absent."""
    if not SHARED_SPLEEN.is_dir():
        pytest.skip(f"shared NuInsSeg data not found at {SHARED_NUINSSEG}")
    return SHARED_NUINSSEG
