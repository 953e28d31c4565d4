"""CRIS: the published checkpoint layouts converted exactly, CLIP RN50 weights, sizes and GFLOPs, the text padding
modes, the losses, the parameter groups and the batch-of-one guard.

(Forward/backward in both modes, training, checkpoints, evaluate, predict, the app, ONNX export and a
semi-supervised step are covered for cris by tests/test_model_contract.py, with a tiny local CLIP tokenizer.)
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from lvseg.cli.main import app
from lvseg.errors import CheckpointError, LvsegError
from lvseg.importers import official_checkpoint_hint
from lvseg.importers.cris import import_cris_checkpoint
from lvseg.models import create_model
from lvseg.models.cris_weights import map_cris_key, read_cris_checkpoint
from lvseg.models.describe import describe_built_model
from lvseg.models.pretrained import weights_from

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hf_support import save_tiny_clip
from official_cris_layout import (
    MEAN,
    STD,
    STUDY_MODULE,
    OfficialCRIS,
    official_ids,
    randomise_statistics,
    save_layouts,
    save_open_clip,
)

#: C5 is 3 x 3 at 96 px while the position table is 2 x 2 (pool_grid): the bicubic resize is no identity.
IMG_SIZE = 96
WORD_LEN = 24  # the tiny tokenizer's context
#: No "!" (id 0 of CLIP's vocabulary, which the official pad mask hides): see the test of that difference.
PROMPTS = ["polyp", "one small pink round polyp, located in the center of the image"]
#: The tiny official model's architecture as CRIS options (heads are not in the shapes).
TINY = {
    "width": 8,
    "layers": [1, 2, 1, 1],
    "embed_dim": 24,
    "pool_grid": 2,
    "text_width": 16,
    "text_layers": 2,
    "text_heads": 2,
    "context_length": WORD_LEN,
    "neck_dims": [8, 16, 24],
    "decoder_layers": 2,
    "decoder_heads": 2,
    "decoder_ffn": 32,
}


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_clip(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def tokenizer(clip_folder: Path) -> Any:
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(clip_folder))


@pytest.fixture(scope="module")
def official(tokenizer: Any) -> OfficialCRIS:
    torch.manual_seed(0)
    model = OfficialCRIS(vocab_size=len(tokenizer), context_length=WORD_LEN)
    randomise_statistics(model)
    with torch.no_grad():  # positions as large as the features: a wrong resize of the table shows
        model.backbone.visual.attnpool.positional_embedding.mul_(16)
    return model.eval()


@pytest.fixture(scope="module")
def layouts(official: OfficialCRIS, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return save_layouts(official, tmp_path_factory.mktemp("cris-files"))


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(2, 3, IMG_SIZE, IMG_SIZE, generator=torch.Generator().manual_seed(1))


def official_probabilities(
    official: OfficialCRIS, tokenizer: Any, images: torch.Tensor, prompts: list[str], pad: str
) -> torch.Tensor:
    with torch.no_grad():
        return torch.sigmoid(official((images - MEAN) / STD, official_ids(tokenizer, prompts, WORD_LEN, pad)))


def imported(path: Path, out: Path, clip_folder: Path, **options: Any) -> Any:
    from lvseg.checkpoint import load_checkpoint

    result = import_cris_checkpoint(
        path, out, tokenizer=str(clip_folder), img_size=IMG_SIZE, text_heads=2, decoder_heads=2, **options
    )
    return result, load_checkpoint(out).model.eval()


# ------------------------------------------------------------------------------- converted checkpoints


@pytest.mark.parametrize(("layout", "pad"), [("official", "zero"), ("bare", "zero"), ("lightning", "end")])
def test_each_published_layout_converts_to_the_official_probabilities(
    layout: str,
    pad: str,
    layouts: dict[str, Path],
    official: OfficialCRIS,
    tokenizer: Any,
    images: torch.Tensor,
    clip_folder: Path,
    tmp_path: Path,
) -> None:
    """Short and long (cut to the context) prompts with padded positions: masked padding for the official
    file and cris.pt (trained by the official code), the study's end-token padding for its Lightning .ckpt."""
    assert IMG_SIZE // 32 != TINY["pool_grid"]  # the position table is resized
    result, model = imported(layouts[layout], tmp_path / "cris.ckpt", clip_folder)
    assert result.dropped == {"unused (CLIP's contrastive temperature)": ["backbone.logit_scale"]}
    assert model.config["text_padding"] == ("end-token" if layout == "lightning" else "masked")
    assert {key: model.config[key] for key in TINY} == TINY
    with torch.no_grad():  # C5, the attention pool's output over the resized position table
        pixels = (images - MEAN) / STD
        c5 = official.backbone.visual(pixels)[2]
        assert c5.shape[-1] == IMG_SIZE // 32
        assert float((model.visual(pixels)[2] - c5).abs().max()) < 1e-5
    expected = official_probabilities(official, tokenizer, images, PROMPTS, pad)
    assert float(expected.std()) > 0.05  # not saturated: the comparison means something
    ours = model.predict_proba(images, PROMPTS)
    assert float((ours - expected).abs().max()) < 1e-5
    for prompt, row in zip(PROMPTS, range(2)):  # one prompt at a time (other padding lengths), same result
        alone = model.predict_proba(images[row : row + 1], [prompt])
        assert float((alone - expected[row : row + 1]).abs().max()) < 1e-5


