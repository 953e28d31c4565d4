"""CLIPSeg, BiomedCLIPSeg and BiomedCLIPSeg-D: towers, weights, decoder taps, losses and recipe.

Everything runs on tiny random models saved in the published file layouts (nothing is downloaded); the
BiomedCLIP towers are checked against an independent re-implementation of open_clip's layout
(tests/official_biomedclip_layout.py).
"""

from __future__ import annotations

import math
import shutil
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lvseg.errors import LvsegError
from lvseg.models import create_model
from lvseg.models.biomedclip import BiomedCLIPTowers, convert_open_clip_state_dict, shapes_from_state_dict
from lvseg.models.describe import describe_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hf_support import save_tiny_clipseg
from official_biomedclip_layout import save_tiny_biomedclip

SIZE = 32
PROMPTS = ["one small polyp , left", "bilateral pulmonary infection , two infected areas , upper left lung"]
BIOMED_DECODER = {"extract_layers": [0, 1, 2], "reduce_dim": 16, "decoder_heads": 2, "decoder_mlp": 32}


@pytest.fixture(scope="module")
def clipseg_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_clipseg(tmp_path_factory.mktemp("clipseg"))


@pytest.fixture(scope="module")
def biomedclip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    return save_tiny_biomedclip(tmp_path_factory.mktemp("biomedclip"))


# --------------------------------------------------------------------------------------------- CLIPSeg


def test_clipseg_equals_transformers_clipseg_on_the_same_inputs(clipseg_dir: Path) -> None:
    from transformers import CLIPSegForImageSegmentation

    model = create_model("clipseg", name_or_path=str(clipseg_dir), img_size=SIZE).eval()
    reference = CLIPSegForImageSegmentation.from_pretrained(str(clipseg_dir)).eval()
    images = torch.rand(2, 3, SIZE, SIZE)
    ids, mask = model.encode_text(PROMPTS)
    pixels = (images - torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)) / 0.25  # the folder's processor config
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits[:, None]
        logits = model(images, (ids, mask))
    assert logits.shape == (2, 1, SIZE, SIZE)
    # CLIPSeg's transposed convolutions upsample by (patch / 4)^2: 4x for this tiny patch of 8 (16x for the
    # published patch 16), so the decoder's map is resized to the image, as every lvseg model's output is
    expected = F.interpolate(expected, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    assert model.config["image_mean"] == [0.5, 0.4, 0.3] and model.config["image_std"] == [0.25] * 3


def test_prompt_embedding_does_not_depend_on_the_padding(
    clipseg_dir: Path, biomedclip: tuple[Path, torch.nn.Module]
) -> None:
    clipseg = create_model("clipseg", name_or_path=str(clipseg_dir), img_size=SIZE).eval()
    biomed = create_model("biomedclipseg", biomedclip=str(biomedclip[0]), img_size=SIZE, **BIOMED_DECODER).eval()
    for model in (clipseg, biomed):
        alone = model.text_condition(*model.encode_text(PROMPTS[:1]))
        padded_ids, padded_mask = model.encode_text(PROMPTS)
        assert padded_mask[0].sum() < padded_mask.shape[1]  # the short prompt is padded in the batch
        with torch.no_grad():
            torch.testing.assert_close(model.text_condition(padded_ids, padded_mask)[:1], alone, atol=1e-5, rtol=1e-5)


def test_clipseg_trains_the_decoder_only_unless_asked(clipseg_dir: Path) -> None:
    frozen = create_model("clipseg", name_or_path=str(clipseg_dir), img_size=SIZE)
    assert frozen.pretrained_sources() == {"tower": str(clipseg_dir.resolve())}
    assert all(key.startswith("decoder.") for key in frozen.state_dict())  # towers are reloaded, never stored
    tuned = create_model("clipseg", name_or_path=str(clipseg_dir), img_size=SIZE, train_encoders=True).train()
    target = torch.zeros(2, 1, SIZE, SIZE)
    target[:, :, 8:20, 8:20] = 1
    terms = tuned.compute_losses(tuned(torch.rand(2, 3, SIZE, SIZE), tuned.encode_text(PROMPTS)), target)
    sum(terms.values()).backward()
    vision = tuned.tower.hf_model.vision_model.encoder.layers[0].mlp.fc1.weight
    text = tuned.tower.hf_model.text_model.encoder.layers[0].mlp.fc1.weight
    assert vision.grad is not None and vision.grad.abs().sum() > 0  # transformers' own forward would give none
    assert text.grad is not None and text.grad.abs().sum() > 0
    assert any(key.startswith("tower.") for key in tuned.state_dict())  # fine-tuned towers are stored
    unreached = [
        name for name, p in tuned.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())
    ]
    assert not unreached, f"trainable parameters without gradient: {unreached[:5]}"


