"""Import CRIS checkpoints (Wang et al., CVPR 2022, github.com/DerrickWang005/CRIS.pytorch; and the medvlsm study's,
Poudel et al., MIDL 2024, github.com/naamiinepal/medvlsm) into :class:`lvseg.models.cris.CRIS`.

Three published layouts are read (:func:`lvseg.models.cris_weights.read_cris_checkpoint`): the official DDP
file (``state_dict``, ``module.`` prefix), the study's bare ``cris.pt`` and the study's Lightning ``.ckpt``
(``net.`` prefix; the loss and optimiser objects its ``hyper_parameters`` pickle are read inert and dropped,
:mod:`lvseg.foreign`). The architecture is read off the shapes (image tower width and block counts, embedding width,
text tower, neck widths, decoder depth); attention heads are not in the shapes and follow CLIP's rule (image
width x 32 / 64, text width / 64) and CRIS's 8 decoder heads unless given. The CLIP text tower maps onto
``transformers``' ``CLIPTextModelWithProjection``, so the converted checkpoint needs only the CLIP tokenizer files.
Every key maps to one of ours with the same shape or is listed as dropped (``backbone.logit_scale``), and every
key of the model is filled, or the import fails.

Text padding: the study fine-tuned with prompts padded by the end token and nothing masked, so a Lightning
``.ckpt`` (the study's fine-tuned models) converts with ``text_padding=end-token``; the official file and the
bare ``cris.pt`` (RefCOCO weights trained by the official code, padding masked) convert with ``masked``.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import torch

from lvseg.checkpoint import save_inference_checkpoint
from lvseg.errors import CheckpointError, LvsegError
from lvseg.importers.base import ImporterOption, ImportResult, OfficialImporter, check_finite
from lvseg.models.cris import CRIS, DEFAULT_TOKENIZER, TEXT_PADDINGS
from lvseg.models.cris_weights import architecture, convert_state_dict, read_cris_checkpoint

logger = logging.getLogger(__name__)

#: The text padding each layout's weights were trained with (module docstring).
LAYOUT_PADDING = {"official": "masked", "bare": "masked", "lightning": "end-token"}
#: CRIS's decoder heads (config ``num_head``); not readable from the shapes.
DECODER_HEADS = 8


def convert_cris_state_dict(
    official: Mapping[str, torch.Tensor],
    tokenizer: str = DEFAULT_TOKENIZER,
    text_padding: str = "masked",
    text_len: int | None = None,
    img_size: int = 416,
    vision_heads: int | None = None,
    text_heads: int | None = None,
    decoder_heads: int = DECODER_HEADS,
) -> tuple[CRIS, dict[str, list[str]]]:
    """Build a :class:`CRIS` holding a CRIS state dict (CRIS's key names, no ``module.``/``net.``).

    Returns (the model in eval mode, {reason: dropped keys}). Raises :class:`LvsegError` listing the keys that
    map nowhere, the shape mismatches and the model keys left unfilled."""
    options = architecture(official)
    text_heads = text_heads or options["text_width"] // 64
    if not text_heads or options["text_width"] % text_heads:
        raise LvsegError(
            f"the CRIS text tower is {options['text_width']} wide: give its number of attention heads (text_heads)"
        )
    if text_padding not in TEXT_PADDINGS:
        raise LvsegError(f"text_padding {text_padding!r} is not one of {', '.join(TEXT_PADDINGS)}")
    model = CRIS(
        img_size=img_size,
        tokenizer=tokenizer,
        text_padding=text_padding,
        text_len=text_len,
        vision_heads=vision_heads,
        text_heads=text_heads,
        decoder_heads=decoder_heads,
        **options,
    )
    reference = model.state_dict()
    converted, dropped, problems = convert_state_dict(official, reference, "cris")
    unfilled = [key for key in reference if key not in converted]
    if unfilled:
        problems.append(f"{len(unfilled)} key(s) with no CRIS weight: {', '.join(unfilled[:8])}")
    if problems:
        raise LvsegError("CRIS state_dict does not convert: " + "; ".join(problems[:20]))
    model.load_weights(converted)
    return model.eval(), dropped


def import_cris_checkpoint(
    path: str | Path,
    out_path: str | Path,
    tokenizer: str = DEFAULT_TOKENIZER,
    text_padding: str | None = None,
    text_len: int | None = None,
    img_size: int = 416,
    text_heads: int | None = None,
    decoder_heads: int = DECODER_HEADS,
) -> ImportResult:
    """Convert the CRIS checkpoint ``path`` (any published layout) into an lvseg checkpoint at ``out_path``.

    ``text_padding``: ``masked`` or ``end-token`` (default: the layout's, :data:`LAYOUT_PADDING`); ``tokenizer``:
    where the CLIP tokenizer files (vocab.json, merges.txt) are, a Hub id in the local cache or a folder."""
    path, out_path = Path(path), Path(out_path)
    official, layout = read_cris_checkpoint(path)
    padding = text_padding or LAYOUT_PADDING[layout]
    try:
        model, dropped = convert_cris_state_dict(
            official,
            tokenizer=tokenizer,
            text_padding=padding,
            text_len=text_len,
            img_size=img_size,
            text_heads=text_heads,
            decoder_heads=decoder_heads,
        )
    except LvsegError as error:
        raise CheckpointError(f"{path}: {error}") from None
    check_finite(path, model.state_dict())
    save_inference_checkpoint(out_path, model)
    logger.info(
        "converted %s (%s layout): dropped %s", path, layout, {reason: len(keys) for reason, keys in dropped.items()}
    )
    return ImportResult(
        source=path,
        output=out_path,
        model_options=dict(model.config),
        dropped=dropped,
        n_parameters=model.parameter_counts()["inference"],
        notes=[
            f"read as the {layout} layout; text padding '{padding}' (--text-padding to change)",
            f"the checkpoint reads the CLIP tokenizer files (vocab.json, merges.txt) from '{tokenizer}' when it is "
            "loaded; nothing else is downloaded",
        ],
    )


class CRISImporter(OfficialImporter):
    """CRIS checkpoints: the official DDP file, the medvlsm study's ``cris.pt`` and its Lightning ``.ckpt``."""

    family = "cris"
    model_name = "cris"
    source_description = "CRIS checkpoint (official DDP .pth, medvlsm cris.pt or Lightning .ckpt)"
    example_key = "backbone.visual.conv1.weight"
    summary = "Convert a CRIS checkpoint (official, medvlsm cris.pt or Lightning .ckpt): every module; logit_scale is dropped."
    options = (
        ImporterOption(
            "tokenizer",
            "CLIP tokenizer files (vocab.json, merges.txt): a Hub id in the local cache or a folder.",
            default=DEFAULT_TOKENIZER,
        ),
        ImporterOption(
            "text_padding",
            "masked (CRIS's intent) or end-token (the medvlsm study's); default: the layout's (Lightning .ckpt: "
            "end-token, else masked).",
        ),
        ImporterOption("text_len", "Tokens per prompt (default 77).", type=int, minimum=2, flag="--text-length"),
        ImporterOption("img_size", "Input size, a multiple of 32.", default=416, type=int, minimum=32),
        ImporterOption(
            "text_heads", "Attention heads of the text tower (default: width / 64, CLIP's rule).", type=int, minimum=1
        ),
        ImporterOption("decoder_heads", "Attention heads of the decoder (CRIS: 8).", default=8, type=int, minimum=1),
    )

    def recognises(self, keys: Collection[str]) -> bool:
        stripped = {key[len("net.") :] if key.startswith("net.") else key for key in keys}
        return "backbone.visual.attnpool.connect.0.weight" in stripped and any(
            key.startswith("proj.txt.") for key in stripped
        )

    def convert(self, source: Path, out: Path, **options: Any) -> ImportResult:
        return import_cris_checkpoint(source, out, **options)
