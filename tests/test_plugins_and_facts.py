"""Models declare their facts and generic code reads them: a model family from another package
(tests/plugin_package, registered through the ``lvseg.models`` entry-point group) reaches every command, and an
official checkpoint handed to ``lvseg predict`` is told which ``lvseg import-<family>`` converts it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from lvseg.cli.main import app
from lvseg.models import SegmentationModel, list_models, model_class

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import PLUGIN_PACKAGE
from official_lvit_layout import OfficialLayoutLViT
from official_reclmis_layout import OfficialLayoutRecLMIS, official_state_dict

PLUGIN = "pooled-text-net"
runner = CliRunner()


def test_the_plugin_registers_through_its_entry_point_with_its_declared_facts() -> None:
    assert PLUGIN in list_models()
    cls = model_class(PLUGIN)
    assert cls.default_img_size == 64  # read off its constructor
    assert cls.decision_threshold == 0.4 and cls.importer == "lvseg_example_plugin.model:ExampleImporter"


def test_a_fresh_process_lists_the_plugin_in_info_and_import_verbs() -> None:
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PLUGIN_PACKAGE), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-c", "from lvseg.cli.main import main; main()"]
    info = subprocess.run(
        [*command, "info", "--all", "--json"], capture_output=True, text=True, env=environment, check=True
    )
    assert PLUGIN in [row["model"] for row in json.loads(info.stdout)]
    helped = subprocess.run([*command, "--help"], capture_output=True, text=True, env=environment, check=True)
    assert f"import-{PLUGIN}" in helped.stdout and "import-lvit" in helped.stdout and "import-reclmis" in helped.stdout


def test_the_plugin_importer_is_a_generated_verb(tmp_path: Path) -> None:
    from lvseg.inference import load_model

    official = {
        "backbone.stem.weight": torch.randn(4, 3, 3, 3),
        "backbone.stem.bias": torch.randn(4),
        "backbone.stage.weight": torch.randn(8, 4, 3, 3),
        "backbone.stage.bias": torch.randn(8),
        "classifier.weight": torch.randn(1, 8, 1, 1),
        "classifier.bias": torch.randn(1),
        "aux.weight": torch.randn(3),
    }
    torch.save({"module." + key: value for key, value in official.items()}, tmp_path / "official.pth")
    result = runner.invoke(
        app,
        [f"import-{PLUGIN}", str(tmp_path / "official.pth"), "--out", str(tmp_path / "converted.ckpt"), "--width", "4"],
    )
    assert result.exit_code == 0, result.output
    assert "dropped 1 auxiliary official keys: aux.weight" in result.stdout
    segmenter = load_model(tmp_path / "converted.ckpt", device="cpu")
    torch.testing.assert_close(segmenter.model.tower.stem.weight, official["backbone.stem.weight"])

    # Given to `lvseg predict` unconverted, the file is named for what it is.
    assert f"`lvseg import-{PLUGIN}`" in _predict_message(tmp_path / "official.pth", tmp_path)


def _predict_message(checkpoint: Path, tmp_path: Path) -> str:
    from PIL import Image

    Image.new("L", (32, 32)).save(tmp_path / "x.png")
    result = runner.invoke(
        app,
        [
            "predict",
            "--checkpoint",
            str(checkpoint),
            "--image",
            str(tmp_path / "x.png"),
            "--text",
            "Unilateral pulmonary infection, one infected area, lower left lung.",
            "--out",
            str(tmp_path / "m.png"),
        ],
    )
    assert result.exit_code != 0
    return str(result.exception)


def test_an_official_reclmis_checkpoint_is_told_to_run_import_reclmis(tmp_path: Path) -> None:
    clip = {"vocab": 64, "width": 32, "layers": 1, "heads": 2, "context": 24, "projection": 16}
    official = official_state_dict(OfficialLayoutRecLMIS(img_size=64, base=8, clip=clip), reconstructor_layers=1)
    torch.save(
        {"epoch": 3, "state_dict": {"module." + key: value for key, value in official.items()}},
        tmp_path / "best_model-RecLMIS.pth.tar",
    )
    message = _predict_message(tmp_path / "best_model-RecLMIS.pth.tar", tmp_path)
    assert "`lvseg import-reclmis`" in message and "import-lvit" not in message


def test_an_official_lvit_checkpoint_is_told_to_run_import_lvit(tmp_path: Path) -> None:
    torch.save(OfficialLayoutLViT(img_size=64, base=8, text_len=5, text_dim=16).state_dict(), tmp_path / "lvit.pth")
    message = _predict_message(tmp_path / "lvit.pth", tmp_path)
    assert "`lvseg import-lvit`" in message and "import-reclmis" not in message


def test_parameter_groups_and_recipe_scales_reach_the_optimizer(tmp_path: Path) -> None:
    from lvseg.training.fit import build_task
    from lvseg.training.options import TrainConfig, with_model_recipe

    config = with_model_recipe(TrainConfig(data=tmp_path, out=tmp_path / "run", model=PLUGIN))
    assert (config.batch_size, config.lr, config.lr_scales, config.img_size) == (4, 2e-3, {"tower": 0.1}, 64)
    task = build_task(config, ["lesion on the left"])
    optimizer = task.configure_optimizers()["optimizer"]
    lrs = {group["name"]: group["lr"] for group in optimizer.param_groups}
    assert lrs == pytest.approx({"tower": 2e-4, "head": 2e-3})
    in_groups = sum(p.numel() for group in optimizer.param_groups for p in group["params"])
    assert in_groups == sum(p.numel() for p in task.model.parameters() if p.requires_grad)

    from lvseg.errors import LvsegError

    with pytest.raises(LvsegError, match="towers.*groups: head, tower"):
        build_task(TrainConfig(**{**config.__dict__, "lr_scales": {"towers": 0.5}}), ["lesion"])


def test_a_misspelt_or_wrong_fact_is_refused_when_the_class_is_defined() -> None:
    with pytest.raises(TypeError, match="'recipie' looks like a misspelt 'recipe'"):

        class Misspelt(SegmentationModel):
            recipie = "vlsm"

            def __init__(self, *, in_channels: int = 3, img_size: int = 32) -> None:
                super().__init__()

    with pytest.raises(TypeError, match="unknown preset 'vlms'.*decision_threshold"):

        class Wrong(SegmentationModel):
            recipe = "vlms"
            decision_threshold = 1.5

            def __init__(self, *, in_channels: int = 3, img_size: int = 32) -> None:
                super().__init__()
