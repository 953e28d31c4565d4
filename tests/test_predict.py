"""``lvseg predict``: one image or a folder, masks at the input's size, and user errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from lvseg.checkpoint import save_inference_checkpoint
from lvseg.cli.main import app
from lvseg.errors import LvsegError
from lvseg.models import create_model
from lvseg.text import create_text_encoder

IMG_SIZE = 32
REPORTS = ["lesion upper left", "lesion lower right"]


def _unet(path: Path, fill: float) -> Path:
    torch.manual_seed(0)
    options = {"img_size": IMG_SIZE, "base_channels": 4}
    net = create_model("unet", **options)
    with torch.no_grad():
        net.head.weight.zero_()
        net.head.bias.fill_(fill)  # +10: lesion everywhere, -10: nowhere
    return save_inference_checkpoint(path, net)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    encoder = create_text_encoder("learned", texts=REPORTS, dim=8, max_length=6)
    options = {"img_size": IMG_SIZE, "base_channels": 8, "text_dim": 8, "text_len": 6}
    lvit = save_inference_checkpoint(root / "lvit.ckpt", create_model("lvit", **options, text_encoder=encoder))
    return {"full": _unet(root / "full.ckpt", 10.0), "none": _unet(root / "none.ckpt", -10.0), "lvit": lvit}


def _image(path: Path, height: int, width: int, mode: str = "L") -> Path:
    rng = np.random.default_rng(height * width)
    shape = (height, width) if mode == "L" else (height, width, 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((rng.random(shape) * 255).astype(np.uint8), mode=None).save(path)
    return path


def invoke(*args: str):
    return CliRunner().invoke(app, ["predict", *map(str, args)])


# ------------------------------------------------------------------------------------------ single image


@pytest.mark.parametrize("fill,value", [("full", 255), ("none", 0)])
def test_predict_writes_mask_at_original_size(ckpts: dict[str, Path], tmp_path: Path, fill: str, value: int) -> None:
    image = _image(tmp_path / "x.png", 45, 70)
    out, overlay = tmp_path / "out" / "mask.png", tmp_path / "overlay.png"
    result = invoke("--checkpoint", ckpts[fill], "--image", image, "--out", out, "--overlay", overlay)
    assert result.exit_code == 0, result.output
    mask = Image.open(out)
    assert mask.size == (70, 45) and mask.mode == "L"
    assert np.unique(np.asarray(mask)).tolist() == [value]
    shown = Image.open(overlay)
    assert shown.size == (70, 45) and shown.mode == "RGB"
    if value:  # lesion everywhere: the overlay is tinted red
        pixels = np.asarray(shown).astype(int)
        assert (pixels[..., 0] > pixels[..., 1]).all()
    assert not list(out.parent.glob(".*.tmp")), "atomic writes leave no temporary files"


def test_predict_text_model_with_report(ckpts: dict[str, Path], tmp_path: Path) -> None:
    image = _image(tmp_path / "rgb.png", 50, 34, mode="RGB")
    result = invoke("-c", ckpts["lvit"], "-i", image, "-t", REPORTS[0], "-o", tmp_path / "m.png", "--threshold", "0.3")
    assert result.exit_code == 0, result.output
    mask = np.asarray(Image.open(tmp_path / "m.png"))
    assert mask.shape == (50, 34) and set(np.unique(mask).tolist()) <= {0, 255}


def test_predict_says_how_the_report_was_read_and_when_no_lesion_is_found(
    ckpts: dict[str, Path], tmp_path: Path
) -> None:
    image = _image(tmp_path / "x.png", 30, 30)
    result = invoke(
        "-c", ckpts["lvit"], "-i", image, "-t", "Right middle lobe consolidation.", "-o", tmp_path / "m.png"
    )
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert "warning: 3 of 4 words are not in this model's vocabulary and were ignored: 'middle', 'lobe', " in output
    assert "most of the report is unknown" in output
    quiet = invoke("-c", ckpts["lvit"], "-i", image, "-t", REPORTS[0], "-o", tmp_path / "m2.png")
    assert "warning" not in quiet.output
    nothing = invoke("-c", ckpts["none"], "-i", image, "-o", tmp_path / "m3.png")
    assert "no lesion found, highest probability 0.000" in nothing.output


# ----------------------------------------------------------------------------------------------- folder


def _folder(root: Path, table: str = "csv") -> Path:
    _image(root / "img" / "a.tif", 40, 52)
    _image(root / "img" / "b.png", 36, 36)
    rows = pd.DataFrame({"Image": ["a.png", "mask_b.png"], "Description": REPORTS})
    if table == "csv":
        rows.to_csv(root / "Test_text.csv", index=False)
    elif table == "xlsx":
        rows.to_excel(root / "Test_text.xlsx", index=False)
    return root


@pytest.mark.parametrize("table", ["csv", "xlsx"])
def test_predict_folder_writes_one_mask_and_overlay_per_image(
    ckpts: dict[str, Path], tmp_path: Path, table: str
) -> None:
    folder = _folder(tmp_path / "in", table)
    out = tmp_path / "out"
    result = invoke("-c", ckpts["lvit"], "--folder", folder, "-o", out)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["a.png", "mask_b.png"]
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["a.png", "mask_b.png"]
    assert Image.open(out / "masks" / "a.png").size == (52, 40)
    assert Image.open(out / "masks" / "mask_b.png").size == (36, 36)
    summary = pd.read_csv(out / "predictions.csv")
    assert summary["text"].tolist() == REPORTS and summary["image"].tolist() == ["a.tif", "b.png"]


def test_predict_folder_without_table_for_image_model(ckpts: dict[str, Path], tmp_path: Path) -> None:
    folder = _folder(tmp_path / "in", table="none")
    result = invoke("-c", ckpts["full"], "--folder", folder, "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    masks = sorted((tmp_path / "out" / "masks").iterdir())
    assert [p.name for p in masks] == ["a.png", "b.png"]
    assert np.asarray(Image.open(masks[0])).min() == 255


def test_predict_folder_without_table_for_text_model_is_an_error(ckpts: dict[str, Path], tmp_path: Path) -> None:
    folder = _folder(tmp_path / "in", table="none")
    result = invoke("-c", ckpts["lvit"], "--folder", folder, "-o", tmp_path / "out")
    assert isinstance(result.exception, LvsegError)
    assert str(folder) in str(result.exception) and "_text" in str(result.exception)


def test_predict_folder_lists_every_bad_row(ckpts: dict[str, Path], tmp_path: Path) -> None:
    folder = _folder(tmp_path / "in", table="none")
    pd.DataFrame({"Image": ["a.png", "ghost.png", "b.png"], "Description": ["ok", "x", ""]}).to_csv(
        folder / "Test_text.csv", index=False
    )
    result = invoke("-c", ckpts["lvit"], "--folder", folder, "-o", tmp_path / "out")
    assert isinstance(result.exception, LvsegError)
    message = str(result.exception)
    assert "row 3" in message and "ghost" in message and "row 4" in message and "empty" in message
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------ user errors


def test_missing_checkpoint_names_the_file(tmp_path: Path) -> None:
    image = _image(tmp_path / "x.png", 32, 32)
    result = invoke("-c", tmp_path / "nope.ckpt", "-i", image, "-t", "r", "-o", tmp_path / "m.png")
    assert isinstance(result.exception, LvsegError)
    assert "nope.ckpt" in str(result.exception)


def test_unreadable_image_names_the_file(ckpts: dict[str, Path], tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"this is not a png")
    result = invoke("-c", ckpts["full"], "-i", broken, "-o", tmp_path / "m.png")
    assert isinstance(result.exception, LvsegError)
    assert str(broken) in str(result.exception)
    assert not (tmp_path / "m.png").exists()


def test_missing_image_names_the_file(ckpts: dict[str, Path], tmp_path: Path) -> None:
    result = invoke("-c", ckpts["full"], "-i", tmp_path / "ghost.png", "-o", tmp_path / "m.png")
    assert isinstance(result.exception, LvsegError) and "ghost.png" in str(result.exception)


def test_empty_text_for_text_model_is_an_error(ckpts: dict[str, Path], tmp_path: Path) -> None:
    image = _image(tmp_path / "x.png", 32, 32)
    result = invoke("-c", ckpts["lvit"], "-i", image, "-t", "   ", "-o", tmp_path / "m.png")
    assert isinstance(result.exception, LvsegError)
    assert "--text" in str(result.exception) and "lvit" in str(result.exception)


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--threshold", "1.5"], "--threshold"),
        (["--out-is-jpeg"], "must be a .png"),
        (["--no-source"], "either --image"),
    ],
)
def test_bad_flags_are_user_errors(ckpts: dict[str, Path], tmp_path: Path, args: list[str], needle: str) -> None:
    image = _image(tmp_path / "x.png", 32, 32)
    base = ["-c", ckpts["full"], "-i", image, "-o", tmp_path / "m.png"]
    if args == ["--out-is-jpeg"]:
        base, args = ["-c", ckpts["full"], "-i", image, "-o", tmp_path / "m.jpg"], []
    elif args == ["--no-source"]:
        base, args = ["-c", ckpts["full"], "-o", tmp_path / "m.png"], []
    result = invoke(*base, *args)
    assert isinstance(result.exception, LvsegError)
    assert needle in str(result.exception)


def test_console_script_exits_2_without_traceback(tmp_path: Path) -> None:
    image = _image(tmp_path / "x.png", 32, 32)
    lvseg = Path(sys.executable).with_name("lvseg")
    if not lvseg.exists():
        pytest.skip(f"console script not installed next to {sys.executable}")
    missing = tmp_path / "missing.ckpt"
    completed = subprocess.run(
        [
            str(lvseg),
            "predict",
            "--checkpoint",
            str(missing),
            "--image",
            str(image),
            "--text",
            "r",
            "--out",
            str(tmp_path / "m.png"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "400"},
    )
    assert completed.returncode == 2, completed.stderr
    assert "Traceback" not in completed.stderr + completed.stdout
    assert "error:" in completed.stderr and "missing.ckpt" in completed.stderr
    assert not (tmp_path / "m.png").exists()
