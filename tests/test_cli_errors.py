"""Bad input gets one clear ``error:`` line naming the file or value, exit status 2 and no traceback.

Most cases call the console-script entry point ``lvseg.cli.main.main`` in-process (imports are paid
once); two cases run the installed ``lvseg`` script in a subprocess to check the real process.
"""

from __future__ import annotations

import errno
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from lvseg.checkpoint import save_inference_checkpoint
from lvseg.cli.main import main
from lvseg.data.synth import generate_synthetic_dataset
from lvseg.errors import LvsegError
from lvseg.models import create_model

LVSEG = Path(sys.executable).parent / "lvseg"
ANSI = re.compile(r"\x1b\[[0-9;]*m")
TRAIN = Path("Train_Folder")


@pytest.fixture(scope="module")
def clean_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli_errors") / "data"
    generate_synthetic_dataset(root, n=8, size=32, seed=0)
    return root


@pytest.fixture
def data(clean_data: Path, tmp_path: Path) -> Path:
    """A private copy of the dataset that a test may damage."""
    return Path(shutil.copytree(clean_data, tmp_path / "data"))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli_ckpts")
    torch.manual_seed(0)
    options = {"img_size": 32, "base_channels": 4}
    net = create_model("unet", **options)
    good = save_inference_checkpoint(root / "unet.ckpt", net)
    data = good.read_bytes()
    (root / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    (root / "random.ckpt").write_bytes(os.urandom(4096))
    (root / "empty.ckpt").write_bytes(b"")
    torch.save(net.state_dict(), root / "state_dict.pt")  # a bare state_dict: weights without a model description
    torch.save([1, 2, 3], root / "list.pt")
    return {
        "good": good,
        **{
            name: root / f"{name}.{'pt' if name in ('state_dict', 'list') else 'ckpt'}"
            for name in ("truncated", "random", "empty", "state_dict", "list")
        },
    }


def run_main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["lvseg", *map(str, args)])
    with pytest.raises(SystemExit) as exited:
        main()
    return exited.value.code, capsys.readouterr().err


def assert_one_error(code: int, stderr: str, *needles: str) -> str:
    """Exit 2, exactly one ``error:`` line holding every needle, no traceback; returns that line."""
    stderr = ANSI.sub("", stderr)
    assert code == 2, stderr
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, stderr
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def train_args(data: Path, out: Path, *extra: object) -> list[object]:
    return ["train", "--data", data, "--out", out, "--img-size", 32, "--base-channels", 8, "--max-epochs", 1, *extra]


def rewrite_table(split_dir: Path, transform) -> None:
    table_path = split_dir / f"{split_dir.name.removesuffix('_Folder')}_text.xlsx"
    table = pd.read_excel(table_path, dtype=str)
    transform(table).to_excel(table_path, index=False)


def first_image(data: Path) -> Path:
    return sorted((data / TRAIN / "img").iterdir())[0]


# ------------------------------------------------------------------------------------------------ data