def test_the_padding_option_changes_what_the_decoder_reads(
    layouts: dict[str, Path],
    official: OfficialCRIS,
    tokenizer: Any,
    images: torch.Tensor,
    clip_folder: Path,
    tmp_path: Path,
) -> None:
    _, study = imported(layouts["official"], tmp_path / "study.ckpt", clip_folder, text_padding="end-token")
    expected = official_probabilities(official, tokenizer, images, PROMPTS, "end")
    assert float((study.predict_proba(images, PROMPTS) - expected).abs().max()) < 1e-5
    masked = official_probabilities(official, tokenizer, images, PROMPTS, "zero")
    assert float((masked - expected).abs().max()) > 1e-4  # the padded end tokens are read


def test_a_genuine_exclamation_mark_is_not_masked(clip_folder: Path, tokenizer: Any) -> None:
    """The official pad mask ``ids == 0`` also hides "!" (id 0); lvseg masks only what follows the end token."""
    model = create_model("cris", img_size=IMG_SIZE, tokenizer=str(clip_folder), vocab_size=len(tokenizer), **TINY)
    ids, keep = model.token_ids(["polyp!!", "a"])
    assert int(ids[0, 6]) == 0 and bool(keep[0, 6])  # "!" kept
    assert keep[1].tolist() == [True, True, True] + [False] * (ids.shape[1] - 3)  # SOT, a, EOT; padding hidden
    study = create_model(
        "cris",
        img_size=IMG_SIZE,
        tokenizer=str(clip_folder),
        vocab_size=len(tokenizer),
        text_padding="end-token",
        **TINY,
    )
    ids, keep = study.token_ids(["a"])
    assert keep is None and ids.shape == (1, WORD_LEN) and set(ids[0, 2:].tolist()) == {tokenizer.eos_token_id}


def test_cris_weights_start_every_module_from_a_checkpoint(
    layouts: dict[str, Path],
    official: OfficialCRIS,
    tokenizer: Any,
    images: torch.Tensor,
    clip_folder: Path,
) -> None:
    model = create_model(
        "cris",
        img_size=IMG_SIZE,
        tokenizer=str(clip_folder),
        vocab_size=len(tokenizer),
        cris_weights=str(layouts["bare"]),
        **TINY,
    ).eval()
    expected = official_probabilities(official, tokenizer, images, PROMPTS, "zero")
    assert float((model.predict_proba(images, PROMPTS) - expected).abs().max()) < 1e-5
    with weights_from("checkpoint"):  # an lvseg checkpoint holds the weights: the file is not read again
        create_model("cris", img_size=IMG_SIZE, vocab_size=len(tokenizer), cris_weights="/no/such/cris.pt", **TINY)