def test_published_sizes_of_the_full_models() -> None:
    clipseg = describe_model("clipseg", img_size=352)  # built from CIDAS's architecture, no weights read
    assert clipseg["parameters"] == 150_747_746 and clipseg["trainable_parameters"] == 1_127_009
    assert round(clipseg["parameters"] / 1e6, 2) == 150.75
    biomed = describe_model("biomedclipseg", img_size=224)
    assert round(biomed["frozen_parameters"] / 1e6, 2) == 195.90  # BiomedCLIP less its logit scale
    assert biomed["trainable_parameters"] == 1_127_009 and biomed["text_shape"] == [1, 256]
    assert biomed["text_tower_in_network"] and clipseg["text_shape"] == [1, 77]
    assert 75 < biomed["gflops"] < 85 and 95 < clipseg["gflops"] < 102


def test_missing_weights_are_one_sentence(tmp_path: Path) -> None:
    with pytest.raises(LvsegError, match=r"^CLIPSeg model 'nobody/nothing' is not available offline: download it"):
        create_model("clipseg", name_or_path="nobody/nothing")
    with pytest.raises(
        LvsegError,
        match=r"BiomedCLIP is not in '.*': download open_clip_pytorch_model\.bin from "
        r"microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224 and vocab\.txt",
    ):
        create_model("biomedclipseg", biomedclip=str(tmp_path))


# ------------------------------------------------------------------------------------------- BiomedCLIP


