"""C2FVL: the report grammar's 8-value vector, the network's facts, its losses, its data checks.

(Forward/backward in both modes, checkpoints, evaluate, predict, the app and a semi-supervised step are
covered for c2fvl by tests/test_model_contract.py, which runs over every registered model.)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from lvseg.cli.main import app
from lvseg.data.layout import load_split, read_text_table
from lvseg.data.reports import REPORT_VECTOR_FIELDS, ReportError, read_report, report_vector
from lvseg.data.synth import generate_synthetic_dataset
from lvseg.errors import DataValidationError, LvsegError
from lvseg.models import ModelOutput, create_model

# The 14 LV-loss template reports (../shared/datasets/LV_loss_templates/LV_loss.xlsx) and their vectors
# [bilateral, number, lupper, lmiddle, llower, rupper, rmiddle, rlower], written out by hand.
TEMPLATES = [
    ("Unilateral pulmonary infection, one infected area, all left lung.", [0, 1, 1, 1, 1, 0, 0, 0]),
    ("Unilateral pulmonary infection, two infected areas, upper middle lower left lung.", [0, 2, 1, 1, 1, 0, 0, 0]),
    ("Unilateral pulmonary infection, three infected areas, upper middle lower left lung.", [0, 3, 1, 1, 1, 0, 0, 0]),
    ("Unilateral pulmonary infection, one infected area, all right lung.", [0, 1, 0, 0, 0, 1, 1, 1]),
    ("Unilateral pulmonary infection, two infected areas, upper middle lower right lung.", [0, 2, 0, 0, 0, 1, 1, 1]),
    ("Unilateral pulmonary infection, three infected areas, upper middle lower right lung.", [0, 3, 0, 0, 0, 1, 1, 1]),
    ("Bilateral pulmonary infection, two infected areas, all left lung and all right lung.", [1, 2, 1, 1, 1, 1, 1, 1]),
    (
        "Bilateral pulmonary infection, two infected areas, all left lung and upper middle right lung.",
        [1, 2, 1, 1, 1, 1, 1, 0],
    ),
    (
        "Bilateral pulmonary infection, two infected areas, all left lung and middle lower right lung.",
        [1, 2, 1, 1, 1, 0, 1, 1],
    ),
    (
        "Bilateral pulmonary infection, two infected areas, upper middle left lung and all right lung.",
        [1, 2, 1, 1, 0, 1, 1, 1],
    ),
    (
        "Bilateral pulmonary infection, two infected areas, middle lower left lung and all right lung.",
        [1, 2, 0, 1, 1, 1, 1, 1],
    ),
    (
        "Bilateral pulmonary infection, three infected areas, all left lung and upper middle lower right lung.",
        [1, 3, 1, 1, 1, 1, 1, 1],
    ),
    (
        "Bilateral pulmonary infection, three infected areas, upper middle lower left lung and all right lung.",
        [1, 3, 1, 1, 1, 1, 1, 1],
    ),
    (
        "Bilateral pulmonary infection, four infected areas, upper middle lower left lung and upper middle lower "
        "right lung.",
        [1, 4, 1, 1, 1, 1, 1, 1],
    ),
]
SMALL = {"img_size": 64, "base_channels": 8}


def vector_of(text: str) -> list[float]:
    return report_vector(*read_report(text))


@pytest.mark.parametrize(("text", "expected"), TEMPLATES)
def test_template_reports_parse_to_their_vectors(text: str, expected: list[int]) -> None:
    assert vector_of(text) == [float(value) for value in expected]


def test_the_templates_here_are_the_shared_ones(lv_templates_root: Path) -> None:
    table = pd.read_excel(lv_templates_root / "LV_loss.xlsx")
    assert [" ".join(text.split()) for text in table["Description"]] == [text for text, _ in TEMPLATES]


def test_grammar_variants_and_the_issue_example() -> None:
    assert vector_of("Bilateral pulmonary infection, two infected areas, all left lung and upper right lung.") == [
        1,
        2,
        1,
        1,
        1,
        1,
        0,
        0,
    ]
    assert vector_of(
        "bilateral  pulmonary infection, 2 infected areas, upper-middle left lungs and lower right lung"
    ) == [1, 2, 1, 1, 0, 0, 0, 1]
    assert vector_of("Unilateral pulmonary infection, one infected area, lower right lung.") == [0, 1, 0, 0, 0, 0, 0, 1]
    assert vector_of("No pulmonary infection.") == [0.0] * 8


@pytest.mark.parametrize(
    ("text", "part", "reason"),
    [
        ("Left lower lobe consolidation.", "Left lower lobe consolidation", "three comma-separated parts"),
        (
            "Unilateral pulmonary infection, two infected areas, upper left lung and lower right lung.",
            "upper left lung and lower right lung",
            "'Unilateral' contradicts the 2 lung(s)",
        ),
        (
            "Bilateral pulmonary infection, one infected area, all left lung.",
            "all left lung",
            "'Bilateral' contradicts the 1 lung(s)",
        ),
        (
            "Bilateral pulmonary infection, one infected area, all left lung and all right lung.",
            "one infected area",
            "cannot cover 2 lungs",
        ),
        (
            "Bilateral pulmonary infection, two infected areas, all left lung and all top lung.",
            "all top lung",
            "left|right lung",
        ),
        (
            "Bilateral pulmonary infection, many infected areas, all left lung and all right lung.",
            "many infected areas",
            "infected area(s)",
        ),
        (
            "Unilateral pulmonary infection, two infected areas, all left lung and upper left lung.",
            "upper left lung",
            "named twice",
        ),
        (
            "Severe pulmonary infection, one infected area, all left lung.",
            "Severe pulmonary infection",
            "'Unilateral pulmonary infection'",
        ),
    ],
)
def test_bad_reports_name_the_part_not_understood(text: str, part: str, reason: str) -> None:
    with pytest.raises(ReportError) as error:
        read_report(text)
    assert error.value.part == part and reason in error.value.reason and text in str(error.value)


def test_report_parse_command() -> None:
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "report",
            "parse",
            "Bilateral pulmonary infection, two infected areas, all left lung and upper right lung.",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    parsed = json.loads(result.stdout)
    assert parsed["vector"] == [1, 2, 1, 1, 1, 1, 0, 0] and parsed["fields"] == list(REPORT_VECTOR_FIELDS)
    result = runner.invoke(app, ["report", "parse", "Left lower lobe consolidation."])
    assert isinstance(result.exception, LvsegError) and "Left lower lobe consolidation" in str(result.exception)


# ------------------------------------------------------------------------------------------- the network


def test_parameters_match_the_official_forward_at_224() -> None:
    with torch.device("meta"):
        model = create_model("c2fvl", img_size=224, base_channels=64)
    counts = model.parameter_counts()
    assert counts["total"] == 24_196_088  # C2FVL.md: the official build's parameters reached by forward
    side_heads = (128 + 1) + (256 + 1) + (512 + 1)  # side outputs 2..4: training only
    assert counts["training_only"] == side_heads and counts["inference"] == 24_196_088 - side_heads


@pytest.mark.parametrize("img_size", [32, 96])
def test_any_size_and_width_and_side_outputs_in_training_only(img_size: int) -> None:
    model = create_model("c2fvl", img_size=img_size, base_channels=16)
    images, text = torch.rand(2, 3, img_size, img_size), torch.tensor([[1.0, 2, 1, 0, 0, 0, 0, 1]] * 2)
    model.eval()
    with torch.no_grad():
        logits = model(images, text)
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 1, img_size, img_size)
    model.train()
    output = model(images, text)
    assert isinstance(output, ModelOutput)
    assert sorted(output.aux) == ["side_1", "side_2", "side_3", "side_4"]
    assert all(side.shape == (2, 1, img_size, img_size) for side in output.aux.values())


def test_the_vector_is_tiled_over_the_skip_channels() -> None:
    """A zero at position k of the vector zeroes every skip channel c with c mod 8 = k."""
    model = create_model("c2fvl", **SMALL).eval()
    seen: dict[int, torch.Tensor] = {}
    for level, block in enumerate(model.up):
        block.alignment.register_forward_pre_hook(lambda module, args, level=level: seen.__setitem__(level, args[0]))
    text = torch.tensor([[1.0, 2, 0, 1, 1, 0, 1, 1]])  # zeros at positions 2 and 5
    with torch.no_grad():
        model(torch.rand(1, 3, 64, 64), text)
    for level, skip in seen.items():
        per_channel = skip.abs().amax(dim=(0, 2, 3))  # (C,)
        channels = torch.arange(len(per_channel))
        assert torch.all(per_channel[(channels % 8 == 2) | (channels % 8 == 5)] == 0), level
        kept = per_channel[(channels % 8 != 2) & (channels % 8 != 5)]
        assert (kept > 0).float().mean() > 0.5, level  # the others carry signal (a ReLU can leave one dark)


def test_vlab_and_side_outputs_follow_the_official_code() -> None:
    torch.manual_seed(0)
    model = create_model("c2fvl", **SMALL).train()
    vlab = model.up[1].alignment
    x = torch.randn(2, 16, 8, 8)
    channel_linear = lambda linear, y: linear(y.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # noqa: E731
    a = torch.relu(channel_linear(vlab.linear_avg, vlab.conv_avg(x))).mean(1, keepdim=True)
    m = torch.relu(channel_linear(vlab.linear_max, vlab.conv_max(x))).amax(1, keepdim=True)
    w = vlab.bottleneck((a + m).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    torch.testing.assert_close(vlab(x), w * x)

    gated: dict[int, torch.Tensor] = {}
    for level, block in enumerate(model.up):
        block.alignment.register_forward_hook(lambda module, args, out, level=level: gated.__setitem__(level, out))
    output = model(torch.rand(2, 3, 64, 64), torch.tensor([[1.0, 2, 1, 0, 0, 0, 1, 1]] * 2))
    torch.testing.assert_close(output.aux["side_1"], model.head(gated[0]))  # the finest reuses the main head
    for level in (1, 2, 3):  # nearest upsampling to full size, then the level's 1x1 conv
        upsampled = F.interpolate(gated[level], size=(64, 64), mode="nearest")
        torch.testing.assert_close(output.aux[f"side_{level + 1}"], model.side_heads[level - 1](upsampled))


def test_cosine_terms_follow_the_official_loss() -> None:
    torch.manual_seed(0)
    model = create_model("c2fvl", **SMALL).train()
    images, text = torch.rand(2, 3, 64, 64), torch.tensor([[0.0, 1, 1, 1, 1, 0, 0, 0]] * 2)
    target = torch.zeros(2, 1, 64, 64)
    target[:, :, 10:30, 5:25] = 1
    output = model(images, text)
    terms = model.compute_losses(output, target)
    assert set(terms) == {"dice", "bce", "cos_1_2", "cos_1_3", "cos_1_4"}
    finest = output.aux["side_1"].flatten(1)
    for k in (2, 3, 4):
        expected = 0.5 * (1 - F.cosine_similarity(finest, output.aux[f"side_{k}"].flatten(1), dim=1)).mean()
        torch.testing.assert_close(terms[f"cos_1_{k}"], expected)
    eval_terms = model.eval().compute_losses(model(images, text), target)
    assert set(eval_terms) == {"dice", "bce"}  # validation: main terms only


def test_reports_become_vectors_through_the_model() -> None:
    model = create_model("c2fvl", **SMALL)
    vectors = model.encode_text([TEMPLATES[8][0], ""])
    assert vectors.tolist() == [[float(v) for v in TEMPLATES[8][1]], [0.0] * 8]  # empty: no findings
    with pytest.raises(LvsegError, match="Left lower lobe"):
        model.encode_text(["Left lower lobe consolidation."])
    lenient = create_model("c2fvl", **SMALL, unparsable_reports="zero")
    assert lenient.encode_text(["Left lower lobe consolidation."]).tolist() == [[0.0] * 8]
    assert lenient.config["unparsable_reports"] == "zero"
    with pytest.raises(LvsegError, match="base_channels must be a positive multiple of 8"):
        create_model("c2fvl", img_size=64, base_channels=12)


# ------------------------------------------------------------------------------------------ data checks


@pytest.fixture
def data_with_bad_reports(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    generate_synthetic_dataset(root, n=12, size=32, seed=0)
    table = next((root / "Train_Folder").glob("*_text.*"))
    frame = pd.read_excel(table) if table.suffix == ".xlsx" else pd.read_csv(table)
    frame.loc[0, "Description"] = "Left lower lobe consolidation."
    frame.loc[1, "Description"] = (
        "Unilateral pulmonary infection, two infected areas, upper left lung and lower right lung."
    )
    frame.to_excel(table, index=False) if table.suffix == ".xlsx" else frame.to_csv(table, index=False)
    return root


def test_training_lists_every_unreadable_report_before_starting(data_with_bad_reports: Path, tmp_path: Path) -> None:
    from lvseg.training.fit import train
    from lvseg.training.options import TrainConfig

    config = TrainConfig(
        data=data_with_bad_reports,
        out=tmp_path / "run",
        model="c2fvl",
        img_size=32,
        base_channels=8,
        max_epochs=1,
        progress_bar=False,
    )
    with pytest.raises(DataValidationError) as error:
        train(config)
    assert len(error.value.problems) == 2
    assert all(problem.startswith("train: image '") for problem in error.value.problems)
    assert "Left lower lobe" in error.value.problems[0] and "contradicts" in error.value.problems[1]
    assert not (tmp_path / "run" / "last.ckpt").exists()

    result = CliRunner().invoke(
        app,
        [
            "train",
            "--data",
            str(data_with_bad_reports),
            "--out",
            str(tmp_path / "zero"),
            "--model",
            "c2fvl",
            "--img-size",
            "32",
            "--base-channels",
            "8",
            "--max-epochs",
            "1",
            "--model-option",
            "unparsable_reports=zero",
        ],
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "zero" / "best.ckpt").is_file()


def test_data_check_with_a_model_reports_unreadable_reports(data_with_bad_reports: Path) -> None:
    result = CliRunner().invoke(app, ["data", "check", str(data_with_bad_reports), "--model", "c2fvl"])
    assert isinstance(result.exception, DataValidationError)
    assert len(result.exception.problems) == 2 and "Left lower lobe" in str(result.exception)
    result = CliRunner().invoke(app, ["data", "check", str(data_with_bad_reports), "--model", "lvit"])
    assert result.exit_code == 0, result.output  # free text: any report is readable


def test_text_table_with_the_vector_columns(tmp_path: Path) -> None:
    rows = [
        {
            "Image": "a.png",
            "Description": "",
            "bilateral": 1,
            "number": 2,
            "lupper": 1,
            "lmiddle": 0,
            "llower": 0,
            "rupper": 0,
            "rmiddle": 0,
            "rlower": 1,
        },
        {"Image": "b.png", "Description": TEMPLATES[0][0], **dict(zip(REPORT_VECTOR_FIELDS, TEMPLATES[0][1]))},
    ]
    path = tmp_path / "Train_text.xlsx"
    pd.DataFrame(rows).to_excel(path, index=False)
    parsed = read_text_table(path)
    assert (
        parsed[0].description == "Bilateral pulmonary infection, two infected areas, upper left lung and lower "
        "right lung."
    )
    assert parsed[1].description == TEMPLATES[0][0]
    # Columns only (C2FVL's own tables): the reports are written from them.
    pd.DataFrame([{k: v for k, v in row.items() if k != "Description"} for row in rows]).to_excel(path, index=False)
    assert [row.description for row in read_text_table(path)][
        1
    ] == "Unilateral pulmonary infection, one infected area, all left lung."
    bad = [
        dict(rows[1], Description=TEMPLATES[3][0]),
        dict(rows[0], bilateral=0),
        dict(rows[0], number="two"),
        dict(rows[1], Description="free text the grammar does not cover"),
    ]
    pd.DataFrame(bad).to_excel(path, index=False)
    with pytest.raises(LvsegError) as error:
        read_text_table(path)
    message = str(error.value)
    assert "3 row(s)" in message and "row 2" in message and "row 3" in message and "row 4" in message
    assert "row 5" not in message  # free text beside the columns is kept for text models


def test_synthetic_reports_follow_the_grammar(tmp_path: Path) -> None:
    generate_synthetic_dataset(tmp_path / "data", n=30, size=32, seed=1)
    for split in ("train", "val", "test"):
        for sample in load_split(tmp_path / "data", split):
            assert np.isfinite(vector_of(sample.text)).all()


def test_a_c2fvl_checkpoint_trained_the_usual_way_serves(tmp_path: Path) -> None:
    """Regression: the app's warm-up sent "warm-up report", which C2FVL's report grammar refuses, so
    `lvseg serve` of a C2FVL checkpoint (unparsable_reports="error", the default) exited at start-up."""
    from fastapi.testclient import TestClient

    from lvseg.checkpoint import save_inference_checkpoint
    from lvseg.inference import load_model
    from lvseg.serving.app import create_app

    model = create_model("c2fvl", img_size=32, base_channels=8)
    assert model.config["unparsable_reports"] == "error"
    save_inference_checkpoint(tmp_path / "c2fvl.ckpt", model)
    segmenter = load_model(tmp_path / "c2fvl.ckpt", device="cpu")
    segmenter.warm_up()
    with TestClient(create_app(segmenter), base_url="http://localhost") as client:
        assert client.get("/api/model").json()["model"] == "c2fvl"