def test_the_importer_recognises_and_refuses(layouts: dict[str, Path], tmp_path: Path, clip_folder: Path) -> None:
    state = torch.load(layouts["official"], weights_only=True)["state_dict"]
    assert "lvseg import-cris" in official_checkpoint_hint(state)
    bad = {key[len("module.") :]: value for key, value in state.items()}
    bad["neck.f2_cat.0.weight"] = torch.zeros(3, 3, 1, 1)
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"bad\.pt.*neck\.f2_cat\.0\.weight: shape \(3, 3, 1, 1\)"):
        import_cris_checkpoint(tmp_path / "bad.pt", tmp_path / "o.ckpt", tokenizer=str(clip_folder), text_heads=2)
    assert not (tmp_path / "o.ckpt").exists()
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="no backbone.visual.conv1.weight"):
        import_cris_checkpoint(tmp_path / "other.pt", tmp_path / "o.ckpt")


def test_the_study_s_lightning_ckpt_is_read_without_its_python_objects(layouts: dict[str, Path]) -> None:
    """Like a real medvlsm .ckpt, the file pickles a loss object of a class that cannot be imported here and
    functools.partial optimisers: weights_only=True refuses it, lvseg keeps its tensors and nothing else."""
    import importlib.util
    import pickle

    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        torch.load(layouts["lightning"], weights_only=True)
    assert STUDY_MODULE not in sys.modules and importlib.util.find_spec(STUDY_MODULE) is None
    state, layout = read_cris_checkpoint(layouts["lightning"])
    assert layout == "lightning" and all(isinstance(value, torch.Tensor) for value in state.values())
    assert STUDY_MODULE not in sys.modules  # nothing was imported


