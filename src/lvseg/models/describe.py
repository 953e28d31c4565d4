"""Size and cost of a registered model: parameters and GFLOPs, without allocating or computing anything."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from lvseg.models.base import SegmentationModel
from lvseg.models.pretrained import weights_from
from lvseg.models.registry import create_model, list_models, model_options


def describe_model(name: str, **options: Any) -> dict[str, Any]:
    """Parameter counts, GFLOPs of one batch-1 forward pass and expected inputs of ``create_model(name, **options)``.

    The model is built on the meta device with no pretrained weights read (configs only), so nothing is
    allocated or computed; FLOPs are counted by
    ``torch.utils.flop_counter.FlopCounterMode`` (a multiply-add counts as 2 FLOPs) for the network in
    eval mode on a text input of the right shape: the text front end is not built unless ``options`` name
    one (``text_encoder="clip"``, ``"hf:<id or path>"``: loaded on the CPU, its frozen parameters counted),
    and is never part of the GFLOPs (a text tower that the forward itself runs, e.g. CLIPSeg's, is).

    Returns ``model``, ``options`` (the config), ``parameters`` (total), ``trainable_parameters``,
    ``frozen_parameters``, ``training_only_parameters``, ``inference_parameters`` (without training-only
    modules), ``inference_learned_parameters`` (of those, the trained ones), ``gflops`` (the network),
    ``text_encoder_gflops`` (one report through the built text encoder, else None), ``requires_text``,
    ``image_shape`` and ``text_shape`` (the first tensor of the text input; None for image-only models) and
    ``text_tower_in_network`` (the model's forward runs its own text tower, so ``gflops`` include it).
    """
    spec = options.pop("text_encoder", None)
    text_gflops = None
    if spec is not None:  # a pretrained encoder is loaded for real (on the CPU) to count its parameters and FLOPs
        from lvseg.text import build_text_encoder

        encoder = build_text_encoder(spec, max_length=options.get("text_len"))
        if getattr(encoder, "cache", None) is not None:
            # describing a model writes no feature file (nn.Module.__setattr__ is typed for tensors and modules)
            encoder.cache = None  # type: ignore[assignment]
        text_counter = FlopCounterMode(display=False)
        with text_counter, torch.no_grad():
            encoder(["Bilateral pulmonary infection, two infected areas, upper left lung and lower right lung."])
        text_gflops = text_counter.get_total_flops() / 1e9
        options["text_encoder"] = encoder
    with torch.device("meta"), weights_from("nowhere"):  # architecture only: no weights are read
        model = create_model(name, **options)
    model.eval()
    config = dict(model.config)
    image_shape = [1, config.get("in_channels", 3), config.get("img_size", 224), config.get("img_size", 224)]
    images = torch.empty(image_shape, device="meta")
    text = model.example_text_input(1, device="meta")
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(images, text)
    counts = model.parameter_counts()
    first_text = _first_tensor(text)
    return {
        "model": name,
        "options": model.config_summary(),
        "parameters": counts["total"],
        "trainable_parameters": counts["trainable"],
        "frozen_parameters": counts["frozen"],
        "training_only_parameters": counts["training_only"],
        "inference_parameters": counts["inference"],
        "inference_learned_parameters": counts["inference"] - counts["frozen"],
        "gflops": counter.get_total_flops() / 1e9,
        "text_encoder_gflops": text_gflops,
        "requires_text": bool(model.requires_text),
        "image_shape": image_shape,
        "text_shape": list(first_text.shape) if first_text is not None else None,
        "text_tower_in_network": bool(model.text_tower_in_forward and model.text_encoder is None),
    }


def describe_built_model(model: SegmentationModel) -> dict[str, Any]:
    """:func:`describe_model` of a model already built (a trained or loaded one): its config, with its own
    text encoder reused rather than rebuilt, so a model whose text input replaces a built-in tower (CRIS with
    ``text_encoder="learned"``) is counted as it is, not as its default."""
    options = {key: value for key, value in model.config.items() if key != "text_encoder"}
    if model.text_encoder is not None:
        options["text_encoder"] = model.text_encoder
    return describe_model(model.model_name, **options)


def describe_all(**options: Any) -> list[dict[str, Any]]:
    """:func:`describe_model` for every registered model, each given those of ``options`` it takes
    (e.g. ``img_size`` for all, ``text_len`` for text models)."""
    return [
        describe_model(name, **{key: value for key, value in options.items() if key in model_options(name)})
        for name in list_models()
    ]


def _first_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    return None
