"""Tiny random Hugging Face models saved in the published folder layout, so loading runs offline."""

from __future__ import annotations

from pathlib import Path

import torch

WORDS = (
    "bilateral unilateral pulmonary infection infected area areas one two three left right lung middle "
    "upper lower all , ."
).split()


def save_tiny_bert(folder: Path, hidden: int = 32, seed: int = 0) -> Path:
    """A 2-layer random BERT (``hidden`` wide) and its WordPiece tokenizer, written by ``save_pretrained``."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab_file = folder / "vocab.txt"
    vocab_file.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(vocab_file))
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=5 + len(WORDS),
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


CLIP_SYMBOLS = list("!\"#$%&'()*+,-./0123456789:;<=>?@abcdefghijklmnopqrstuvwxyz")


def save_tiny_clip(folder: Path, hidden: int = 32, projection: int = 16, seed: int = 0) -> Path:
    """A 2-layer random CLIP text tower with projection and a character-level CLIP BPE tokenizer
    (``vocab.json`` + ``merges.txt``, id 0 = ``!`` as in OpenAI's vocabulary), written by ``save_pretrained``."""
    import json

    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    tokens = CLIP_SYMBOLS + [symbol + "</w>" for symbol in CLIP_SYMBOLS] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(tokens)}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=24,
        projection_dim=projection,
        hidden_act="quick_gelu",
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=0,
    )
    CLIPTextModelWithProjection(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def save_tiny_clipseg(
    folder: Path,
    vision_width: int = 128,
    projection: int = 16,
    patch: int = 8,
    mean: tuple[float, float, float] = (0.5, 0.4, 0.3),
    seed: int = 0,
) -> Path:
    """A tiny random CLIPSeg in the published folder layout of CIDAS/clipseg-rd64-refined: config.json and
    weights (``save_pretrained``), the CLIP BPE tokenizer files and ``preprocessor_config.json`` (with
    ``mean`` as image_mean, so a test can see it is read). Three image layers, all tapped."""
    import json

    from transformers import CLIPSegConfig, CLIPSegForImageSegmentation

    save_tiny_clip(folder, hidden=32, projection=projection, seed=seed)  # tokenizer files (and a text tower)
    for leftover in ("config.json", "model.safetensors"):
        (folder / leftover).unlink(missing_ok=True)
    vocab = json.loads((folder / "vocab.json").read_text())
    torch.manual_seed(seed)
    config = CLIPSegConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 24,
            "bos_token_id": vocab["<|startoftext|>"],
            "eos_token_id": vocab["<|endoftext|>"],
            "pad_token_id": 0,
        },
        vision_config={
            "hidden_size": vision_width,
            "intermediate_size": 2 * vision_width,
            "num_hidden_layers": 3,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": patch,
        },
        projection_dim=projection,
        extract_layers=[0, 1, 2],
        reduce_dim=16,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=32,
        use_complex_transposed_convolution=True,
    )
    CLIPSegForImageSegmentation(config).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_processor_type": "ViTImageProcessor",
                "do_resize": True,
                "do_normalize": True,
                "do_rescale": True,
                "rescale_factor": 1 / 255,
                "resample": 2,
                "size": {"height": 352, "width": 352},
                "image_mean": list(mean),
                "image_std": [0.25, 0.25, 0.25],
            }
        )
    )
    return folder
