"""benchmarks/speed.py's per-checkpoint paths: a tuned checkpoint end to end, and the official LViT code's
forward read from the user's checkout (a stand-in with the official module layout here)."""

from __future__ import annotations

import importlib.util
import textwrap
from pathlib import Path

import pytest
from tests.test_inference_backends import _fitted

from lvseg.backend_record import BackendRecord, BackendTrial, hardware_description
from lvseg.checkpoint import save_inference_checkpoint, write_backend_record

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "speed.py"


@pytest.fixture(scope="module")
def speed():
    spec = importlib.util.spec_from_file_location("benchmark_speed", BENCHMARK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_official_lvit_forward_is_timed_from_the_users_checkout(tmp_path: Path, speed) -> None:
    # The official layout: Config.get_CTranS_config() and nets/LViT.py's LViT(config, n_channels, n_classes,
    # img_size) whose forward takes the image and 10 x 768 text features.
    (tmp_path / "nets").mkdir()
    (tmp_path / "nets" / "__init__.py").write_text("")
    (tmp_path / "Config.py").write_text("def get_CTranS_config():\n    return {'base_channel': 4}\n")
    (tmp_path / "nets" / "LViT.py").write_text(
        textwrap.dedent(
            """
            import torch

            class LViT(torch.nn.Module):
                def __init__(self, config, n_channels=3, n_classes=1, img_size=224):
                    super().__init__()
                    self.conv = torch.nn.Conv2d(n_channels, n_classes, 3, padding=1)
                    self.text = torch.nn.Linear(768, 1)

                def forward(self, x, text):
                    assert x.shape == (1, 3, 224, 224) and text.shape == (1, 10, 768)
                    return self.conv(x) + self.text(text).mean()
            """
        )
    )
    rows = speed.official_lvit_rows(tmp_path, repeats=2)
    assert [row["precision"] for row in rows] == ["fp32", "bf16 autocast"]
    assert all(float(row["ms"]) > 0 for row in rows)


def test_official_lvit_import_problems_are_a_row(tmp_path: Path, speed) -> None:
    rows = speed.official_lvit_rows(tmp_path, repeats=1)
    assert len(rows) == 1 and rows[0]["ms"].startswith("failed:")


def test_tuned_checkpoint_end_to_end_follows_its_record(tmp_path: Path, speed) -> None:
    model = _fitted("lvit", text_encoder="learned")
    path = save_inference_checkpoint(tmp_path / "m.ckpt", model)
    trials = (BackendTrial("eager", True, 1.0, 0.0, 9.0), BackendTrial("bf16", True, 1.0, 0.0, 2.0))
    write_backend_record(path, BackendRecord(trials, 2, "test", hardware_description("cpu")))
    rows = speed.tuned_end_to_end(path, repeats=2)
    assert [row["backend"] for row in rows] == ["eager", "auto = bf16", "bf16"]
    assert rows[1]["guard (record)"] == "1.0000"
