"""Training through ``train(TrainConfig(...))``: run folder, checkpoints, reproducibility, resume, DDP.

Everything runs on a dozen synthetic 32 px images with an 8-channel network for one or two epochs;
a module-scoped run is shared by the tests that only read its outputs.
"""

from __future__ import annotations

import csv
import io
import math
import os
import shutil
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch

from lvseg.data.input_statistics import InputStatistics
from lvseg.data.layout import load_split
from lvseg.data.synth import generate_synthetic_dataset
from lvseg.errors import CheckpointError, LvsegError
from lvseg.inference import load_model
from lvseg.training.checkpoint import AtomicCheckpointIO, read_checkpoint_dict
from lvseg.training.fit import TrainConfig, TrainResult, parse_max_time, train
from lvseg.training.module import SegmentationTask

IMG_SIZE = 32
N_IMAGES = 12  # 9 train / 1 val / 2 test
LVSEG = Path(sys.executable).parent / "lvseg"


def tiny(data: Path, out: Path, **overrides) -> TrainConfig:
    options = dict(
        data=data,
        out=out,
        img_size=IMG_SIZE,
        base_channels=8,
        max_epochs=1,
        patience=5,
        text_length=12,
        progress_bar=False,
        num_workers=0,
        seed=0,
    )
    options.update(overrides)
    return TrainConfig(**options)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "data"
    generate_synthetic_dataset(root, n=N_IMAGES, size=IMG_SIZE, seed=0)
    return root


