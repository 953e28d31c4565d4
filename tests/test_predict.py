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


def test_predict_folder_without_overlays_writes_the_same_masks_and_no_overlay(
    ckpts: dict[str, Path], tmp_path: Path
) -> None:
    folder = _folder(tmp_path / "in")
    both, masks_only = tmp_path / "both", tmp_path / "masks-only"
    assert invoke("-c", ckpts["lvit"], "--folder", folder, "-o", both).exit_code == 0
    result = invoke("-c", ckpts["lvit"], "--folder", folder, "-o", masks_only, "--no-overlays")
    assert result.exit_code == 0, result.output
    assert not (masks_only / "overlays").exists() and "overlays in" not in result.output
    for name in ("a.png", "mask_b.png"):
        assert np.array_equal(
            np.asarray(Image.open(both / "masks" / name)), np.asarray(Image.open(masks_only / "masks" / name))
        )
    assert pd.read_csv(both / "predictions.csv").equals(pd.read_csv(masks_only / "predictions.csv"))
    refused = invoke(
        "-c", ckpts["lvit"], "-i", folder / "img" / "b.png", "-t", REPORTS[0], "-o", tmp_path / "m.png", "--no-overlays"
    )
    assert isinstance(refused.exception, LvsegError) and "--no-overlays is for --folder" in str(refused.exception)


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


def test_predict_folder_takes_a_plain_folder_of_images(ckpts: dict[str, Path], tmp_path: Path) -> None:
    """No img/ subfolder: the images (and the text table) lie in the folder itself."""
    plain = tmp_path / "plain"
    _image(plain / "a.tif", 40, 52)
    _image(plain / "b.png", 36, 36)
    pd.DataFrame({"Image": ["a.png", "b.png"], "Description": REPORTS}).to_csv(plain / "reports_text.csv", index=False)
    out = tmp_path / "out"
    result = invoke("-c", ckpts["lvit"], "--folder", plain, "-o", out)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["a.png", "b.png"]
    assert Image.open(out / "masks" / "a.png").size == (52, 40)
    assert pd.read_csv(out / "predictions.csv")["text"].tolist() == REPORTS

    only_images = tmp_path / "images"  # an image-only model needs no table
    _image(only_images / "c.png", 30, 30)
    result = invoke("-c", ckpts["full"], "--folder", only_images, "-o", tmp_path / "out2")
    assert result.exit_code == 0, result.output
    assert [p.name for p in (tmp_path / "out2" / "masks").iterdir()] == ["c.png"]

    empty = tmp_path / "empty"
    empty.mkdir()
    result = invoke("-c", ckpts["full"], "--folder", empty, "-o", tmp_path / "out3")
    assert isinstance(result.exception, LvsegError)
    assert str(empty) in str(result.exception) and "img/" in str(result.exception)


# ------------------------------------------------------------------------------------- README's ONNX snippet


def readme_block(after: str) -> str:
    """The first ```python block of README.md after the sentence ``after``."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    start = readme.index("```python\n", readme.index(after)) + len("```python\n")
    return readme[start : readme.index("```", start)]


def test_the_readme_plain_onnx_runtime_snippet_runs_and_agrees_with_lvseg(
    ckpts: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    if importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx") is None:
        pytest.skip("ONNX Runtime is missing (the serve or deploy extra)")
    from lvseg.inference import load_model
    from lvseg.inference.export import export_model

    export_model(ckpts["lvit"], tmp_path / "exported", "onnx")
    _image(tmp_path / "xray.png", IMG_SIZE, IMG_SIZE, mode="RGB")  # at the model's size: no resampling to differ
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(readme_block("Plain ONNX Runtime then runs"), "README.md", "exec"), namespace)
    probability, mask = namespace["probability"], namespace["mask"]
    assert probability.shape == (1, 1, IMG_SIZE, IMG_SIZE) and mask.shape == (IMG_SIZE, IMG_SIZE)
    pixels = np.asarray(Image.open(tmp_path / "xray.png"), dtype=np.float32) / 255
    images = torch.from_numpy(pixels.transpose(2, 0, 1)[None].copy())
    expected = load_model(ckpts["lvit"], device="cpu").probabilities(images, [namespace["report"]]).numpy()
    np.testing.assert_allclose(probability, expected, atol=1e-4)


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


CHEST_REPORT = "Unilateral pulmonary infection, one infected area, upper left lung."


def test_predict_says_when_the_result_contradicts_the_report(ckpts: dict[str, Path], tmp_path: Path) -> None:
    image = _image(tmp_path / "x.png", 30, 30)
    result = invoke("-c", ckpts["none"], "-i", image, "-t", CHEST_REPORT, "-o", tmp_path / "m.png")
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert (
        "check this result: The report describes 1 infected area, the upper left lung, but the model found no" in output
    )
    folder = tmp_path / "in"
    _image(folder / "img" / "a.png", 30, 30)
    _image(folder / "img" / "b.png", 30, 30)
    pd.DataFrame({"Image": ["a.png", "b.png"], "Description": [CHEST_REPORT, "No pulmonary infection."]}).to_csv(
        folder / "Test_text.csv", index=False
    )
    result = invoke("-c", ckpts["none"], "--folder", folder, "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "check 1 result" in " ".join(result.output.split())
    summary = pd.read_csv(tmp_path / "out" / "predictions.csv", keep_default_na=False)
    assert summary["consistency"].tolist() == ["report-finding-not-found", ""]
    assert "found no lesion" in summary["consistency_warnings"][0]