def test_biomedclip_towers_equal_the_open_clip_layout(biomedclip: tuple[Path, torch.nn.Module]) -> None:
    folder, reference = biomedclip
    model = create_model("biomedclipseg", biomedclip=str(folder), img_size=SIZE, **BIOMED_DECODER).eval()
    towers = model.tower.hf_model
    pixels = torch.randn(2, 3, SIZE, SIZE)
    ids, mask = model.encode_text(PROMPTS)
    with torch.no_grad():
        hidden = towers.image_hidden_states(pixels)
        for index, block_output in enumerate(reference.visual.trunk.block_outputs(pixels)):
            torch.testing.assert_close(hidden[index + 1], block_output, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(towers.image_embedding(pixels), reference.encode_image(pixels), atol=1e-5, rtol=1e-5)
        for row in range(2):  # the reference runs one unpadded prompt at a time
            alone = ids[row : row + 1, : int(mask[row].sum())]
            torch.testing.assert_close(
                towers.text_embedding(ids, mask)[row : row + 1], reference.encode_text(alone), atol=1e-5, rtol=1e-5
            )


def test_biomedclip_loads_from_safetensors_too(biomedclip: tuple[Path, torch.nn.Module], tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from lvseg.models.biomedclip import load_biomedclip

    folder, reference = biomedclip
    save_file(
        {key: value.contiguous() for key, value in reference.state_dict().items()},
        str(tmp_path / "open_clip_model.safetensors"),
    )
    shutil.copy(folder / "vocab.txt", tmp_path / "vocab.txt")
    pixels = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(
            load_biomedclip(tmp_path).image_embedding(pixels), reference.encode_image(pixels), atol=1e-5, rtol=1e-5
        )


def test_every_biomedclip_key_is_mapped_with_its_shape(biomedclip: tuple[Path, torch.nn.Module]) -> None:
    state = biomedclip[1].state_dict()
    towers = BiomedCLIPTowers(shapes_from_state_dict(state))
    converted = convert_open_clip_state_dict(state, towers)
    assert set(converted) == set(towers.state_dict())  # every tower weight filled
    used = sum(value.numel() for value in converted.values())
    assert used == sum(value.numel() for key, value in state.items() if key != "logit_scale")  # every key used
    with pytest.raises(LvsegError, match="unused key visual.trunk.extra"):
        convert_open_clip_state_dict({**state, "visual.trunk.extra": torch.zeros(1)}, towers)
    partial = {key: value for key, value in state.items() if key != "text.proj.2.weight"}
    with pytest.raises(LvsegError, match=r"missing weight text_projection\.2\.weight"):
        convert_open_clip_state_dict(partial, towers)
    bent = {**state, "visual.head.proj.weight": torch.zeros(3, 3)}
    with pytest.raises(LvsegError, match=r"visual_projection\.weight has shape \(3, 3\)"):
        convert_open_clip_state_dict(bent, towers)
    older = {
        **state,
        "text.transformer.pooler.dense.weight": torch.zeros(2, 2),
        "text.transformer.embeddings.position_ids": torch.arange(4),
    }
    assert set(convert_open_clip_state_dict(older, towers)) == set(converted)  # dropped, as documented


def test_the_decoder_taps_the_clipseg_layers(biomedclip: tuple[Path, torch.nn.Module]) -> None:
    """With extract_layers [0, 1] of a 3-block tower, block 2 is never used and block 1 is: changing block 2
    leaves the prediction as it was, changing block 1 does not (an off-by-one tap would reverse both)."""
    model = create_model(
        "biomedclipseg", biomedclip=str(biomedclip[0]), img_size=SIZE, **{**BIOMED_DECODER, "extract_layers": [0, 1]}
    ).eval()
    vision = model.tower.hf_model.vision
    blocks = vision.layers if hasattr(vision, "layers") else vision.encoder.layer
    images = torch.rand(1, 3, SIZE, SIZE)
    text = model.encode_text(PROMPTS[:1])
    before = model(images, text)
    with torch.no_grad():
        for parameter in blocks[2].parameters():
            parameter.mul_(3.0)
    torch.testing.assert_close(model(images, text), before)
    with torch.no_grad():
        for parameter in blocks[1].parameters():
            parameter.mul_(3.0)
    assert not torch.allclose(model(images, text), before)


def test_gray_images_and_upper_case_prompts(clipseg_dir: Path, biomedclip: tuple[Path, torch.nn.Module]) -> None:
    model = create_model(
        "biomedclipseg", biomedclip=str(biomedclip[0]), img_size=SIZE, in_channels=1, **BIOMED_DECODER
    ).eval()
    gray = torch.rand(1, 1, SIZE, SIZE)
    torch.testing.assert_close(
        model.predict_proba(gray, PROMPTS[:1]), model.predict_proba(gray.expand(-1, 3, -1, -1), PROMPTS[:1])
    )
    shouting = model.encode_text([PROMPTS[0].upper() + "   "])[0]  # BiomedBERT is uncased, spaces collapse
    torch.testing.assert_close(shouting, model.encode_text(PROMPTS[:1])[0])


def test_biomedclipseg_d_starts_from_the_clipseg_decoder(
    clipseg_dir: Path, biomedclip: tuple[Path, torch.nn.Module], tmp_path: Path
) -> None:
    from transformers import CLIPSegForImageSegmentation

    from lvseg.checkpoint import load_checkpoint, save_inference_checkpoint

    source = CLIPSegForImageSegmentation.from_pretrained(str(clipseg_dir)).decoder.state_dict()
    d = create_model("biomedclipseg-d", biomedclip=str(biomedclip[0]), img_size=SIZE, decoder_init=str(clipseg_dir))
    for key, value in d.decoder.state_dict().items():
        torch.testing.assert_close(value, source[key])
    assert d.config["extract_layers"] == [0, 1, 2] and d.config["reduce_dim"] == 16  # the checkpoint's geometry
    plain = create_model("biomedclipseg", biomedclip=str(biomedclip[0]), img_size=SIZE, **BIOMED_DECODER)
    assert not torch.equal(plain.decoder.film_mul.weight, source["film_mul.weight"])
    simple = create_model(
        "biomedclipseg",
        biomedclip=str(biomedclip[0]),
        img_size=SIZE,
        conditional_layer=1,
        complex_upsampling=False,
        **BIOMED_DECODER,
    )
    twin = create_model("biomedclipseg", **simple.config)  # every geometry value is in the config
    twin.load_weights(simple.state_dict())
    assert twin.config["conditional_layer"] == 1 and twin.config["complex_upsampling"] is False
    with pytest.raises(LvsegError, match="reduce_dim=8 contradict"):
        create_model(
            "biomedclipseg-d", biomedclip=str(biomedclip[0]), img_size=SIZE, decoder_init=str(clipseg_dir), reduce_dim=8
        )

    # A trained -d model loads without its decoder_init checkpoint: the trained decoder is in the file.
    copy = tmp_path / "clipseg-copy"
    shutil.copytree(clipseg_dir, copy)
    d = create_model("biomedclipseg-d", biomedclip=str(biomedclip[0]), img_size=SIZE, decoder_init=str(copy)).eval()
    save_inference_checkpoint(tmp_path / "d.ckpt", d)
    shutil.rmtree(copy)
    loaded = load_checkpoint(tmp_path / "d.ckpt").model
    images = torch.rand(1, 3, SIZE, SIZE)
    torch.testing.assert_close(loaded.predict_proba(images, PROMPTS[:1]), d.predict_proba(images, PROMPTS[:1]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_biomedclipseg_trains_in_full_and_mixed_precision(
    biomedclip: tuple[Path, torch.nn.Module], dtype: torch.dtype
) -> None:
    model = create_model("biomedclipseg", biomedclip=str(biomedclip[0]), img_size=SIZE, **BIOMED_DECODER).train()
    target = torch.zeros(2, 1, SIZE, SIZE)
    target[:, :, 4:16, 4:16] = 1
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        output = model(torch.rand(2, 3, SIZE, SIZE), model.encode_text(PROMPTS))
        loss = sum(model.compute_losses(output, target).values())
    loss.backward()
    grads = [p.grad for p in model.decoder.parameters()]
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0
    assert all(p.grad is None for p in model.tower.parameters())


# --------------------------------------------------------------------------------------- loss and recipe


def test_the_vlsm_loss_is_dice_plus_a_real_bce_term(clipseg_dir: Path) -> None:
    model = create_model("clipseg", name_or_path=str(clipseg_dir), img_size=SIZE)
    target = torch.zeros(1, 1, SIZE, SIZE)
    target[..., :16, :] = 1
    terms = model.compute_losses(torch.zeros(1, 1, SIZE, SIZE), target)
    assert terms["bce"].item() == pytest.approx(0.2 * math.log(2), rel=1e-5)  # not zero for one channel
    # unsquared soft Dice with p = 0.5 everywhere: 1 - 2 * 0.5 * 512 / (0.5 * 1024 + 512)
    assert terms["dice"].item() == pytest.approx(1 - 512 / 1024, rel=1e-4)


def test_vlsm_models_use_the_study_recipe_unless_overridden(tmp_path: Path) -> None:
    from lvseg.training.module import SegmentationTask
    from lvseg.training.optim import PLATEAU_PATIENCE
    from lvseg.training.options import TrainConfig, with_model_recipe

    base = {"data": tmp_path, "out": tmp_path / "run"}
    recipe = with_model_recipe(TrainConfig(model="clipseg", **base))
    assert (
        recipe.optimizer,
        recipe.lr,
        recipe.weight_decay,
        recipe.lr_schedule,
        recipe.grad_clip,
        recipe.batch_size,
        recipe.patience,
    ) == ("adamw", 2e-3, 1e-3, "plateau", 0.5, 128, 20)
    assert with_model_recipe(TrainConfig(model="clipseg", lr=1e-4, **base)).lr == 1e-4
    paper = with_model_recipe(TrainConfig(model="clipseg", recipe="lvit", **base))
    assert (paper.optimizer, paper.lr_schedule, paper.grad_clip) == ("adam", "cosine", 0.0)
    assert with_model_recipe(TrainConfig(model="lvit", recipe="vlsm", **base)).optimizer == "adamw"
    assert with_model_recipe(TrainConfig(model="c2fvl", **base)).batch_size == 4  # a model's own override
    assert recipe.img_size == 352 and with_model_recipe(TrainConfig(model="lvit", **base)).img_size == 224
    assert with_model_recipe(TrainConfig(model="clipseg", img_size=224, **base)).img_size == 224

    task = SegmentationTask(
        "unet",
        {"img_size": 32, "base_channels": 4},
        optimizer="adamw",
        lr=2e-3,
        weight_decay=1e-3,
        lr_schedule="plateau",
    )
    configured = task.configure_optimizers()
    assert isinstance(configured["optimizer"], torch.optim.AdamW)
    assert configured["optimizer"].defaults["weight_decay"] == 1e-3
    assert isinstance(configured["lr_scheduler"]["scheduler"], torch.optim.lr_scheduler.ReduceLROnPlateau)
    assert configured["lr_scheduler"]["monitor"] == "val_loss"
    plateau = configured["lr_scheduler"]["scheduler"]
    assert (plateau.factor, plateau.patience, PLATEAU_PATIENCE) == (0.1, 5, 5)  # the study's
