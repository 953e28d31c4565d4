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
from lvseg.importers.reclmis import import_official_checkpoint, map_official_key
from lvseg.models import create_model
from lvseg.models.reclmis import conditioned_contrastive_loss

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hf_support import save_tiny_clip
from official_lvit_layout import randomize_
from official_reclmis_layout import OfficialLayoutRecLMIS, official_state_dict

REPORTS = [
    "Bilateral pulmonary infection, two infected areas, upper left lung and lower right lung.",
    "Unilateral pulmonary infection, one infected area, all left lung.",
]


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
    plain = create_model(
        "reclmis",
        img_size=64,
        base_channels=8,
        text_encoder={
            "type": "clip",
            "name_or_path": str(clip_folder),
            "max_length": 18,
            "eof_padding": False,
            "text_config": None,
        },
    )
    short = plain.text_encoder.token_ids(["abc"])[0].tolist()
    assert short[:5] == [encoder.start_id, *short[1:4], encoder.end_id] and short[5:] == [0] * 13  # padding id 0
    states, mask = plain.encode_text(["abc"])
    assert states.shape == (1, 18, 16) and mask[0].tolist() == [True] * 5 + [False] * 13
    assert model.config["text_dim"] == 16 and model.config["text_len"] == 18
    assert not any("hf_model" in key for key in model.state_dict())  # reloaded from its folder, not stored
    assert all(not p.requires_grad for p in encoder.parameters())


def test_clip_states_are_computed_once_per_report(clip_folder: Path) -> None:
    encoder = small(clip_folder).text_encoder
    calls: list[int] = []
    encoder.hf_model.register_forward_hook(
        lambda module, args, kwargs, out: calls.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    first = encoder(REPORTS + REPORTS[:1])
    again = encoder(REPORTS[::-1])
    assert calls == [2]  # two distinct reports, one forward; the second call is served from memory
    torch.testing.assert_close(again.tokens, first.tokens[[1, 0]])
    encoder.eof_padding = False
    encoder(REPORTS[:1])
    assert calls == [2, 1]  # other token ids, other states
    encoder.eof_padding = True


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
    terms = set(
        model.compute_losses(
            model.train()(torch.rand(2, 3, 64, 64), model.encode_text(REPORTS)), torch.zeros(2, 1, 64, 64)
        )
    )
    assert terms == {"dice", "bce", "ccl", "text_reconstruction", "image_reconstruction"}
    image = _loss_gradients(model, "image_reconstruction")
    assert {"image_reconstructor", "word_scorer", "text_context", "text_proj", "attn_text"} <= image
    assert "attn_image" not in image  # the target V' is detached: reconstruction does not pull the segmentation path
    text = _loss_gradients(model, "text_reconstruction")
    assert {"text_reconstructor", "patch_scorer", "attn_image", "text_proj", "down"} <= text
    contrastive = _loss_gradients(model, "ccl")
    assert {"text_proj", "inc", "down"} <= contrastive
    # the CCL reads the words/patches of interest detached: it must not reshape them or, through them, V'
    assert not contrastive & {
        "word_scorer",
        "patch_scorer",
        "text_context",
        "attn_text",
        "attn_image",
        "patch_embed",
        "pos_embed",
    }
    segmentation = _loss_gradients(model, "dice")
    assert not segmentation & set(model.training_only_modules)


@pytest.mark.parametrize("choice", ["attached", "official"])
def test_contrastive_weights_options_reach_the_scorers_and_the_interaction(clip_folder: Path, choice: str) -> None:
    contrastive = _loss_gradients(small(clip_folder, contrastive_weights=choice), "ccl")
    assert {"word_scorer", "patch_scorer", "text_context", "attn_image", "text_proj", "down"} <= contrastive


def test_contrastive_loss_reads_the_learned_weights(clip_folder: Path) -> None:
    """The detached default changes the gradient, not the value: the CCL sees the scorers' sharp weights."""
    model = small(clip_folder).train()
    with torch.no_grad():  # scorers far from their near-uniform initial output
        model.patch_scorer[-1].weight.mul_(100)
        model.word_scorer[-1].weight.mul_(100)
    torch.manual_seed(0)
    output = model(torch.rand(2, 3, 64, 64), model.encode_text(REPORTS))
    aux = output.aux
    expected = model.loss_weights["ccl"] * conditioned_contrastive_loss(
        aux["text_tokens"], aux["image_tokens"], aux["text_mask"], aux["word_weights"], aux["patch_weights"]
    )
    flat = torch.full_like(aux["patch_weights"], 1 / aux["patch_weights"].shape[1])
    uniform = model.loss_weights["ccl"] * conditioned_contrastive_loss(
        aux["text_tokens"], aux["image_tokens"], aux["text_mask"], aux["word_weights"], flat
    )
    ccl = model.compute_losses(output, torch.zeros(2, 1, 64, 64))["ccl"]
    torch.testing.assert_close(ccl, expected)
    assert not torch.allclose(ccl, uniform)


def test_unknown_contrastive_weights_is_refused(clip_folder: Path) -> None:
    with pytest.raises(LvsegError, match="contrastive_weights 'sharp' is not one of detached, attached, official"):
        small(clip_folder, contrastive_weights="sharp")
    with pytest.raises(LvsegError, match="preset 'kvasir' is not one of qata, mosmed; contrastive_weights 'sharp'"):
        small(clip_folder, preset="kvasir", contrastive_weights="sharp")  # every bad choice named at once


def test_contrastive_loss_by_hand() -> None:
    """B=2, L=2 (second token of report 1 padded), N=3, unequal weights: the formula written out."""
    text = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.6, 0.8], [1.0, 1.0]]])
    image = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]], [[0.0, 1.0], [-1.0, 0.0], [3.0, 4.0]]])
    mask = torch.tensor([[True, False], [True, True]])
    w_t = torch.tensor([[1.0, 0.0], [0.3, 0.7]])
    w_v = torch.tensor([[0.2, 0.3, 0.5], [0.6, 0.1, 0.3]])
    t = text / text.norm(dim=-1, keepdim=True)
    v = image / image.norm(dim=-1, keepdim=True)
    logits = torch.zeros(2, 2)
    for a in range(2):
        for b in range(2):
            s_ab = (t[a] @ v[b].T) * mask[a, :, None]  # (L, N)
            t2v = sum(w_t[a, i] * s_ab[i].max() for i in range(2))
            v2t = sum(w_v[b, j] * s_ab[:, j].max() for j in range(3))
            logits[a, b] = 0.5 * (t2v + v2t) * 100
    expected = 0.5 * (
        torch.nn.functional.cross_entropy(logits, torch.arange(2))
        + torch.nn.functional.cross_entropy(logits.T, torch.arange(2))
    )
    torch.testing.assert_close(conditioned_contrastive_loss(text, image, mask, w_t, w_v), expected)


