"""RecLMIS: sizes, the CLIP text front end, the training-only branch and its losses, import of official weights.

(Forward/backward in both modes, training, checkpoints, evaluate, predict, the app and a semi-supervised
step are covered for reclmis by tests/test_model_contract.py, with a tiny local CLIP.)
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
from lvseg.models import create_model
from lvseg.models.reclmis import conditioned_contrastive_loss
from lvseg.models.reclmis_import import _drop_reason, import_official_checkpoint, map_clip_key

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hf_support import save_tiny_clip  # noqa: E402
from official_lvit_layout import randomize_  # noqa: E402
from official_reclmis_layout import OfficialLayoutRecLMIS, official_state_dict  # noqa: E402

REPORTS = ["Bilateral pulmonary infection, two infected areas, upper left lung and lower right lung.",
           "Unilateral pulmonary infection, one infected area, all left lung."]


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_clip(tmp_path_factory.mktemp("clip"))


def small(clip_folder: Path, **options: Any) -> Any:
    torch.manual_seed(0)
    return create_model("reclmis", img_size=64, base_channels=8, text_encoder=f"clip:{clip_folder}", **options)


def test_sizes_match_the_official_code_at_224() -> None:
    with torch.device("meta"):
        qata = create_model("reclmis", img_size=224, base_channels=64)
        mosmed = create_model("reclmis", img_size=224, base_channels=64, preset="mosmed")
    # RECLMIS.md: 17.31 M learned parameters needed at inference; the training-only learned parameters
    # (43,372,035 in the manifest, less the frozen logit_scale) with 4 / 3 reconstructor layers.
    assert qata.parameter_counts()["inference"] == 17_305_917
    assert qata.parameter_counts()["training_only"] == 43_372_034
    assert mosmed.parameter_counts()["training_only"] == 32_857_602
    assert mosmed.config["reconstructor_layers"] == 3 and mosmed.config["image_mask_rate"] == 0.3
    assert mosmed.config["scorer_dropout"] == 0.5 and qata.config["image_mask_rate"] == 0.5
    override = create_model("reclmis", img_size=32, base_channels=8, preset="mosmed", reconstructor_layers=2)
    assert override.config["reconstructor_layers"] == 2  # an explicit option beats its preset


def test_clip_front_end_ids_and_states(clip_folder: Path) -> None:
    model = small(clip_folder)
    encoder = model.text_encoder
    ids = encoder.token_ids(["upper left lung", "a " * 40])
    assert ids[0, 0] == encoder.start_id and ids.shape == (2, 18)
    # a short report is padded with " EOF XXX" (the official trick); the long one is cut, ending with <|endoftext|>
    assert encoder.token_ids(["abc"])[0].tolist().count(0) < 18 - 5
    assert ids[1, -1] == encoder.end_id
    plain = create_model("reclmis", img_size=64, base_channels=8,
                         text_encoder={"type": "clip", "name_or_path": str(clip_folder), "max_length": 18,
                                       "eof_padding": False, "text_config": None})
    short = plain.text_encoder.token_ids(["abc"])[0].tolist()
    assert short[:5] == [encoder.start_id, *short[1:4], encoder.end_id] and short[5:] == [0] * 13  # padding id 0
    states, mask = plain.encode_text(["abc"])
    assert states.shape == (1, 18, 16) and mask[0].tolist() == [True] * 5 + [False] * 13
    assert model.config["text_dim"] == 16 and model.config["text_len"] == 18
    assert not any("hf_model" in key for key in model.state_dict())  # reloaded from its folder, not stored
    assert all(not p.requires_grad for p in encoder.parameters())


def test_missing_clip_is_one_sentence(tmp_path: Path) -> None:
    with pytest.raises(LvsegError) as error:
        create_model("reclmis", img_size=32, base_channels=8, text_encoder="clip:surely/not-a-local-model")
    message = str(error.value)
    assert "hf download surely/not-a-local-model" in message and "\n" not in message


def _loss_gradients(model: Any, term: str) -> set[str]:
    model.train()
    model.zero_grad()
    torch.manual_seed(1)
    images = torch.rand(3, 3, 64, 64)
    target = torch.zeros(3, 1, 64, 64)
    target[:, :, 10:30, 10:30] = 1
    terms = model.compute_losses(model(images, model.encode_text(REPORTS + REPORTS[:1])), target)
    terms[term].backward()
    return {name.split(".")[0] for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


def test_every_training_only_loss_reaches_what_it_trains(clip_folder: Path) -> None:
    model = small(clip_folder)
    terms = set(model.compute_losses(model.train()(torch.rand(2, 3, 64, 64), model.encode_text(REPORTS)),
                                     torch.zeros(2, 1, 64, 64)))
    assert terms == {"dice", "bce", "ccl", "text_reconstruction", "image_reconstruction"}
    image = _loss_gradients(model, "image_reconstruction")
    assert {"image_reconstructor", "word_scorer", "text_context", "text_proj", "attn_text"} <= image
    assert "attn_image" not in image  # the target V' is detached: reconstruction does not pull the segmentation path
    text = _loss_gradients(model, "text_reconstruction")
    assert {"text_reconstructor", "patch_scorer", "attn_image", "text_proj", "down"} <= text
    contrastive = _loss_gradients(model, "ccl")
    assert {"word_scorer", "patch_scorer", "text_context", "text_proj", "inc", "down"} <= contrastive
    segmentation = _loss_gradients(model, "dice")
    assert not segmentation & set(model.training_only_modules)


def test_contrastive_loss_prefers_matching_pairs_and_skips_a_batch_of_one(clip_folder: Path, caplog) -> None:
    torch.manual_seed(0)
    text, image = torch.randn(3, 5, 8), torch.randn(3, 7, 8)
    mask = torch.ones(3, 5, dtype=torch.bool)
    uniform_t, uniform_v = torch.full((3, 5), 0.2), torch.full((3, 7), 1 / 7)
    random_pairs = conditioned_contrastive_loss(text, image, mask, uniform_t, uniform_v)
    matched = conditioned_contrastive_loss(text, text[:, :, :].repeat(1, 2, 1)[:, :7], mask, uniform_t, uniform_v)
    assert matched < random_pairs
    model = small(clip_folder).train()
    with caplog.at_level(logging.WARNING, logger="lvseg.models.reclmis"):
        for _ in range(2):
            terms = model.compute_losses(model(torch.rand(1, 3, 64, 64), model.encode_text(REPORTS[:1])),
                                         torch.zeros(1, 1, 64, 64))
    assert "ccl" not in terms and {"text_reconstruction", "image_reconstruction"} <= set(terms)
    assert sum("two or more images" in record.message for record in caplog.records) == 1  # said once


def test_inference_checkpoint_drops_the_training_branch(clip_folder: Path, tmp_path: Path) -> None:
    from lvseg.checkpoint import load_checkpoint, read_checkpoint_dict, save_inference_checkpoint

    model = small(clip_folder).eval()
    save_inference_checkpoint(tmp_path / "m.ckpt", model)
    saved = read_checkpoint_dict(tmp_path / "m.ckpt")
    assert not any(key.split(".")[1] in model.training_only_modules for key in saved["state_dict"])
    loaded = load_checkpoint(tmp_path / "m.ckpt").model
    assert loaded.image_reconstructor is None and loaded.parameter_counts()["training_only"] == 0
    images = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(loaded.predict_proba(images, REPORTS), model.predict_proba(images, REPORTS))


# ------------------------------------------------------------------------------ official checkpoint import


def _official(clip_folder: Path, seed: int = 3) -> OfficialLayoutRecLMIS:
    vocab = len(json.loads((clip_folder / "vocab.json").read_text()))
    clip = {"vocab": vocab, "width": 32, "layers": 2, "heads": 2, "context": 24, "projection": 16}
    return randomize_(OfficialLayoutRecLMIS(img_size=64, base=8, clip=clip), seed=seed).eval()


def test_imported_weights_give_the_official_outputs(clip_folder: Path, tmp_path: Path) -> None:
    from lvseg.inference import load_model

    official = _official(clip_folder)
    source = tmp_path / "best_model-RecLMIS.pth.tar"
    state = {"module." + key: value for key, value in official_state_dict(official).items()}
    torch.save({"epoch": 12, "best_model": True, "model": "RecLMIS", "state_dict": state,
                "val_loss": torch.tensor(0.2)}, source)
    result = import_official_checkpoint(source, tmp_path / "reclmis.ckpt", tokenizer=str(clip_folder), clip_heads=2)
    assert set(result.dropped) == {"training-only", "CLIP image tower (never called)", "never used"}
    assert "clip.logit_scale" in result.dropped["training-only"]
    assert result.model_options["reconstructor_layers"] == 4 and result.model_options["img_size"] == 64

    segmenter = load_model(tmp_path / "reclmis.ckpt", device="cpu")
    images = torch.rand(2, 3, 64, 64)
    ids = segmenter.model.text_encoder.token_ids(REPORTS)
    with torch.no_grad():
        expected = official(images, ids)
    got = segmenter.probabilities(images, REPORTS)
    assert (got - expected).abs().max() < 1e-4

    result = CliRunner().invoke(app, ["import-reclmis", str(source), "--out", str(tmp_path / "cli.ckpt"),
                                      "--tokenizer", str(clip_folder), "--config", "qata", "--clip-heads", "2"])
    assert result.exit_code == 0, result.output
    assert "dropped" in result.stdout and "training-only" in result.stdout
    again = load_model(tmp_path / "cli.ckpt", device="cpu")
    torch.testing.assert_close(again.probabilities(images, REPORTS), got)


def test_import_errors_name_the_file(clip_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="missing.pth.*no such file"):
        import_official_checkpoint(tmp_path / "missing.pth", tmp_path / "o.ckpt", tokenizer=str(clip_folder))
    bad = tmp_path / "lvit.pth"
    torch.save({"state_dict": {"inc.conv.weight": torch.zeros(8, 3, 3, 3)}}, bad)
    with pytest.raises(CheckpointError, match="lvit.pth.*not an official RecLMIS state_dict"):
        import_official_checkpoint(bad, tmp_path / "o.ckpt", tokenizer=str(clip_folder))
    official = official_state_dict(_official(clip_folder))
    official["interact.attn_img.in_proj_bias"] = torch.zeros(7)
    del official["text_module4.bias"]
    torch.save({"state_dict": official}, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError) as error:
        import_official_checkpoint(tmp_path / "broken.pth", tmp_path / "o.ckpt", tokenizer=str(clip_folder), clip_heads=2)
    assert "attn_img.in_proj_bias: shape (7,)" in str(error.value) and "text_proj.bias" in str(error.value)
    assert not (tmp_path / "o.ckpt").exists()


def test_mapping_covers_the_official_manifest(reference_root: Path) -> None:
    """Every inference and CLIP-text key of the official model maps to a key of ours with its shape; the
    training-only, CLIP image and unused keys are dropped."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from lvseg.models import lvit_import
    from lvseg.models.reclmis_import import _DIRECT, _UNET

    manifest = json.loads((reference_root / "reclmis_official_state_dict.json").read_text())
    with torch.device("meta"):
        ours = create_model("reclmis", img_size=224, base_channels=64).state_dict()
        clip = CLIPTextModelWithProjection(CLIPTextConfig(
            vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8,
            max_position_embeddings=77, projection_dim=512)).state_dict()
    clip = {"text_encoder.hf_model." + key: value for key, value in clip.items()}
    filled: set[str] = set()
    for key, shape, _dtype, group in manifest["state_dict"]:
        value = torch.empty(shape, device="meta")
        reason = _drop_reason(key) or (None if not _UNET.match(key) or lvit_import.map_official_key(key) else "never used")
        if group in ("train_only", "clip_image", "unused"):
            assert reason is not None, key
            continue
        assert reason is None, key
        if group == "clip_text":
            for ours_key, tensor in map_clip_key(key, value).items():
                assert tuple(clip[ours_key].shape) == tuple(tensor.shape), key
                filled.add(ours_key)
            continue
        if _UNET.match(key):
            ours_key = lvit_import.map_official_key(key)
        elif key == "interact.embeddings.position_embeddings":
            ours_key = "pos_embed"
        else:
            prefix = next(p for p in _DIRECT if key.startswith(p))
            ours_key = _DIRECT[prefix] + key[len(prefix):]
        assert tuple(ours[ours_key].shape) == tuple(shape), key
        filled.add(ours_key)
    training_only = tuple(f"{name}." for name in ("text_context", "word_scorer", "patch_scorer",
                                                   "image_reconstructor", "text_reconstructor", "text_output"))
    assert {key for key in ours if not key.startswith(training_only)} | set(clip) == filled
