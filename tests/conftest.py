"""Shared paths and fixtures: the tiny checkpoints and the real photos."""

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURE_BUILD = REPO_ROOT / "fixtures" / "build"
CHECKPOINT_NAMES = ("tiny-tied", "tiny-untied")
PROJECT_IMAGES = REPO_ROOT / "fixtures" / "images"
# Real photos shared by the project's developers and CI, kept beside the checkout.
SHARED_IMAGES = REPO_ROOT.parent / "shared" / "images"


def shared_photos() -> list[Path]:
    """List the shared photos; CI must have them, elsewhere the shipped photos stand in."""
    photos = sorted(SHARED_IMAGES.glob("*.png")) + sorted(SHARED_IMAGES.glob("*.jpg"))
    if photos:
        return photos
    if os.environ.get("CI"):
        raise RuntimeError(f"no photos found in {SHARED_IMAGES}; CI expects the shared images there")
    warnings.warn(f"no photos in {SHARED_IMAGES}; the photo tests use the shipped demo photos instead", stacklevel=2)
    return sorted(PROJECT_IMAGES.glob("*.png")) + sorted(PROJECT_IMAGES.glob("*.jpg"))


def _ensure_fixtures() -> None:
    missing = [n for n in CHECKPOINT_NAMES if not (FIXTURE_BUILD / n / "config.json").exists()]
    if missing:
        subprocess.run(
            [sys.executable, "-m", "fixtures.build_checkpoints", "--out", str(FIXTURE_BUILD)],
            cwd=REPO_ROOT,
            check=True,
        )


@pytest.fixture(scope="session")
def checkpoint_dirs() -> dict[str, Path]:
    """Map each tiny checkpoint's name to its directory, building them when missing."""
    _ensure_fixtures()
    return {name: FIXTURE_BUILD / name for name in CHECKPOINT_NAMES}


@pytest.fixture(scope="session")
def tiny_tied(checkpoint_dirs) -> Path:
    return checkpoint_dirs["tiny-tied"]


@pytest.fixture(scope="session")
def tiny_untied(checkpoint_dirs) -> Path:
    return checkpoint_dirs["tiny-untied"]