def test_lvseg_import_cris_lists_the_dropped_keys(layouts: dict[str, Path], clip_folder: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        [
            "import-cris",
            str(layouts["lightning"]),
            "--out",
            str(tmp_path / "c.ckpt"),
            "--tokenizer",
            str(clip_folder),
            "--img-size",
            str(IMG_SIZE),
            "--text-heads",
            "2",
            "--decoder-heads",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "dropped 1 unused (CLIP's contrastive temperature) official keys: backbone.logit_scale" in result.output
    assert "lightning layout; text padding 'end-token'" in result.output


# ------------------------------------------------------------------------------------------ CLIP weights


@pytest.mark.parametrize("suffix", [".bin", ".safetensors"])
def test_clip_weights_start_the_towers(
    suffix: str, official: OfficialCRIS, tokenizer: Any, clip_folder: Path, tmp_path: Path, caplog: Any
) -> None:
    path = save_open_clip(official, tmp_path / f"open_clip_model{suffix}")
    with caplog.at_level(logging.INFO, logger="lvseg.models.cris"):
        model = create_model(
            "cris",
            img_size=IMG_SIZE,
            tokenizer=str(clip_folder),
            vocab_size=len(tokenizer),
            clip_weights=str(path),
            **TINY,
        ).eval()
    assert "attnpool.connect, which CLIP does not have" in caplog.text
    ours, theirs = model.state_dict(), official.backbone.state_dict()
    for key, value in theirs.items():
        if key.startswith("visual.") and not key.startswith("visual.attnpool.connect."):
            assert torch.equal(ours[key], value), key
    ids = official_ids(tokenizer, PROMPTS, WORD_LEN)
    with torch.no_grad():
        words, state = official.backbone.encode_text(ids)
        hidden = model.text_tower.text_model(input_ids=ids).last_hidden_state
        projected = model.text_tower.text_projection(hidden[torch.arange(2), ids.argmax(-1)])
    assert float((hidden - words).abs().max()) < 1e-5 and float((projected - state).abs().max()) < 1e-5


def test_clip_weights_with_a_learned_text_encoder_load_the_image_tower(official: OfficialCRIS, tmp_path: Path) -> None:
    path = save_open_clip(official, tmp_path / "open_clip_pytorch_model.bin")
    options = {key: value for key, value in TINY.items() if not key.startswith("text_")}
    model = create_model(
        "cris", img_size=IMG_SIZE, text_encoder="learned", texts=PROMPTS, clip_weights=str(path), **options
    ).train()
    assert model.text_tower is None and torch.equal(model.visual.conv1.weight, official.backbone.visual.conv1.weight)
    output = model(torch.rand(2, 3, IMG_SIZE, IMG_SIZE), model.encode_text(PROMPTS))
    assert output.logits.shape == (2, 1, IMG_SIZE, IMG_SIZE)


def test_a_torchscript_rn50_and_a_missing_file_are_one_sentence(tmp_path: Path) -> None:
    scripted = torch.jit.script(torch.nn.Linear(2, 2))
    scripted.save(str(tmp_path / "RN50.pt"))
    with pytest.raises(LvsegError) as error:
        create_model("cris", img_size=IMG_SIZE, clip_weights=str(tmp_path / "RN50.pt"), **TINY)
    message = str(error.value)
    assert "TorchScript" in message and "weights_only=True" in message and "open_clip_model.safetensors" in message
    assert message.count(". ") == 0  # one sentence
    readers = {  # a TorchScript file given as a CRIS checkpoint: the advice names that command's input
        "to `lvseg import-cris`": lambda: import_cris_checkpoint(tmp_path / "RN50.pt", tmp_path / "o.ckpt"),
        "as cris_weights": lambda: create_model(
            "cris", img_size=IMG_SIZE, cris_weights=str(tmp_path / "RN50.pt"), **TINY
        ),
    }
    for where, read in readers.items():
        with pytest.raises(LvsegError) as error:
            read()
        message = str(error.value)
        assert "TorchScript" in message and f"pass a CRIS checkpoint {where}" in message
        assert "download the open_clip state dict" not in message and message.count(". ") == 0
    with pytest.raises(LvsegError, match=r"no such file: download it with `hf download timm/resnet50_clip.openai"):
        create_model("cris", img_size=IMG_SIZE, clip_weights=str(tmp_path / "missing.safetensors"), **TINY)


def test_clip_weights_of_another_architecture_name_the_mismatch(official: OfficialCRIS, tmp_path: Path) -> None:
    path = save_open_clip(official, tmp_path / "clip.bin")
    with pytest.raises(LvsegError, match=r"does not fit the model built with width=16.*visual\.conv1\.weight: shape"):
        create_model("cris", img_size=IMG_SIZE, clip_weights=str(path), **{**TINY, "width": 16})


# ------------------------------------------------------------------------------------ sizes and manifest


#: CRIS.md section 9: keys and parameters per prefix of the RN50 state dict.
MANIFEST = {
    "stem": (18, 28_768),
    "layers": (312, 23_498_496),
    "attnpool": (9, 14_789_632),
    "connect": (6, 2_099_200),
    "resblocks": (144, 37_828_608),
    "text": (6, 25_861_633),
    "neck": (77, 24_142_336),
    "decoder": (74, 12_631_552),
    "proj": (16, 5_968_897),
}


def _manifest_group(key: str) -> str:
    if key.startswith("backbone.visual.layer"):
        return "layers"
    if key.startswith("backbone.visual.attnpool.connect."):
        return "connect"
    if key.startswith("backbone.visual.attnpool."):
        return "attnpool"
    if key.startswith("backbone.visual."):
        return "stem"
    if key.startswith("backbone.transformer."):
        return "resblocks"
    if key.startswith("backbone."):
        return "text"
    return key.split(".")[0]


def test_the_mapping_covers_the_rn50_manifest() -> None:
    """The official layout at RN50 has CRIS.md's 662 keys (146,849,122 parameters); every key maps to one of ours
    with its shape, or is dropped (logit_scale), and every key of ours is filled once."""
    with torch.device("meta"):
        official = OfficialCRIS(
            width=64,
            layers=(3, 4, 6, 3),
            embed_dim=1024,
            spacial_dim=7,
            context_length=77,
            vocab_size=49408,
            text_width=512,
            text_heads=8,
            text_layers=12,
            fpn_out=(256, 512, 1024),
            num_layers=3,
            num_head=8,
            dim_ffn=2048,
        )
    state = official.state_dict()
    groups: dict[str, list[int]] = {}
    for key, value in state.items():
        counts = groups.setdefault(_manifest_group(key), [0, 0])
        counts[0] += 1
        counts[1] += value.numel() if not key.endswith(("running_mean", "running_var", "num_batches_tracked")) else 0
    assert {name: tuple(counts) for name, counts in groups.items()} == MANIFEST
    assert len(state) == 662 and sum(p.numel() for p in official.parameters()) == 146_849_122
    with torch.device("meta"), weights_from("nowhere"):
        ours = create_model("cris").state_dict()
    filled: list[str] = []
    dropped = []
    for key, value in state.items():
        mapped = map_cris_key(key, value)
        if isinstance(mapped, str):
            dropped.append(key)
            continue
        for ours_key, tensor in mapped.items():
            assert tuple(ours[ours_key].shape) == tuple(tensor.shape), key
            filled.append(ours_key)
    assert dropped == ["backbone.logit_scale"]
    assert sorted(filled) == sorted(ours)  # every key once


def test_info_gives_the_rn50_size_and_gflops_without_weights() -> None:
    result = CliRunner().invoke(app, ["info", "--model", "cris", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    # CRIS.md: 146,849,122 parameters, of which logit_scale (1) is never used and not built here
    assert report["parameters"] == report["trainable_parameters"] == 146_849_121
    assert report["gflops"] == pytest.approx(137.0, rel=0.01)  # 416 px, 77 tokens (CRIS.md: 137.0)
    assert report["text_shape"] == [1, 77] and report["image_shape"] == [1, 3, 416, 416]


def test_a_trained_cris_with_another_text_encoder_is_described_as_built() -> None:
    """With ``text_encoder="learned"`` CRIS builds no CLIP text tower; describing the built model must not
    count the default one (the model comparison once reported 65.3 M parameters for a 2 M model)."""
    torch.manual_seed(0)
    reports = ["Left lung infection.", "Two infected areas, upper left lung and lower right lung."]
    model = create_model("cris", texts=reports, text_encoder="learned", img_size=IMG_SIZE, **TINY)
    described = describe_built_model(model)
    assert described["parameters"] == model.parameter_counts()["total"]
    assert not described["text_tower_in_network"]
    assert described["text_shape"] == [1, model.text_len, model.text_encoder.feature_dim]  # features, not ids


# ------------------------------------------------------------------------------- training behaviour


def tiny_model(clip_folder: Path, tokenizer: Any, **options: Any) -> Any:
    torch.manual_seed(0)
    return create_model(
        "cris", img_size=IMG_SIZE, tokenizer=str(clip_folder), vocab_size=len(tokenizer), **{**TINY, **options}
    )


def test_a_training_batch_of_one_uses_the_running_statistics(clip_folder: Path, tokenizer: Any) -> None:
    """The study's defect M3: BatchNorm1d on a batch of one raised; here it normalises with the running
    statistics and leaves them alone."""
    model = tiny_model(clip_folder, tokenizer).train()
    norm = model.neck.txt_proj[1]
    before = norm.running_mean.clone()
    output = model(torch.rand(1, 3, IMG_SIZE, IMG_SIZE), model.encode_text(PROMPTS[:1]))
    sum(model.compute_losses(output, torch.ones(1, 1, IMG_SIZE, IMG_SIZE)).values()).backward()
    assert torch.equal(norm.running_mean, before)
    model(torch.rand(2, 3, IMG_SIZE, IMG_SIZE), model.encode_text(PROMPTS))
    assert not torch.equal(norm.running_mean, before)  # a real batch updates them


def test_losses_dice_bce_by_default_and_the_official_mean_bce(clip_folder: Path, tokenizer: Any) -> None:
    from lvseg.models.losses import bce_with_logits

    target = torch.zeros(2, 1, IMG_SIZE, IMG_SIZE)
    target[:, :, 16:40, 8:30] = 1
    model = tiny_model(clip_folder, tokenizer).train()
    output = model(torch.rand(2, 3, IMG_SIZE, IMG_SIZE), model.encode_text(PROMPTS))
    terms = model.compute_losses(output, target)
    assert set(terms) == {"dice", "bce"} and float(terms["bce"].detach()) > 0  # a real BCE term
    torch.testing.assert_close(terms["bce"], 0.2 * bce_with_logits(output.logits, target))
    official = tiny_model(clip_folder, tokenizer, loss="bce").train()
    output = official(torch.rand(2, 3, IMG_SIZE, IMG_SIZE), official.encode_text(PROMPTS))
    terms = official.compute_losses(output, target)
    coarse = output.aux["stride4_logits"]
    assert set(terms) == {"bce"} and coarse.shape == (2, 1, IMG_SIZE // 4, IMG_SIZE // 4)
    small = torch.nn.functional.interpolate(target, size=coarse.shape[-2:], mode="nearest")
    torch.testing.assert_close(terms["bce"], torch.nn.functional.binary_cross_entropy_with_logits(coarse, small))


def test_parameter_groups_split_towers_and_head(clip_folder: Path, tokenizer: Any) -> None:
    model = tiny_model(clip_folder, tokenizer)
    groups = {group.name: {id(p) for p in group.parameters} for group in model.parameter_groups()}
    names = {id(p): name for name, p in model.named_parameters()}
    assert set(groups) == {"towers", "head"} and not groups["towers"] & groups["head"]
    assert groups["towers"] | groups["head"] == set(names)
    head = {names[i] for i in groups["head"]}
    assert "visual.attnpool.positional_embedding" in head
    assert "text_tower.text_model.embeddings.position_embedding.weight" in head
    assert "text_tower.text_model.embeddings.token_embedding.weight" not in head  # trained, as the official code did
    assert all(name.startswith(("neck.", "decoder.", "proj.")) or "position" in name for name in head)


def test_options_are_checked(clip_folder: Path) -> None:
    with pytest.raises(LvsegError, match="img_size must be a positive multiple of 32"):
        create_model("cris", img_size=40, **TINY)
    with pytest.raises(LvsegError, match="text_padding 'zeros' is not one of masked, end-token"):
        create_model("cris", img_size=IMG_SIZE, text_padding="zeros", **TINY)
    with pytest.raises(LvsegError, match="clip_weights or cris_weights, not both"):
        create_model("cris", img_size=IMG_SIZE, clip_weights="a", cris_weights="b", **TINY)
    with pytest.raises(LvsegError, match="text_len must be between 2"):
        create_model("cris", img_size=IMG_SIZE, text_len=30, **TINY)


def test_the_recipes_the_study_s_by_default_and_the_official_one(clip_folder: Path, tokenizer: Any) -> None:
    from lvseg.recipes import resolve_recipe
    from lvseg.training.optim import LR_SCHEDULES, optimizer_groups
    from lvseg.training.options import model_recipe

    study = model_recipe("cris")
    assert (study["optimizer"], study["lr"], study["weight_decay"], study["lr_schedule"]) == (
        "adamw",
        2e-5,
        1e-3,
        "plateau",
    )
    assert (study["batch_size"], study["grad_clip"], study["patience"]) == (32, 0.5, 20)
    official = resolve_recipe("cris-official")
    model = tiny_model(clip_folder, tokenizer)
    groups = optimizer_groups(model.parameter_groups(), official["lr"], official["lr_scales"])
    assert {group["name"]: group["lr"] for group in groups} == {"towers": pytest.approx(1e-5), "head": 1e-4}
    optimizer = torch.optim.Adam(groups)
    scheduler = LR_SCHEDULES[official["lr_schedule"]].build(optimizer, official)["scheduler"]
    rates = []
    for _ in range(40):  # from the first epoch on, each group at its own rate; x0.1 after epoch 35
        rates.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    assert rates[0] == pytest.approx([1e-5, 1e-4]) and rates[34] == rates[0]
    assert rates[35] == pytest.approx([1e-6, 1e-5])
