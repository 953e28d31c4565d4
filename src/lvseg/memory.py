"""How much memory a batch needs and how much this machine has: size-like options (image size, batch size, text
length) are refused before any allocation when they surely cannot fit.

The estimate is a deliberate lower bound, so that it never refuses a run that would fit: fp32 values, per input
pixel and per channel of the network's first level, of the feature maps a step keeps (for training: the
activations the backward pass reads and their gradients, summed over the resolution pyramid), plus the image
itself. Measured here (CPU, fp32, batch 2): a U-Net training step keeps 21 values per pixel and first-level
channel at 512 px, LViT 56 at 256 px, and U-Net inference 8; the constants below are below all of them. Text adds
a learned position table of ``text length x feature size`` (trained: weights, gradients and Adam's two moments)
and the token features of one batch.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

BYTES_PER_VALUE = 4  # fp32
#: Values kept per input pixel and first-level channel by a training step (measured: 21 U-Net, 56 LViT).
TRAINING_VALUES_PER_PIXEL_CHANNEL = 16
#: The same for inference, where only the live feature maps are held (measured: 8 for U-Net).
INFERENCE_VALUES_PER_PIXEL_CHANNEL = 4
#: First-level width assumed for a model whose options name none (a decoder at full resolution).
DEFAULT_FIRST_LEVEL_CHANNELS = 16
#: Features per token assumed when the text encoder's options name none (the ``learned`` encoder's default).
DEFAULT_TOKEN_FEATURES = 64
#: Values per position-table entry while training: the weight, its gradient and Adam's two moments.
TRAINING_VALUES_PER_PARAMETER = 4
#: Values kept per token and feature of one sample by a text encoder's forward and backward pass.
TOKEN_ACTIVATION_VALUES = 4

#: What :func:`available_memory` says where it cannot tell: so much that no estimate exceeds it.
UNKNOWN_MEMORY = 1 << 62
#: Where the memory limit of this process's control group is written (cgroup v2, then v1).
CGROUP_LIMITS = (
    (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory.current")),
    (Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"), Path("/sys/fs/cgroup/memory/memory.usage_in_bytes")),
)


@dataclass(frozen=True)
class MemoryBudget:
    """The memory a run can use: ``bytes``, and where it is, for a message ("this machine has 23.1 GB of memory
    available")."""

    bytes: int
    where: str


def image_batch_bytes(
    img_size: int, batch_size: int, first_level_channels: int, in_channels: int, training: bool
) -> int:
    """Lower bound of the bytes one batch of ``batch_size`` images of ``img_size`` x ``img_size`` needs in a network
    whose first level has ``first_level_channels`` channels (module docstring)."""
    per_channel = TRAINING_VALUES_PER_PIXEL_CHANNEL if training else INFERENCE_VALUES_PER_PIXEL_CHANNEL
    values_per_pixel = per_channel * max(1, first_level_channels) + in_channels + (2 if training else 1)
    return int(batch_size) * int(img_size) ** 2 * values_per_pixel * BYTES_PER_VALUE


def text_bytes(text_length: int, feature_size: int, batch_size: int, training: bool) -> int:
    """Lower bound of the bytes a text front end of ``text_length`` tokens with ``feature_size`` features per
    token needs: its position table (trained: with gradient and optimiser moments) and one batch's token features."""
    table = text_length * feature_size * (TRAINING_VALUES_PER_PARAMETER if training else 1)
    tokens = batch_size * text_length * feature_size * (TOKEN_ACTIVATION_VALUES if training else 1)
    return int(table + tokens) * BYTES_PER_VALUE


def format_bytes(count: float) -> str:
    """``count`` bytes for people: "512 MB", "61.4 GB", "4.19 TB"."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if count >= size:
            value = count / size
            return f"{value:.3g} {unit}" if value < 100 else f"{value:,.0f} {unit}"
    return f"{count / 1e3:.3g} kB"


def available_memory(device: str = "cpu") -> MemoryBudget:
    """The memory a run on ``device`` can use now: a CUDA device's free memory, else this machine's available
    memory, within the limit of this process's control group (a container's) when it sets one."""
    if device.startswith("cuda"):
        import torch

        index = torch.device(device).index or 0
        free, _ = torch.cuda.mem_get_info(index)
        return MemoryBudget(int(free), f"GPU {index} has {format_bytes(free)} free")
    available = _machine_available()
    limit = _cgroup_room()
    if limit is not None and limit < available:
        return MemoryBudget(limit, f"this container may use {format_bytes(limit)} more memory")
    return MemoryBudget(available, f"this machine has {format_bytes(available)} of memory available")


def _machine_available() -> int:
    """This machine's available memory: /proc/meminfo's MemAvailable (Linux: free plus reclaimable caches), else
    the free pages, else all of its memory (macOS has no free-page count), else unbounded (nothing is refused)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    for pages in ("SC_AVPHYS_PAGES", "SC_PHYS_PAGES"):
        try:
            return int(os.sysconf(pages)) * int(os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            continue
    return UNKNOWN_MEMORY


def _cgroup_room() -> int | None:
    """Bytes this process's control group may still allocate, or None when it sets no limit."""
    for limit_path, usage_path in CGROUP_LIMITS:
        try:
            limit_text = limit_path.read_text().strip()
            usage = int(usage_path.read_text().strip())
        except (OSError, ValueError):
            continue
        if limit_text == "max" or not limit_text.isdigit() or int(limit_text) >= 1 << 60:
            return None  # no limit ("max"; cgroup v1 writes a number near 2**63)
        return max(0, int(limit_text) - usage)
    return None


def exceeds(needed: int, budget: MemoryBudget) -> bool:
    """Whether ``needed`` bytes surely do not fit in ``budget``."""
    return needed > budget.bytes