@pytest.fixture(scope="module")
def lvit_run(data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One epoch of lvit, keeping the in-memory module as training left it."""
    out = tmp_path_factory.mktemp("runs") / "lvit"
    finished: list[SegmentationTask] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SegmentationTask, "on_train_end", lambda self: finished.append(self), raising=False)
        result = train(tiny(data, out))
    assert len(finished) == 1
    return {"out": out, "result": result, "task": finished[0]}


@pytest.fixture(scope="module")
def unet_run(data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("runs") / "unet"
    return {"out": out, "result": train(tiny(data, out, model="unet"))}


def state_of(path: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint_dict(path)["state_dict"]


def assert_same_state(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> None:
    assert first.keys() == second.keys()
    different = [key for key in first if not torch.equal(first[key], second[key])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def metrics_rows(out: Path) -> list[dict[str, str]]:
    with (out / "logs" / "metrics.csv").open() as handle:
        return list(csv.DictReader(handle))


# ------------------------------------------------------------------------------------------- run folder


def test_run_writes_checkpoints_csv_and_tensorboard_logs(lvit_run: dict) -> None:
    out, result = lvit_run["out"], lvit_run["result"]
    assert isinstance(result, TrainResult)
    assert result.best_checkpoint == out / "best.ckpt" and result.best_checkpoint.is_file()
    assert result.last_checkpoint == out / "last.ckpt" and result.last_checkpoint.is_file()
    assert result.epochs == 1
    assert list(out.glob("*.tmp")) == [] and list(out.glob(".*")) == []  # atomic writes leave nothing behind
    rows = metrics_rows(out)
    assert any(row.get("val_dice") for row in rows) and any(row.get("train_loss_epoch") for row in rows)
    losses = [float(row["train_loss_epoch"]) for row in rows if row.get("train_loss_epoch")]
    assert all(math.isfinite(loss) for loss in losses)
    events = list((out / "logs").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


def test_checkpoint_describes_the_model_and_stores_val_dice(lvit_run: dict) -> None:
    out, result = lvit_run["out"], lvit_run["result"]
    checkpoint = read_checkpoint_dict(out / "best.ckpt")
    hparams = checkpoint["hyper_parameters"]
    assert hparams["model_name"] == "lvit"
    assert hparams["model_config"]["img_size"] == IMG_SIZE and hparams["model_config"]["base_channels"] == 8
    text_encoder = hparams["model_config"]["text_encoder"]
    assert text_encoder["type"] == "learned" and text_encoder["max_length"] == 12
    assert hparams["lr"] == 1e-3  # the paper's Adam learning rate is the default
    # what it was trained on, for the app's model line, and the training images' statistics for its
    # image check (lvseg.inference.consistency)
    assert hparams["training_data"]["synthetic"] is True and hparams["training_data"]["training_images"] > 0
    assert "validation images of" in hparams["validation_data"] and "(synthetic)" in hparams["validation_data"]
    statistics = InputStatistics.from_dict(hparams["input_statistics"])
    assert statistics is not None and statistics.img_size == IMG_SIZE
    assert statistics.reference_images == hparams["training_data"]["training_images"]
    assert any(key.startswith("model.text_encoder.") for key in checkpoint["state_dict"])
    assert checkpoint["lvseg"]["format"] == 2 and checkpoint["lvseg"]["pretrained"] == {}
    assert checkpoint["global_step"] > 0
    val_dice = checkpoint["lvseg"]["metrics"]["val_dice"]
    logged = [float(row["val_dice"]) for row in metrics_rows(out) if row.get("val_dice")]
    assert val_dice == pytest.approx(max(logged), abs=1e-6)
    assert result.best_val_dice == pytest.approx(val_dice)
    assert load_model(out / "best.ckpt").metrics["val_dice"] == pytest.approx(val_dice)
    last_metrics = read_checkpoint_dict(out / "last.ckpt")["lvseg"]["metrics"]
    assert last_metrics["val_dice"] == pytest.approx(logged[-1], abs=1e-6)  # its own epoch, not the best
    assert last_metrics["best_val_dice"] == pytest.approx(max(logged), abs=1e-6)


def test_load_model_predicts_exactly_like_the_trained_module(lvit_run: dict, data: Path) -> None:
    task: SegmentationTask = lvit_run["task"].cpu().eval()
    segmenter = load_model(lvit_run["out"] / "best.ckpt", device="cpu")
    assert segmenter.model_name == "lvit" and segmenter.requires_text and segmenter.img_size == IMG_SIZE
    assert_same_state(
        {k: v.cpu() for k, v in task.model.text_encoder.state_dict().items()},
        segmenter.text_encoder.state_dict(),
    )
    samples = load_split(data, "test")
    torch.manual_seed(1)
    images = torch.rand(len(samples), 3, IMG_SIZE, IMG_SIZE)
    texts = [sample.text for sample in samples]
    with torch.no_grad():
        expected = torch.sigmoid(task(images, texts))
    assert torch.allclose(segmenter.probabilities(images, texts), expected, atol=1e-6)
    prediction = segmenter.predict(samples[0].image_path, samples[0].text)
    assert prediction.mask.shape == (IMG_SIZE, IMG_SIZE) and prediction.mask.dtype == np.uint8


def test_image_only_unet_has_no_text_encoder_in_its_checkpoint(unet_run: dict, data: Path) -> None:
    checkpoint = read_checkpoint_dict(unet_run["out"] / "best.ckpt")
    assert checkpoint["hyper_parameters"]["model_name"] == "unet"
    assert "text_encoder" not in checkpoint["hyper_parameters"]["model_config"]
    assert not any(".text_encoder." in key for key in checkpoint["state_dict"])
    segmenter = load_model(unet_run["out"] / "last.ckpt")
    assert segmenter.text_encoder is None and not segmenter.requires_text
    sample = load_split(data, "test")[0]
    assert segmenter.predict(sample.image_path, "").mask.shape == (IMG_SIZE, IMG_SIZE)


def test_same_seed_gives_identical_weights(lvit_run: dict, data: Path, tmp_path: Path) -> None:
    again = train(tiny(data, tmp_path / "again"))  # augmentation on: its random state must be seeded too
    assert_same_state(state_of(lvit_run["out"] / "last.ckpt"), state_of(again.last_checkpoint))


# ----------------------------------------------------------------------------------- resume and crashes


def test_used_out_folder_without_resume_is_refused(lvit_run: dict, data: Path) -> None:
    before = (lvit_run["out"] / "last.ckpt").read_bytes()
    with pytest.raises(LvsegError, match="already holds a run.*--resume"):
        train(tiny(data, lvit_run["out"]))
    assert (lvit_run["out"] / "last.ckpt").read_bytes() == before


def test_resume_without_a_run_is_refused(data: Path, tmp_path: Path) -> None:
    with pytest.raises(LvsegError, match="no last.ckpt"):
        train(tiny(data, tmp_path / "empty", resume=True))


def test_resume_with_another_model_is_refused(unet_run: dict, data: Path, tmp_path: Path) -> None:
    out = tmp_path / "unet"
    shutil.copytree(unet_run["out"], out)
    with pytest.raises(LvsegError, match="'unet' model, not 'lvit'"):
        train(tiny(data, out, model="lvit", resume=True))
    with pytest.raises(LvsegError, match="--img-size 32, not 64"):
        train(tiny(data, out, model="unet", img_size=64, resume=True))


def test_resume_continues_from_the_next_epoch(lvit_run: dict, data: Path, tmp_path: Path) -> None:
    out = tmp_path / "resumed"
    shutil.copytree(lvit_run["out"], out)
    first = read_checkpoint_dict(out / "last.ckpt")
    epochs_run: list[int] = []
    starting_state: list[dict[str, torch.Tensor]] = []

    def on_train_start(self: SegmentationTask) -> None:
        starting_state.append({"model." + k: v.detach().clone() for k, v in self.model.state_dict().items()})

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            SegmentationTask, "on_train_epoch_start", lambda self: epochs_run.append(self.current_epoch), raising=False
        )
        patch.setattr(SegmentationTask, "on_train_start", on_train_start, raising=False)
        result = train(tiny(data, out, max_epochs=2, resume=True))
    assert epochs_run == [1], "resuming must run only the remaining epoch"
    net_state = {k: v for k, v in first["state_dict"].items() if k.startswith("model.")}
    assert_same_state(net_state, starting_state[0])  # started from the saved weights, not a fresh init
    second = read_checkpoint_dict(result.last_checkpoint)
    assert second["epoch"] == 1 and second["global_step"] == 2 * first["global_step"]
    assert result.epochs == 2
    assert second["optimizer_states"] and second["lr_schedulers"]  # full training state for the next resume
    logged_epochs = {int(row["epoch"]) for row in metrics_rows(out) if row.get("val_dice")}
    assert logged_epochs == {0, 1}


def test_a_resumed_run_logs_each_epoch_once_and_cleans_unfinished_writes(
    lvit_run: dict, data: Path, tmp_path: Path, caplog
) -> None:
    """A crash after epoch 1 started logging (its rows are in metrics.csv, not in last.ckpt) and during a
    checkpoint write (a .tmp file): the resumed run logs epoch 1 once and removes the temporary file."""
    import csv
    import logging

    out = tmp_path / "crashed-then-resumed"
    shutil.copytree(lvit_run["out"], out)
    metrics = out / "logs" / "metrics.csv"
    with metrics.open(newline="") as handle:
        reader = csv.DictReader(handle)
        header, rows = list(reader.fieldnames or []), list(reader)
    stale_row = {**rows[-1], "epoch": "1", "step": str(int(float(rows[-1]["step"] or 0)) + 1)}
    with metrics.open("a", newline="") as handle:
        csv.DictWriter(handle, fieldnames=header, lineterminator="\n").writerow(stale_row)
    (out / ".last.ckpt.abc123.tmp").write_bytes(b"half a checkpoint")
    caplog.set_level(logging.INFO)
    train(tiny(data, out, max_epochs=2, resume=True))
    epochs = [int(float(row["epoch"])) for row in metrics_rows(out) if row.get("val_dice")]
    assert sorted(epochs) == [0, 1], "each validated epoch appears once"
    assert not list(out.glob(".*.tmp"))
    assert any("unfinished file" in record.getMessage() for record in caplog.records)


def test_lightning_prints_each_line_once_without_tips_or_an_empty_summary(data: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    code = (
        "import sys; from lvseg.cli.main import main; sys.argv = ['lvseg', 'train', '--data', sys.argv[1], "
        "'--out', sys.argv[2], '--model', 'unet', '--img-size', '32', '--base-channels', '4', '--max-epochs', '1']; "
        "main()"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(data), str(tmp_path / "run")], capture_output=True, text=True, timeout=300
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert output.count("GPU available") == 1
    assert "Tip:" not in output and "Total FLOPs: 0" not in output
    assert "exists and is not empty" not in output
    assert "model unet:" in output and "GFLOPs per image at 32 px" in output


def test_bf16_mixed_with_channels_last_trains_and_its_checkpoint_predicts(data: Path, tmp_path: Path) -> None:
    from lvseg.inference import load_model
    from lvseg.training.module import SegmentationTask

    layouts: list[bool] = []
    original = SegmentationTask.training_step

    def spy(self, batch, batch_idx):
        layouts.append(batch["image"].is_contiguous(memory_format=torch.channels_last))
        return original(self, batch, batch_idx)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SegmentationTask, "training_step", spy)
        result = train(
            tiny(data, tmp_path / "fast", model="lvit", max_epochs=1, precision="bf16-mixed", channels_last=True)
        )
    assert layouts and all(layouts)  # every training batch reached the model in channels-last layout
    segmenter = load_model(result.best_checkpoint, device="cpu")
    probability = segmenter.probabilities(torch.rand(1, 3, 32, 32), ["Bilateral pulmonary infection."])
    assert probability.dtype == torch.float32 and torch.isfinite(probability).all()


def test_last_checkpoint_is_the_latest_epoch_even_when_it_is_not_the_best(data: Path, tmp_path: Path) -> None:
    """A resume must continue from where training stopped, not from the last improvement."""
    out = tmp_path / "declining"

    def declining_validation(self: SegmentationTask, batch, batch_idx) -> None:
        self.log("val_dice", 0.9 - 0.1 * self.current_epoch, batch_size=len(batch["text"]))

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SegmentationTask, "validation_step", declining_validation)
        result = train(tiny(data, out, max_epochs=3, model="unet"))
    best, last = read_checkpoint_dict(result.best_checkpoint), read_checkpoint_dict(result.last_checkpoint)
    assert best["epoch"] == 0 and best["lvseg"]["metrics"]["val_dice"] == pytest.approx(0.9)
    assert last["epoch"] == 2 and last["global_step"] == 3 * best["global_step"]
    assert last["lvseg"]["metrics"] == pytest.approx({"val_dice": 0.7, "best_val_dice": 0.9})


def test_crash_mid_run_leaves_a_loadable_last_checkpoint(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "crashed"

    def crash(self: SegmentationTask, batch, batch_idx) -> None:
        if self.current_epoch == 1:
            raise RuntimeError("simulated crash in the second epoch")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SegmentationTask, "on_train_batch_start", crash, raising=False)
        with pytest.raises(RuntimeError, match="simulated crash"):
            train(tiny(data, out, max_epochs=3))
    assert sorted(path.name for path in out.iterdir() if path.is_file()) == ["best.ckpt", "last.ckpt"]
    assert read_checkpoint_dict(out / "last.ckpt")["epoch"] == 0
    segmenter = load_model(out / "last.ckpt")
    sample = load_split(data, "val")[0]
    assert segmenter.predict(sample.image_path, sample.text).mask.shape == (IMG_SIZE, IMG_SIZE)
    with pytest.raises(LvsegError, match="already holds a run"):
        train(tiny(data, out, max_epochs=3))


# ------------------------------------------------------------------------------------------ small parts


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, None),
        ("", None),
        ("40", timedelta(minutes=40)),
        ("40m", timedelta(minutes=40)),
        ("1.5h", timedelta(minutes=90)),
        ("2H", timedelta(hours=2)),
        ("45s", timedelta(seconds=45)),
        (" 30 s ", timedelta(seconds=30)),
        ("01:02:03:04", timedelta(days=1, hours=2, minutes=3, seconds=4)),
    ],
)
def test_parse_max_time(text: str | None, expected: timedelta | None) -> None:
    assert parse_max_time(text) == expected


@pytest.mark.parametrize("text", ["soon", "-5", "1d", "2h30m", "1:2:3", "h"])
def test_parse_max_time_rejects_other_text(text: str) -> None:
    with pytest.raises(LvsegError, match="--max-time"):
        parse_max_time(text)


@pytest.mark.parametrize("size", [0, 100, 48, -32])
def test_image_size_must_be_a_multiple_of_32(size: int, data: Path, tmp_path: Path) -> None:
    with pytest.raises(LvsegError, match=f"--img-size {size} is not a positive multiple of 32"):
        train(tiny(data, tmp_path / "run", img_size=size))
    assert not (tmp_path / "run").exists()


def test_compile_keeps_parameter_names_so_checkpoints_stay_loadable() -> None:
    task = SegmentationTask("unet", {"img_size": IMG_SIZE, "base_channels": 8})
    names = list(task.model.state_dict())
    task.use_compile()  # nn.Module.compile is lazy: nothing compiles until the first forward
    assert list(task.model.state_dict()) == names


def test_compile_without_a_cpp_compiler_is_one_sentence(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from torch._inductor import config as inductor_config

    monkeypatch.setattr(inductor_config.cpp, "cxx", (None, str(tmp_path / "no-such-g++")))
    with pytest.raises(LvsegError, match=r"--compile needs a C\+\+ compiler") as caught:
        train(tiny(data, tmp_path / "run", model="unet", compile=True))
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "run").exists()


def test_compile_is_refused_with_semi_supervised_training(data: Path, tmp_path: Path) -> None:
    with pytest.raises(LvsegError, match="--compile is not available with semi-supervised training"):
        train(tiny(data, tmp_path / "run", compile=True, labeled_fraction=0.5))


def test_atomic_checkpoint_io_keeps_the_previous_file_when_saving_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    io_plugin = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io_plugin.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "epoch": 0}, path)
    before = path.read_bytes()

    real_save = torch.save

    def failing_save(obj, handle, *args, **kwargs):
        buffer = io.BytesIO()
        real_save(obj, buffer)
        handle.write(buffer.getvalue()[:100])  # half a file reaches the disk, then the process "dies"
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        io_plugin.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "epoch": 1}, path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
    loaded = io_plugin.load_checkpoint(path)
    assert loaded["epoch"] == 0 and torch.equal(loaded["state_dict"]["w"], torch.ones(3))


class NotAllowed:  # an arbitrary pickled object: loading with weights_only must refuse it
    pass


def test_atomic_checkpoint_io_loads_weights_only(tmp_path: Path) -> None:
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": NotAllowed()}, path)
    with pytest.raises(CheckpointError, match="evil.ckpt"):
        AtomicCheckpointIO().load_checkpoint(path)


# ------------------------------------------------------------------------------------------------- DDP


def test_ddp_on_two_cpu_processes_over_gloo(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    command = [
        str(LVSEG),
        "train",
        "--data",
        str(data),
        "--out",
        str(out),
        "--img-size",
        str(IMG_SIZE),
        "--base-channels",
        "8",
        "--text-length",
        "12",
        "--devices",
        "2",
        "--strategy",
        "ddp",
        "--accelerator",
        "cpu",
        "--max-epochs",
        "1",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert "MEMBER: 2/2" in output and "distributed_backend=gloo" in output
    assert output.count("best validation Dice") == 1, "only rank 0 prints the summary"
    checkpoint = read_checkpoint_dict(out / "last.ckpt")
    n_train = len(load_split(data, "train"))
    # Each process sees half of the images (DistributedSampler), batch 2 with drop_last.
    assert checkpoint["global_step"] == math.ceil(n_train / 2) // 2 < n_train // 2
    assert (out / "best.ckpt").is_file()
    assert load_model(out / "best.ckpt").model_name == "lvit"


def test_the_multistep_schedule_divides_by_ten_after_each_milestone(tmp_path: Path) -> None:
    from lvseg.recipes import recipe_problems
    from lvseg.training.optim import LR_SCHEDULES
    from lvseg.training.options import check_train_config, with_model_recipe

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = LR_SCHEDULES["multistep"].build(optimizer, {"lr_milestones": [4, 2]})["scheduler"]
    rates = []
    for _ in range(6):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([1.0, 1.0, 0.1, 0.1, 0.01, 0.01])
    with pytest.raises(LvsegError, match="multistep needs at least one --lr-milestone"):
        LR_SCHEDULES["multistep"].build(optimizer, {"lr_milestones": []})
    base = {"data": tmp_path, "out": tmp_path / "run", "model": "unet"}
    with pytest.raises(LvsegError, match="multistep needs at least one --lr-milestone"):
        with_model_recipe(TrainConfig(**base, lr_schedule="multistep"))
    assert with_model_recipe(TrainConfig(**base, lr_schedule="multistep", lr_milestones=[3])).lr_milestones == [3]
    official = with_model_recipe(TrainConfig(**base, recipe="cris-official"))  # the recipe's milestone
    assert (official.lr_schedule, official.lr_milestones) == ("multistep", [35])
    with pytest.raises(LvsegError, match="--lr-milestone 0 must be an epoch >= 1"):
        check_train_config(TrainConfig(**base, lr_milestones=[0]))
    assert recipe_problems({"lr_milestones": [0]}) == ["lr_milestones must be a list of epochs >= 1"]