def test_masking_zeroes_exactly_n_positions_drawn_by_weight() -> None:
    from lvseg.models.reclmis import zero_by_weights

    tokens = torch.ones(2, 6, 3)
    weights = torch.tensor([[0.5, 0.5, 0, 0, 0, 0], [0.0, 0.1, 0.2, 0.3, 0.4, 0.0]])
    torch.manual_seed(0)
    masked = zero_by_weights(tokens, weights, torch.tensor([2, 3]))
    zeroed = masked.abs().sum(-1) == 0
    assert zeroed.sum(dim=1).tolist() == [2, 3]
    assert zeroed[0].tolist() == [True, True, False, False, False, False]  # weighted positions first
    assert not zeroed[1, 0] and not zeroed[1, 5]  # zero weight (padding) never drawn while others remain


def test_weighted_attention_renormalises_by_key_weights() -> None:
    from lvseg.models.reclmis import WeightedAttention

    torch.manual_seed(0)
    attention = WeightedAttention(4, heads=1, dropout=0.0).eval()
    query, context = torch.randn(1, 2, 4), torch.randn(1, 3, 4)
    weights = torch.tensor([[1.0, 0.0, 2.0]])
    q, k, v = attention.query(query), attention.key(context), attention.value(context)
    probabilities = (q @ k.transpose(1, 2) / 2.0).softmax(-1) * weights[:, None]
    probabilities = probabilities / probabilities.sum(-1, keepdim=True)
    torch.testing.assert_close(attention(query, context, weights), attention.out(probabilities @ v))


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
            terms = model.compute_losses(
                model(torch.rand(1, 3, 64, 64), model.encode_text(REPORTS[:1])), torch.zeros(1, 1, 64, 64)
            )
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
    torch.save(
        {"epoch": 12, "best_model": True, "model": "RecLMIS", "state_dict": state, "val_loss": torch.tensor(0.2)},
        source,
    )
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
    # Short reports without the EOF trick leave padded positions (id 0), which the official model reads too.
    segmenter.model.text_encoder.eof_padding = False
    short = ["ab", "left lung"]
    padded = segmenter.model.text_encoder.token_ids(short)
    assert (padded == 0).sum(dim=1).tolist() == [18 - 4, 18 - 10]
    with torch.no_grad():
        expected_padded = official(images, padded)
    assert (segmenter.probabilities(images, short) - expected_padded).abs().max() < 1e-4
    segmenter.model.text_encoder.eof_padding = True

    result = CliRunner().invoke(
        app,
        [
            "import-reclmis",
            str(source),
            "--out",
            str(tmp_path / "cli.ckpt"),
            "--tokenizer",
            str(clip_folder),
            "--config",
            "qata",
            "--clip-heads",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "dropped" in result.stdout and "training-only" in result.stdout
    again = load_model(tmp_path / "cli.ckpt", device="cpu")
    torch.testing.assert_close(again.probabilities(images, REPORTS), got)

    from fastapi.testclient import TestClient

    from lvseg.serving.app import create_app
    from serving_support import png_bytes

    with TestClient(
        create_app(again), base_url="http://localhost"
    ) as client:  # what `lvseg serve --checkpoint reclmis.ckpt` runs
        response = client.post(
            "/api/segment", files={"image": ("x.png", png_bytes(), "image/png")}, data={"text": REPORTS[0]}
        )
        assert response.status_code == 200, response.text


def test_info_reports_training_only_and_frozen_parameters(clip_folder: Path) -> None:
    result = CliRunner().invoke(
        app,
        [
            "info",
            "--model",
            "reclmis",
            "--img-size",
            "64",
            "--base-channels",
            "8",
            "--text-encoder",
            f"clip:{clip_folder}",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    from transformers import CLIPTextModelWithProjection

    tower = sum(p.numel() for p in CLIPTextModelWithProjection.from_pretrained(clip_folder).parameters())
    assert report["frozen_parameters"] == tower  # the CLIP text tower, loaded and counted
    assert report["inference_learned_parameters"] == report["inference_parameters"] - tower
    assert report["training_only_parameters"] > 0 and report["text_encoder_gflops"] > 0
    assert report["parameters"] == report["inference_parameters"] + report["training_only_parameters"]
    assert report["text_shape"] == [1, 18, 16]


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
        import_official_checkpoint(
            tmp_path / "broken.pth", tmp_path / "o.ckpt", tokenizer=str(clip_folder), clip_heads=2
        )
    assert "attn_img.in_proj_bias: shape (7,)" in str(error.value) and "text_proj.bias" in str(error.value)
    assert not (tmp_path / "o.ckpt").exists()


def test_mapping_covers_the_official_manifest(reference_root: Path) -> None:
    """Every inference and CLIP-text key of the official model maps to a key of ours with its shape; the
    training-only, CLIP image and unused keys are dropped."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    manifest = json.loads((reference_root / "reclmis_official_state_dict.json").read_text())
    with torch.device("meta"):
        ours = create_model("reclmis", img_size=224, base_channels=64).state_dict()
        clip = CLIPTextModelWithProjection(
            CLIPTextConfig(
                vocab_size=49408,
                hidden_size=512,
                intermediate_size=2048,
                num_hidden_layers=12,
                num_attention_heads=8,
                max_position_embeddings=77,
                projection_dim=512,
            )
        ).state_dict()
    clip = {"text_encoder.hf_model." + key: value for key, value in clip.items()}
    filled: set[str] = set()
    for key, shape, _dtype, group in manifest["state_dict"]:
        mapped = map_official_key(key, torch.empty(shape, device="meta"))
        if group in ("train_only", "clip_image", "unused"):
            assert isinstance(mapped, str), key  # dropped, with its reason
            continue
        assert isinstance(mapped, dict), key
        for ours_key, tensor in mapped.items():
            reference = clip if group == "clip_text" else ours
            assert tuple(reference[ours_key].shape) == tuple(tensor.shape), key
            filled.add(ours_key)
    training_only = tuple(
        f"{name}."
        for name in (
            "text_context",
            "word_scorer",
            "patch_scorer",
            "image_reconstructor",
            "text_reconstructor",
            "text_output",
        )
    )
    assert {key for key in ours if not key.startswith(training_only)} | set(clip) == filled