def test_missing_mask(data: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    image = first_image(data)
    (data / TRAIN / "labelcol" / f"mask_{image.name}").unlink()
    code, err = run_main(monkeypatch, capsys, *train_args(data, tmp_path / "run"))
    assert_one_error(code, err, str(image), "has no mask", f"mask_{image.name}")
    assert not (tmp_path / "run").exists()


def test_missing_text_row(data: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    image = first_image(data)
    rewrite_table(data / TRAIN, lambda table: table[table["Image"] != f"mask_{image.name}"])
    code, err = run_main(monkeypatch, capsys, *train_args(data, tmp_path / "run"))
    assert_one_error(code, err, str(image), "has no row in", "Train_text.xlsx")


def test_empty_description(data: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    def blank_first(table: pd.DataFrame) -> pd.DataFrame:
        table.loc[0, "Description"] = ""
        return table

    rewrite_table(data / TRAIN, blank_first)
    code, err = run_main(monkeypatch, capsys, *train_args(data, tmp_path / "run"))
    assert_one_error(code, err, "row 2", "Train_text.xlsx", "empty 'Description'")


@pytest.mark.parametrize("damage", ["random bytes", "truncated"])
def test_unreadable_image(damage: str, data: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    image = first_image(data)
    if damage == "random bytes":
        image.write_bytes(os.urandom(300))
    else:
        image.write_bytes(image.read_bytes()[:-40])
    code, err = run_main(monkeypatch, capsys, *train_args(data, tmp_path / "run"))
    assert_one_error(code, err, str(image), "cannot be read")


def test_xlsx_without_description_column(data: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    rewrite_table(data / TRAIN, lambda table: table.rename(columns={"Description": "Report"}))
    code, err = run_main(monkeypatch, capsys, *train_args(data, tmp_path / "run"))
    assert_one_error(code, err, "Train_text.xlsx", "no column 'Description'", "'Report'")


def test_several_problems_are_listed_under_one_error_line(data: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    images = sorted((data / TRAIN / "img").iterdir())
    (data / TRAIN / "labelcol" / f"mask_{images[0].name}").unlink()
    images[1].write_bytes(b"not an image")
    code, err = run_main(monkeypatch, capsys, *train_args(data, tmp_path / "run"))
    assert_one_error(code, err, "Train_Folder", "2 problem(s)")
    assert str(images[0]) in err and str(images[1]) in err


def test_brackets_in_paths_are_printed_verbatim(clean_data: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    missing = tmp_path / "[old]" / "data"  # rich markup must not eat "[old]"
    code, err = run_main(monkeypatch, capsys, *train_args(missing, tmp_path / "run"))
    assert_one_error(code, err, str(missing), "not found")


# ------------------------------------------------------------------------------------------ train flags


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--img-size", 100], "--img-size 100 is not a positive multiple of 32"),
        (["--max-time", "soon"], "--max-time 'soon'"),
        (["--model", "nope"], "unknown model 'nope'"),
        (["--text-encoder", "bogus"], "unknown text encoder 'bogus'"),
        (["--strategy", "foo"], "--strategy foo"),
        (["--accelerator", "cpu", "--devices", "abc"], "--devices abc"),
        # Validated before any work starts (issue 13): each names the option, the value and the allowed range.
        (["--batch-size", 0], "--batch-size 0 must be >= 1"),
        (["--batch-size", -2], "--batch-size -2 must be >= 1"),
        (["--lr", -1], "--lr -1.0 must be > 0"),
        (["--num-workers", -1], "--num-workers -1 must be >= 0"),
        (["--labeled-fraction", 1.5], "--labeled-fraction 1.5 must be > 0 and <= 1"),
        (["--patience", -1], "--patience -1 must be >= 1"),
        (["--max-epochs", 0], "--max-epochs 0 must be >= 1"),
        (["--teacher-decay", 5, "--labeled-fraction", 0.5], "--teacher-decay 5.0 must be >= 0 and < 1"),
        (["--in-channels", 2], "--in-channels 2 is not 1 (gray) or 3 (RGB)"),
        (["--lr-scale", "towers=abc"], "--lr-scale 'towers=abc' is not GROUP=FACTOR"),
        (["--lr-scale", "towers=0.1"], "--lr-scale names parameter group(s) towers"),
        # Issue 22: nonsense that used to crash or pass silently.
        pytest.param(
            ["--accelerator", "tpu"],
            "--accelerator tpu is not available here (torch_xla is not installed or no TPU is attached); "
            "accelerators available on this machine: auto, cpu",
            marks=pytest.mark.skipif(
                importlib.util.find_spec("torch_xla") is not None
                or torch.cuda.is_available()
                or torch.backends.mps.is_available(),
                reason="this machine has torch_xla, CUDA or MPS: other accelerators are available",
            ),
        ),
        (["--accelerator", "abacus"], "--accelerator 'abacus' is not one of auto, cpu, cuda, gpu, mps, tpu"),
        (
            ["--model", "lvit", "--model-option", "dropout=abc"],
            "--model-option dropout=abc: model 'lvit' takes dropout as a number, default 0.1",
        ),
        (
            ["--model", "lvit", "--model-option", "dropout=5"],
            "--model-option dropout=5: model 'lvit' cannot be built "
            "with it: dropout probability has to be between 0 and 1, but got 5",
        ),
        (["--max-time", "0"], "--max-time '0' leaves no time to train; give a positive duration"),
        (["--max-time", "0:0:0:0"], "--max-time '0:0:0:0' leaves no time to train"),
        (
            ["--model", "unet", "--text-encoder", "learned"],
            "--text-encoder: model 'unet' is image-only (it reads no text); leave --text-encoder out",
        ),
        (
            ["--model", "unet", "--text-length", 20, "--text-option", "dim=8"],
            "--text-option and --text-length: model 'unet' is image-only",
        ),
    ],
)
def test_bad_train_flags(extra: list, needle: str, clean_data: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    code, err = run_main(monkeypatch, capsys, *train_args(clean_data, tmp_path / "run"), *extra)
    assert_one_error(code, err, needle)
    assert not (tmp_path / "run" / "last.ckpt").exists()


def test_out_naming_an_existing_file(clean_data: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    existing = tmp_path / "notes.txt"
    existing.write_text("keep me")
    code, err = run_main(monkeypatch, capsys, *train_args(clean_data, existing))
    assert_one_error(code, err, "--out", str(existing), "is a file")
    assert existing.read_text() == "keep me"


def test_predict_on_a_decompression_bomb(checkpoints, tmp_path: Path, monkeypatch, capsys) -> None:
    from serving_support import png_with_header_only

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_with_header_only(30_000, 30_000))  # 900 megapixels claimed by a few bytes
    code, err = run_main(
        monkeypatch,
        capsys,
        "predict",
        "--checkpoint",
        checkpoints["good"],
        "--image",
        bomb,
        "--out",
        tmp_path / "mask.png",
    )
    assert_one_error(code, err, str(bomb), "too large to decode safely")
    assert not (tmp_path / "mask.png").exists()


def test_serve_on_a_busy_port_fails_before_announcing(checkpoints, monkeypatch, capsys, caplog) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, err = run_main(monkeypatch, capsys, "serve", "--checkpoint", checkpoints["good"], "--port", port)
    assert_one_error(code, err, f"cannot serve on 127.0.0.1:{port}", "--port")
    assert "serving on" not in caplog.text + err


def test_info_with_a_bad_width(monkeypatch, capsys) -> None:
    code, err = run_main(monkeypatch, capsys, "info", "--model", "unet", "--base-channels", "0")
    assert_one_error(code, err, "base_channels must be a positive integer, got 0")


def test_resume_into_a_run_of_another_model(clean_data: Path, tmp_path: Path, checkpoints, monkeypatch, capsys) -> None:
    out = tmp_path / "unet_run"
    out.mkdir()
    shutil.copy(checkpoints["good"], out / "last.ckpt")
    code, err = run_main(monkeypatch, capsys, *train_args(clean_data, out, "--model", "lvit", "--resume"))
    assert_one_error(code, err, str(out / "last.ckpt"), "'unet' model, not 'lvit'")


def test_resume_from_a_corrupted_last_checkpoint(
    clean_data: Path, tmp_path: Path, checkpoints, monkeypatch, capsys
) -> None:
    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(checkpoints["truncated"], out / "last.ckpt")
    code, err = run_main(monkeypatch, capsys, *train_args(clean_data, out, "--model", "unet", "--resume"))
    assert_one_error(code, err, str(out / "last.ckpt"), "corrupted")


def test_train_into_a_used_folder_without_resume(
    clean_data: Path, tmp_path: Path, checkpoints, monkeypatch, capsys
) -> None:
    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(checkpoints["good"], out / "last.ckpt")
    code, err = run_main(monkeypatch, capsys, *train_args(clean_data, out, "--model", "unet"))
    assert_one_error(code, err, str(out), "--resume")


# ------------------------------------------------------------------------------ evaluate and predict


@pytest.mark.parametrize(
    ("kind", "needle"),
    [
        ("truncated", "corrupted"),
        ("random", "corrupted"),
        ("empty", "corrupted"),
        ("state_dict", "not an lvseg checkpoint"),
        ("list", "expected a dict"),
        ("missing", "does not exist"),
    ],
)
@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_bad_checkpoints(
    command: str, kind: str, needle: str, clean_data: Path, checkpoints, tmp_path: Path, monkeypatch, capsys
) -> None:
    checkpoint = checkpoints.get(kind, tmp_path / "missing.ckpt")
    if command == "evaluate":
        args = ["evaluate", "--checkpoint", checkpoint, "--data", clean_data, "--out", tmp_path / "eval"]
    else:
        image = sorted((clean_data / "Test_Folder" / "img").iterdir())[0]
        args = ["predict", "--checkpoint", checkpoint, "--image", image, "--out", tmp_path / "mask.png"]
    code, err = run_main(monkeypatch, capsys, *args)
    assert_one_error(code, err, str(checkpoint), needle)
    assert not (tmp_path / "mask.png").exists() and not (tmp_path / "eval").exists()


# ------------------------------------------------------------------------------------- real processes


def test_console_script_reports_errors_without_traceback(data: Path, checkpoints, tmp_path: Path) -> None:
    image = first_image(data)
    (data / TRAIN / "labelcol" / f"mask_{image.name}").unlink()
    env = {key: value for key, value in os.environ.items() if key not in ("FORCE_COLOR", "COLUMNS")}
    env["OMP_NUM_THREADS"] = "1"  # tiny model; two threads thrash when the cores are shared
    done = subprocess.run(
        [str(LVSEG), *map(str, train_args(data, tmp_path / "run"))],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert_one_error(done.returncode, done.stderr, str(image), "has no mask")

    done = subprocess.run(
        [
            str(LVSEG),
            "predict",
            "--checkpoint",
            str(checkpoints["truncated"]),
            "--image",
            str(first_image(data)),
            "--out",
            str(tmp_path / "mask.png"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert_one_error(done.returncode, done.stderr, str(checkpoints["truncated"]), "corrupted")
    assert done.stdout.strip() == ""


def test_help_shows_flags_as_flags_and_explains_every_option() -> None:
    import click
    import typer
    from typer.testing import CliRunner

    from lvseg.cli.main import app

    output = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "200"}).output
    assert "<bool>" not in output  # a flag takes no value
    assert any(line.split()[:1] == ["--resume"] for line in output.splitlines())

    def options_without_help(command: click.Command, path: str) -> list[str]:
        if isinstance(command, click.Group):
            return [
                item for name, sub in command.commands.items() for item in options_without_help(sub, f"{path} {name}")
            ]
        return [
            f"{path} --{param.name}"
            for param in command.params
            if isinstance(param, click.Option) and param.name != "help" and not param.help
        ]

    assert options_without_help(typer.main.get_command(app), "lvseg") == []


# --------------------------------------------------------------------------------- recipes, pretrained models


def test_bad_recipe_options_are_named_at_once(data: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    code, err = run_main(
        monkeypatch,
        capsys,
        *train_args(data, tmp_path / "run", "--recipe", "fast", "--optimizer", "sgd", "--grad-clip", -1),
    )
    assert_one_error(
        code,
        err,
        "--recipe 'fast' is not one of lvit, vlsm",
        "--optimizer 'sgd' is not one of adam, adamw",
        "--grad-clip -1.0 must be >= 0",
    )


def test_missing_biomedclip_weights_say_what_to_download(data: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    code, err = run_main(
        monkeypatch,
        capsys,
        "train",
        "--data",
        data,
        "--out",
        tmp_path / "run",
        "--model",
        "biomedclipseg",
        "--img-size",
        32,
        "--model-option",
        f"biomedclip={tmp_path / 'empty'}",
    )
    assert_one_error(
        code,
        err,
        f"BiomedCLIP is not in '{tmp_path / 'empty'}'",
        "download open_clip_pytorch_model.bin from microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
        "vocab.txt",
    )


def test_a_folder_or_a_file_in_the_wrong_place_is_named_as_such(
    checkpoints: dict, tmp_path: Path, monkeypatch, capsys
) -> None:
    code, err = run_main(
        monkeypatch, capsys, "predict", "-c", checkpoints["good"], "-i", tmp_path, "-o", tmp_path / "m.png"
    )
    assert_one_error(code, err, f"--image '{tmp_path}' is a folder")
    (tmp_path / "image.png").write_bytes(b"x")
    code, err = run_main(
        monkeypatch,
        capsys,
        "predict",
        "-c",
        checkpoints["good"],
        "--folder",
        tmp_path / "image.png",
        "-o",
        tmp_path / "out",
    )
    assert_one_error(code, err, "is a file")


def pretrained_train_args(data: Path, out: Path, *extra: object) -> list[object]:
    """``lvseg train`` of a model with pretrained parts (they take no --base-channels)."""
    return ["train", "--data", data, "--out", out, "--img-size", 32, "--max-epochs", 1, *extra]


def test_missing_biomedclipseg_d_weights_name_the_decoder_checkpoint_too(
    data: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    """biomedclipseg-d needs BiomedCLIP and the CLIPSeg checkpoint its decoder starts from: one error lists both."""
    monkeypatch.delenv("LVSEG_ALLOW_DOWNLOAD", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    decoder = "lvseg-test/no-such-clipseg"  # surely not in any Hugging Face cache
    args = ["--model", "biomedclipseg-d", "--model-option", f"biomedclip={tmp_path / 'empty'}"]
    code, err = run_main(
        monkeypatch,
        capsys,
        *pretrained_train_args(data, tmp_path / "run", *args, "--model-option", f"decoder_init={decoder}"),
    )
    assert_one_error(
        code,
        err,
        f"BiomedCLIP is not in '{tmp_path / 'empty'}'",
        f"biomedclipseg-d also needs its decoder's weights: CLIPSeg decoder checkpoint '{decoder}'",
        f"hf download {decoder}",
        "--model-option decoder_init=",
    )


def _no_network(*args: object, **kwargs: object) -> None:
    """What transformers raises for a Hub id when the network is down (and nothing is cached)."""
    assert kwargs.get("local_files_only") is False  # LVSEG_ALLOW_DOWNLOAD=1: a download was tried
    raise OSError(
        "We couldn't connect to 'https://huggingface.co' to load the files, and couldn't find them in the cached "
        "files.\nCheck your internet connection or see how to run the library in offline mode."
    )


@pytest.mark.parametrize(
    ("extra", "patched", "what"),
    [
        (["--model", "lvit", "--text-encoder", "clip:nobody/clip"], ["CLIPTextModelWithProjection"], "CLIP text model"),
        (["--model", "lvit", "--text-encoder", "hf:nobody/bert"], ["AutoTokenizer"], "text encoder"),
        (
            ["--model", "clipseg", "--model-option", "name_or_path=nobody/clipseg"],
            ["CLIPSegConfig", "CLIPSegForImageSegmentation"],
            "CLIPSeg model",
        ),
    ],
)
def test_a_failed_download_says_it_failed_not_to_allow_downloads(
    extra: list[str], patched: list[str], what: str, data: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    import transformers

    monkeypatch.setenv("LVSEG_ALLOW_DOWNLOAD", "1")
    for name in patched:
        monkeypatch.setattr(getattr(transformers, name), "from_pretrained", _no_network)
    model = extra[-1].split(":", 1)[-1].split("=", 1)[-1]
    code, err = run_main(monkeypatch, capsys, *pretrained_train_args(data, tmp_path / "run", *extra))
    line = assert_one_error(
        code,
        err,
        f"{what} '{model}' could not be downloaded from the Hugging Face Hub (https://huggingface.co/{model})",
        "couldn't connect to 'https://huggingface.co'",
        "check the model id and the network",
        f"hf download {model}",
    )
    assert "LVSEG_ALLOW_DOWNLOAD" not in line


# ------------------------------------------------------------------------------------------ console output


def test_output_to_a_file_is_not_wrapped(tmp_path: Path, monkeypatch, capsys) -> None:
    """Printed to a file (not a terminal), a long line stays one line: a suggested command can be copied."""
    monkeypatch.delenv("COLUMNS", raising=False)
    out = tmp_path / ("a-long-folder-name-" * 4) / "synthetic"
    monkeypatch.setattr(sys, "argv", ["lvseg", "data", "synth", "--out", str(out), "--n", "5", "--size", "32"])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("wrote 5 synthetic images") and f"to {out}: Train_Folder" in line for line in lines)


def test_counts_agree_with_their_nouns(clean_data: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    from lvseg.cli.output import count

    assert [count(n, "epoch") for n in (0, 1, 2, 1000)] == ["0 epochs", "1 epoch", "2 epochs", "1,000 epochs"]
    monkeypatch.setattr(sys, "argv", ["lvseg", *map(str, train_args(clean_data, tmp_path / "run"))])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 0
    printed = capsys.readouterr().out
    assert "after 1 epoch\n" in printed and "1 epochs" not in printed


def test_suggested_commands_run_in_the_users_shell(tmp_path: Path, monkeypatch) -> None:
    """``make demo`` runs .venv/bin/lvseg without activating the venv: the suggestion must name that script."""
    from lvseg.cli.output import lvseg_command

    script = tmp_path / "venv" / "bin" / "lvseg"
    script.parent.mkdir(parents=True)
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["venv/bin/lvseg", "demo"])
    monkeypatch.setenv("PATH", str(tmp_path / "elsewhere"))
    assert lvseg_command() == "venv/bin/lvseg"
    monkeypatch.setenv("PATH", str(script.parent))  # the venv is active: the plain name works
    assert lvseg_command() == "lvseg"


# ------------------------------------------------------------------------------ outputs (issue 22)


@pytest.fixture(scope="module")
def official_lvit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from official_lvit_layout import OfficialLayoutLViT

    source = tmp_path_factory.mktemp("official") / "official.pth"
    torch.save({"state_dict": OfficialLayoutLViT(img_size=64, base=8, text_len=5, text_dim=16).state_dict()}, source)
    return source


def output_args(
    command: str, out: Path, clean_data: Path, checkpoints: dict[str, Path], official_lvit: Path, free: Path
) -> tuple[list[object], str, Path]:
    """The arguments of ``command`` writing under ``out`` (any other output goes to the writable folder ``free``),
    the flag that names the output under ``out``, and that output's path."""
    image = sorted((clean_data / "Test_Folder" / "img").iterdir())[0]
    good = checkpoints["good"]
    if command == "train":
        return train_args(clean_data, out, "--model", "unet"), "--out", out
    if command == "evaluate":
        return ["evaluate", "-c", good, "--data", clean_data, "--out", out], "--out", out
    if command == "export":
        return ["export", "-c", good, "--out", out], "--out", out
    if command == "predict --image --out":
        return ["predict", "-c", good, "--image", image, "--out", out / "mask.png"], "--out", out / "mask.png"
    if command == "predict --overlay":
        args = ["predict", "-c", good, "--image", image, "--out", free / "mask.png", "--overlay", out / "o.png"]
        return args, "--overlay", out / "o.png"
    if command == "predict --folder":
        return ["predict", "-c", good, "--folder", clean_data / "Test_Folder", "--out", out], "--out", out
    assert command == "import-lvit"
    return ["import-lvit", official_lvit, "--out", out / "lvit.ckpt"], "--out", out / "lvit.ckpt"


OUTPUT_COMMANDS = [
    "train",
    "evaluate",
    "export",
    "predict --image --out",
    "predict --overlay",
    "predict --folder",
    "import-lvit",
]


@pytest.mark.parametrize("command", OUTPUT_COMMANDS)
def test_an_output_under_a_file_is_named_before_any_work(
    command: str, clean_data: Path, checkpoints, official_lvit: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    blocker = tmp_path / "notes.txt"
    blocker.write_text("keep me")
    args, flag, named = output_args(command, blocker / "out", clean_data, checkpoints, official_lvit, tmp_path)
    code, err = run_main(monkeypatch, capsys, *args)
    assert_one_error(code, err, f"{flag} '{named}' cannot be created: '{blocker}' is a file, not a folder; expected a")
    assert blocker.read_text() == "keep me"
    assert not (tmp_path / "mask.png").exists()  # predict --overlay: no mask written before the refusal


@pytest.mark.parametrize("command", OUTPUT_COMMANDS)
def test_an_output_in_a_read_only_folder_is_named_before_any_work(
    command: str, clean_data: Path, checkpoints, official_lvit: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    read_only.chmod(0o555)
    try:
        if os.access(read_only, os.W_OK):
            # root writes through 0o555: deny the folder as the kernel denies any other user
            allowed = os.access
            monkeypatch.setattr(
                os,
                "access",
                lambda path, mode, **kw: False if Path(path) == read_only and mode & os.W_OK else allowed(path, mode),
            )
        args, flag, named = output_args(command, read_only / "out", clean_data, checkpoints, official_lvit, tmp_path)
        code, err = run_main(monkeypatch, capsys, *args)
        assert_one_error(code, err, f"{flag} '{named}' cannot be written: the folder '{read_only}' is not writable")
        assert list(read_only.iterdir()) == []
        assert not (tmp_path / "mask.png").exists()
    finally:
        read_only.chmod(0o755)


SYSFS = Path("/sys")


@pytest.mark.skipif(
    not (SYSFS.is_dir() and os.access(SYSFS, os.W_OK)),
    reason="needs a folder that os.access calls writable but that refuses new files (/sys, as root)",
)
@pytest.mark.parametrize("command", OUTPUT_COMMANDS)
def test_an_output_in_a_folder_refusing_new_files_is_named_before_any_work(
    command: str, clean_data: Path, checkpoints, official_lvit: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    """Root passes every os.access check, yet sysfs (like some mounts) refuses new files: a probe file tells."""
    args, flag, named = output_args(command, SYSFS / "lvseg-out", clean_data, checkpoints, official_lvit, tmp_path)
    code, err = run_main(monkeypatch, capsys, *args)
    assert_one_error(code, err, f"{flag} '{named}' cannot be written: the folder '{SYSFS}' refuses new files")
    assert not (tmp_path / "mask.png").exists()  # predict --overlay: no mask written before the refusal


@pytest.mark.skipif(not SYSFS.is_dir(), reason="needs /sys, a folder that refuses new files")
def test_an_atomic_write_that_fails_names_the_file_asked_for() -> None:
    from lvseg.files import atomic_write_text

    target = SYSFS / "lvseg-report.txt"
    with pytest.raises(OSError) as caught:
        atomic_write_text(target, "x")
    assert caught.value.filename == str(target)  # not the temporary '.lvseg-report.txt.XXXX.tmp'


@pytest.mark.parametrize("mode", ["shuffled", "empty"])  # "all" runs and says reliance does not apply
def test_a_text_mode_for_an_image_only_model_is_refused(
    mode: str, clean_data: Path, checkpoints, tmp_path: Path, monkeypatch, capsys
) -> None:
    args = ["evaluate", "-c", checkpoints["good"], "-d", clean_data, "-o", tmp_path / "eval", "--text-mode", mode]
    code, err = run_main(monkeypatch, capsys, *args, "--device", "cpu")
    assert_one_error(code, err, f"model 'unet' is image-only: it reads no reports, so --text-mode {mode} would give")
    assert not (tmp_path / "eval" / "metrics.json").exists()


@pytest.mark.parametrize(
    ("outputs", "expected"),
    [
        (["--out", "{image}"], "--out '{image}' is the image itself; write the mask to another file"),
        (
            ["--out", "{tmp}/m.png", "--overlay", "{tmp}/m.png"],
            "--overlay '{tmp}/m.png' is the --out file; give the overlay and the mask different files",
        ),
        (
            ["--out", "{tmp}/m.png", "--overlay", "{image}"],
            "--overlay '{image}' is the image itself; write the overlay to another file",
        ),
    ],
)
def test_outputs_that_would_overwrite_each_other_are_refused(
    outputs: list[str], expected: str, clean_data: Path, checkpoints, tmp_path: Path, monkeypatch, capsys
) -> None:
    image = next((clean_data / "Test_Folder" / "img").iterdir())
    before = image.read_bytes()
    fill = {"image": image, "tmp": tmp_path}
    args = ["predict", "-c", checkpoints["good"], "--image", image, "--text", "one lesion"]
    code, err = run_main(monkeypatch, capsys, *args, *(value.format(**fill) for value in outputs))
    assert_one_error(code, err, expected.format(**fill))
    assert image.read_bytes() == before and not (tmp_path / "m.png").exists()


@pytest.mark.parametrize(
    ("command", "needle"),
    [
        ("evaluate", "is a file; expected a folder (for metrics.json"),
        ("predict --folder", "is a file; expected a folder (for masks/"),
        ("import-lvit", "is a folder; expected a file (the lvseg checkpoint"),
    ],
)
def test_an_output_of_the_wrong_kind_is_named(
    command: str, needle: str, clean_data: Path, checkpoints, official_lvit: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    args, flag, _ = output_args(command, tmp_path / "out", clean_data, checkpoints, official_lvit, tmp_path)
    if command == "import-lvit":
        out = tmp_path / "out" / "lvit.ckpt"
        out.mkdir(parents=True)  # an existing folder where the checkpoint file should go
    else:
        out = tmp_path / "out"
        out.write_text("keep me")
    code, err = run_main(monkeypatch, capsys, *args)
    assert_one_error(code, err, f"{flag} '{out}' {needle}")


def test_a_write_that_fails_after_the_checks_is_one_line(
    checkpoints, clean_data: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    """The folder became unwritable between the check and the write: the path and the system's reason."""
    import lvseg.data.images

    def denied(path: Path, write: object) -> Path:
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(lvseg.data.images, "atomic_write", denied)
    image = sorted((clean_data / "Test_Folder" / "img").iterdir())[0]
    out = tmp_path / "mask.png"
    code, err = run_main(monkeypatch, capsys, "predict", "-c", checkpoints["good"], "--image", image, "--out", out)
    assert_one_error(code, err, f"cannot use '{out}': Permission denied (PermissionError)")


def test_an_allocation_that_fails_is_one_line(
    checkpoints, clean_data: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    import lvseg.cli.predict

    def no_memory(path: Path) -> None:
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: you tried")

    monkeypatch.setattr(lvseg.cli.predict, "read_hwc", no_memory)
    image = sorted((clean_data / "Test_Folder" / "img").iterdir())[0]
    args = ["predict", "-c", checkpoints["good"], "--image", image, "--out", tmp_path / "mask.png"]
    code, err = run_main(monkeypatch, capsys, *args)
    assert_one_error(code, err, "out of memory", "can't allocate memory", "lower --batch-size, --img-size")


# ------------------------------------------------------------------------------ memory bounds (issue 22)


@pytest.fixture
def machine_of_24_gb(monkeypatch: pytest.MonkeyPatch) -> None:
    """The memory estimate compared with 24 GB available, whatever this machine has."""
    import lvseg.memory

    monkeypatch.setattr(lvseg.memory, "_machine_available", lambda: 24 * 10**9)
    monkeypatch.setattr(lvseg.memory, "_cgroup_room", lambda: None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (
            ["--model", "unet", "--img-size", 32000, "--batch-size", 1],
            "--img-size 32000 with --batch-size 1 needs about 545 GB for one batch of activations (8 channels at "
            "full resolution); this machine has 24 GB of memory available: lower --img-size or --batch-size",
        ),
        (
            ["--model", "unet", "--img-size", 224, "--batch-size", 10**6],
            "--img-size 224 with --batch-size 1000000 needs about 26.7 TB",
        ),
        (
            ["--model", "lvit", "--text-length", 100_000_000],
            "--text-length 100000000 needs about 307 GB for the text encoder's position table and one batch of token "
            "features; this machine has 24 GB of memory available: lower --text-length",
        ),
    ],
)
def test_sizes_that_cannot_fit_are_refused_before_allocation(
    extra: list, needle: str, machine_of_24_gb: None, clean_data: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    code, err = run_main(monkeypatch, capsys, *train_args(clean_data, tmp_path / "run"), *extra)
    assert_one_error(code, err, needle)
    assert not (tmp_path / "run").exists()


def test_a_checkpoint_too_large_for_this_machine_is_refused_before_loading(
    machine_of_24_gb: None, clean_data: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    huge = save_inference_checkpoint(tmp_path / "huge.ckpt", create_model("unet", img_size=32000, base_channels=4))
    image = sorted((clean_data / "Test_Folder" / "img").iterdir())[0]
    code, err = run_main(monkeypatch, capsys, "predict", "-c", huge, "--image", image, "--out", tmp_path / "m.png")
    assert_one_error(
        code,
        err,
        f"checkpoint '{huge}' runs at 32000 px: one image needs about 81.9 GB for one batch of activations; this "
        "machine has 24 GB of memory available: use a machine with more memory",
    )
    code, err = run_main(monkeypatch, capsys, "evaluate", "-c", huge, "--data", clean_data, "--out", tmp_path / "e")
    assert_one_error(code, err, "--batch-size 8 needs about 655 GB", "this machine has 24 GB")
    assert not (tmp_path / "m.png").exists() and not (tmp_path / "e").exists()


# ------------------------------------------------------------------------- accepted nonsense (issue 22)


def test_data_check_applies_the_splits_train_needs(data: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    shutil.rmtree(data / "Val_Folder")
    code, err = run_main(monkeypatch, capsys, "data", "check", data)
    check_line = assert_one_error(code, err, f"split folder '{data / 'Val_Folder'}' not found", "lvseg train needs")
    code, err = run_main(monkeypatch, capsys, *train_args(data, tmp_path / "run"))
    train_line = assert_one_error(code, err)
    assert train_line.removeprefix("error: ") in check_line  # the same rule, the same words
    monkeypatch.setattr(sys, "argv", ["lvseg", "data", "check", str(data), "--split", "train", "--split", "test"])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 0 and f"ok: {data}" in capsys.readouterr().out  # the present splits, by name


def test_a_run_that_ends_before_its_first_checkpoint_says_so(tmp_path: Path) -> None:
    """Lightning stops at a time limit before the first validation: no checkpoint to list (not one listed twice)."""
    from lvseg.cli.train import written_checkpoints
    from lvseg.training.fit import TrainConfig, TrainResult

    out = tmp_path / "run"
    out.mkdir()
    config = TrainConfig(data=tmp_path / "data", out=out, max_time="1s")
    nothing = TrainResult(
        best_checkpoint=out / "last.ckpt", last_checkpoint=out / "last.ckpt", best_val_dice=None, epochs=0
    )
    with pytest.raises(
        LvsegError, match=r"no checkpoint was written in '.*run': --max-time 1s ran out before the first"
    ):
        written_checkpoints(config, nothing)
    (out / "last.ckpt").write_bytes(b"x")
    assert written_checkpoints(config, nothing) == [out / "last.ckpt"]  # once, though named as best and last


def test_a_finished_run_lists_each_checkpoint_once(clean_data: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    out = tmp_path / "run"
    monkeypatch.setattr(sys, "argv", ["lvseg", *map(str, train_args(clean_data, out, "--model", "unet"))])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 0
    listed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("checkpoints:")]
    assert listed == [f"checkpoints: {out / 'best.ckpt'}, {out / 'last.ckpt'}"]


def test_prompts_refuse_a_mask_whose_size_differs_from_its_image(data: Path, monkeypatch, capsys) -> None:
    from PIL import Image

    image = first_image(data)
    mask = data / TRAIN / "labelcol" / f"mask_{image.name}"
    Image.new("L", (20, 16), 255).save(mask)
    before = {path: path.read_bytes() for path in data.glob("*_Folder/*_text.*")}
    code, err = run_main(
        monkeypatch, capsys, "prompts", "--data", data, "--class-name", "lesion", "--modality", "x-ray", "--overwrite"
    )
    assert_one_error(code, err, f"mask '{mask}' is 20x16 but its image '{image}' is 32x32; expected the same size")
    assert {path: path.read_bytes() for path in data.glob("*_Folder/*_text.*")} == before  # nothing written
    code, err = run_main(monkeypatch, capsys, "data", "check", data)
    assert_one_error(code, err, f"mask '{mask}' is 20x16")  # the same rule as data check's


@pytest.mark.parametrize("command", ["train", "data check"])
def test_a_zip_of_junk_named_xlsx_is_named_plainly(
    command: str, data: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    import zipfile

    table = data / TRAIN / "Train_text.xlsx"
    with zipfile.ZipFile(table, "w") as archive:
        archive.writestr("junk.txt", "hello")
    args = train_args(data, tmp_path / "run") if command == "train" else ["data", "check", data]
    code, err = run_main(monkeypatch, capsys, *args)
    line = assert_one_error(
        code,
        err,
        f"text file '{table}' cannot be read: it is a zip archive without 'xl/workbook.xml', not an Excel "
        "workbook (.xlsx)",
    )
    assert "KeyError" not in line


#: Damaged workbooks and what each is called; none may show pandas' or openpyxl's raw exception.
DAMAGED_WORKBOOKS = {
    "workbook part only": (
        {"xl/workbook.xml": "<workbook/>"},
        "it is a damaged Excel workbook: its zip archive has no '[Content_Types].xml'",
    ),
    "junk workbook XML": (
        {"[Content_Types].xml": "<Types/>", "xl/workbook.xml": "<<not xml"},
        "the workbook is damaged (",
    ),
}


@pytest.mark.parametrize("case", [*DAMAGED_WORKBOOKS, "cut in half"])
def test_a_damaged_workbook_is_named_plainly(case: str, data: Path, monkeypatch, capsys) -> None:
    import zipfile

    table = data / TRAIN / "Train_text.xlsx"
    if case == "cut in half":
        import pandas as pd

        pd.DataFrame({"Image": ["a.png"], "Description": ["one lesion"]}).to_excel(table, index=False)
        table.write_bytes(table.read_bytes()[: table.stat().st_size // 2])
        expected = "it starts like an Excel workbook (a zip archive) but is cut short or damaged"
    else:
        parts, expected = DAMAGED_WORKBOOKS[case]
        with zipfile.ZipFile(table, "w") as archive:
            for name, content in parts.items():
                archive.writestr(name, content)
    code, err = run_main(monkeypatch, capsys, "data", "check", data)
    line = assert_one_error(code, err, f"text file '{table}' cannot be read: {expected}")
    assert "KeyError" not in line and "ParseError" not in line and "holds text" not in line
