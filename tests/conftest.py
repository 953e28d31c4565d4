"""Shared test fixtures."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

# One thread: the tests use tiny networks, and two OpenMP threads thrash when other processes share the cores.
torch.set_num_threads(1)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
MONUSEG = SHARED / "datasets" / "MoNuSeg"
LV_TEMPLATES = SHARED / "datasets" / "LV_loss_templates"
REFERENCE = SHARED / "reference"


@pytest.fixture
def monuseg_root() -> Path:
    if not MONUSEG.is_dir():
        pytest.skip(f"real MoNuSeg data not found at {MONUSEG} (the ../shared folder beside the repository)")
    return MONUSEG


@pytest.fixture
def lv_templates_root() -> Path:
    if not LV_TEMPLATES.is_dir():
        pytest.skip(f"LV loss templates not found at {LV_TEMPLATES} (the ../shared folder beside the repository)")
    return LV_TEMPLATES


@pytest.fixture
def reference_root() -> Path:
    if not REFERENCE.is_dir():
        pytest.skip(
            f"official LViT reference facts not found at {REFERENCE} (the ../shared folder beside the repository)"
        )
    return REFERENCE


# A model family from another package, registered only for the tests through the `lvseg.models` entry-point
# group (tests/plugin_package holds the package and its dist-info, as pip installs them): every contract test
# covers it, as every command does.
PLUGIN_PACKAGE = Path(__file__).resolve().parent / "plugin_package"
if str(PLUGIN_PACKAGE) not in sys.path:
    sys.path.insert(0, str(PLUGIN_PACKAGE))
