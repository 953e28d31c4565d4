"""Builders of tiny LViT-layout datasets on disk, for the data-layer tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

SPLIT_PREFIX = {"train": "Train", "val": "Val", "test": "Test"}


def square_image(size: tuple[int, int], top: int, left: int, side: int) -> tuple[np.ndarray, np.ndarray]:
    """A dark RGB image (H, W, 3) uint8 with one bright square, and its 0/255 mask (H, W)."""
    height, width = size
    rng = np.random.default_rng(top * 31 + left)
    image = rng.integers(0, 40, size=(height, width, 3), dtype=np.uint8)
    image[top : top + side, left : left + side] = 250
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[top : top + side, left : left + side] = 255
    return image, mask


def mask_name(image_name: str, prefixed: bool) -> str:
    """The mask file name for ``image_name`` under either naming convention."""
    return f"mask_{image_name}" if prefixed else f"{Path(image_name).stem}.png"


def make_split(
    root: Path,
    split: str = "train",
    names: tuple[str, ...] = ("b_case", "a_case", "c_case"),
    image_ext: str = ".png",
    prefixed: bool = False,
    text_format: str = "xlsx",
    size: tuple[int, int] = (20, 24),
) -> Path:
    """Write a valid split under ``root``: images with a bright square, masks, and the text table.

    Returns the split folder. Descriptions are ``"text of <name>"``.
    """
    split_dir = root / f"{SPLIT_PREFIX[split]}_Folder"
    (split_dir / "img").mkdir(parents=True)
    (split_dir / "labelcol").mkdir()
    rows = []
    for number, name in enumerate(names):
        image, mask = square_image(size, top=2 + number, left=3 + 2 * number, side=5)
        image_name = f"{name}{image_ext}"
        Image.fromarray(image).save(split_dir / "img" / image_name)
        Image.fromarray(mask).save(split_dir / "labelcol" / mask_name(image_name, prefixed))
        rows.append({"Image": mask_name(image_name, prefixed), "Description": f"text of {name}"})
    write_table(split_dir / f"{SPLIT_PREFIX[split]}_text.{text_format}", rows)
    return split_dir


def write_table(path: Path, rows: list[dict[str, str]], columns: list[str] | None = None) -> None:
    """Write rows as an .xlsx or .csv text table (replacing any other text table of the split)."""
    for stale in path.parent.glob("*_text.*"):
        stale.unlink()
    table = pd.DataFrame(rows, columns=columns or ["Image", "Description"])
    if path.suffix == ".csv":
        table.to_csv(path, index=False)
    else:
        table.to_excel(path, index=False)


def truncate(path: Path, keep_fraction: float = 0.5) -> None:
    """Cut a file to a fraction of its size, as an interrupted copy would."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep_fraction)])
