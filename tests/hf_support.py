"""Tiny random Hugging Face models saved in the published folder layout, so loading runs offline."""

from __future__ import annotations

from pathlib import Path

import torch

WORDS = ("bilateral unilateral pulmonary infection infected area areas one two three left right lung middle "
         "upper lower all , .").split()


def save_tiny_bert(folder: Path, hidden: int = 32, seed: int = 0) -> Path:
    """A 2-layer random BERT (``hidden`` wide) and its WordPiece tokenizer, written by ``save_pretrained``."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab_file = folder / "vocab.txt"
    vocab_file.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(vocab_file))
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=5 + len(WORDS), hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=2 * hidden, max_position_embeddings=64,
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
        vocab_size=len(vocab), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=24, projection_dim=projection, hidden_act="quick_gelu",
        bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"], pad_token_id=0,
    )
    CLIPTextModelWithProjection(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
