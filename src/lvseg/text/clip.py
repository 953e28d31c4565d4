"""The ``clip:<id or path>`` text encoder: a frozen CLIP text tower, per-token projected states.

Runs ``transformers`` ``CLIPTextModelWithProjection`` with ``CLIPTokenizer`` (default
``openai/clip-vit-base-patch32``, any Hub id or local folder). Token ids are made as the official
RecLMIS code makes them (ShawnHuang497/RecLMIS, its CLIP tokenization): ``[<|startoftext|>, BPE ids ..., <|endoftext|>]``
truncated to ``max_length`` (default 18; a cut sequence ends with ``<|endoftext|>``) and padded with
id **0**, not the tokenizer's pad id: padded positions reach the model's interactor, so imported weights
must see the inputs they were trained on. The attention mask is ``ids != 0`` (with CLIP's causal mask).
``eof_padding``: a report of fewer than 9 words first gets ``" EOF XXX"`` appended (9 - n) times, the
official code's short-report trick.

Output: ``tokens`` (B, L, P) = ``text_projection(last_hidden_state)`` at every position, padding
included (P = projection size, 512 for ViT-B/32); ``mask`` (B, L) = ids != 0; ``pooled`` (B, P) masked mean.

Weights: loaded from the id/path and frozen (``pretrained_source``; kept out of checkpoints), or, for
weights converted from another file (``lvseg import-reclmis``), built from ``text_config`` and stored in
the lvseg checkpoint like any weights (only the tokenizer files are then read from ``name_or_path``).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lvseg.errors import LvsegError
from lvseg.text.base import TextEncoder, TextFeatures, check_texts, masked_mean
from lvseg.text.huggingface import (
    allow_missing_pretrained_weights,
    download_failed_message,
    downloads_allowed,
    drop_pretrained_weights,
)
from lvseg.text.openai_clip import clip_token_sequence

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

DEFAULT_CLIP = "openai/clip-vit-base-patch32"
#: Distinct reports whose states an encoder keeps in memory.
CACHED_REPORTS = 4096
PAD_ID = 0
EOF_WORDS = 9


#: The files of a CLIP tokenizer (what ``hf download`` needs for the tokenizer alone).
TOKENIZER_FILES = "vocab.json merges.txt tokenizer_config.json special_tokens_map.json"


def _missing_clip_message(name_or_path: str, what: str, error: BaseException | None = None) -> str:
    on_disk = Path(name_or_path).expanduser().exists()
    if downloads_allowed() and not on_disk:
        return download_failed_message(
            what,
            name_or_path,
            error,
            "pass the folder as `clip:/path/to/folder`",
            files=TOKENIZER_FILES if what == "CLIP tokenizer" else "",
        )
    if what == "CLIP tokenizer" and not on_disk:
        return (
            f"the CLIP tokenizer '{name_or_path}' is not available offline: download its files with `hf download "
            f"{name_or_path} {TOKENIZER_FILES}` (into the "
            "Hugging Face cache) or save them into a folder and pass that folder."
        )
    if on_disk:
        return (
            f"CLIP folder '{name_or_path}' does not hold a loadable {what} (as written by `save_pretrained`: "
            "config.json and model weights, vocab.json and merges.txt); re-save it there or pass another folder "
            "with `--text-encoder clip:/path/to/folder`."
        )
    return (
        f"CLIP model '{name_or_path}' is not available offline: download it with `hf download {name_or_path}` "
        f"(into the Hugging Face cache, ~/.cache/huggingface) or save it into a folder and pass "
        f"`clip:/path/to/folder` (or set LVSEG_ALLOW_DOWNLOAD=1 to let lvseg download it)."
    )


def load_clip_tokenizer(name_or_path: str) -> Any:
    from transformers import CLIPTokenizer

    try:
        return CLIPTokenizer.from_pretrained(name_or_path, local_files_only=not downloads_allowed())
    except (OSError, ValueError, KeyError, TypeError) as error:
        logger.debug("loading the CLIP tokenizer %r failed: %r", name_or_path, error)
        raise LvsegError(_missing_clip_message(name_or_path, "CLIP tokenizer", error)) from error


class CLIPTextEncoder(TextEncoder):
    """A frozen CLIP text tower read at every token position (see the module docstring)."""

    trainable = False
    tokenizer: PreTrainedTokenizerBase

    def __init__(
        self,
        name_or_path: str = DEFAULT_CLIP,
        max_length: int = 18,
        eof_padding: bool = True,
        text_config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        from transformers import CLIPTextConfig, CLIPTextModelWithProjection

        if max_length < 2:
            raise LvsegError(
                f"clip text encoder: max_length must be at least 2 (start and end tokens), got {max_length}"
            )
        local = Path(name_or_path).expanduser()
        self.name_or_path = str(local.resolve()) if local.exists() else name_or_path
        self.max_length, self.eof_padding = int(max_length), bool(eof_padding)
        if text_config is None:
            try:
                model = CLIPTextModelWithProjection.from_pretrained(
                    self.name_or_path, local_files_only=not downloads_allowed()
                )
            except (OSError, ValueError, KeyError, TypeError) as error:
                logger.debug("loading CLIP %r failed: %r", name_or_path, error)
                raise LvsegError(_missing_clip_message(self.name_or_path, "CLIP text model", error)) from error
            self.pretrained_source = self.name_or_path  # weights reloaded from here, never stored
            self.register_state_dict_post_hook(drop_pretrained_weights)
            self.register_load_state_dict_post_hook(allow_missing_pretrained_weights)
        else:
            model = CLIPTextModelWithProjection(CLIPTextConfig(**text_config))  # weights come from the checkpoint
        object.__setattr__(self, "tokenizer", load_clip_tokenizer(self.name_or_path))  # after the model: a
        # missing Hub model is named whole, not as its tokenizer files
        self.text_config = None if text_config is None else dict(text_config)
        model.eval()
        model.requires_grad_(False)
        self.hf_model = model
        projection_dim, limit = model.config.projection_dim, model.config.max_position_embeddings
        assert projection_dim is not None and limit is not None  # a CLIPTextConfig always sets both
        self.feature_dim = int(projection_dim)
        if self.max_length > limit:
            raise LvsegError(f"CLIP '{name_or_path}' reads at most {limit} tokens, but max_length is {self.max_length}")
        self._states: OrderedDict[tuple[bool, str], tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self.start_id = int(self.tokenizer.bos_token_id)
        self.end_id = int(self.tokenizer.eos_token_id)

    def config(self) -> dict[str, Any]:
        return {
            "type": "clip",
            "name_or_path": self.name_or_path,
            "max_length": self.max_length,
            "eof_padding": self.eof_padding,
            "text_config": self.text_config,
        }

    def train(self, mode: bool = True) -> CLIPTextEncoder:
        super().train(mode)
        self.hf_model.eval()  # frozen: no dropout whatever the parent module does
        return self

    @property
    def device(self) -> torch.device:
        return next(self.hf_model.parameters()).device

    def _padded_text(self, text: str) -> str:
        words = len(text.split())
        if self.eof_padding and words < EOF_WORDS:
            return text + " EOF XXX" * (EOF_WORDS - words)
        return text

    def token_ids(self, texts: Sequence[str]) -> torch.Tensor:
        """(B, max_length) long ids: start, BPE ids, end (kept when cut), then 0."""
        ids = torch.full((len(texts), self.max_length), PAD_ID, dtype=torch.long)
        for row, text in enumerate(texts):
            body = self.tokenizer(self._padded_text(text), add_special_tokens=False)["input_ids"]
            sequence = clip_token_sequence(body, self.start_id, self.end_id, self.max_length)
            ids[row, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
        return ids

    @torch.no_grad()
    def encode_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, L) -> projected states (B, L, P) float32 at every position."""
        ids = ids.to(self.device)
        output = self.hf_model(input_ids=ids, attention_mask=(ids != PAD_ID).long())
        hidden = output.last_hidden_state  # after the final layer norm
        return self.hf_model.text_projection(hidden).float()

    def forward(self, texts: list[str]) -> TextFeatures:
        """Frozen weights give fixed states: each distinct report is encoded once and kept in memory (at most
        :data:`CACHED_REPORTS`, least recently used dropped), so training re-reads its reports for free."""
        keys = [(self.eof_padding, text) for text in check_texts(texts)]
        missing = list(dict.fromkeys(key for key in keys if key not in self._states))
        if missing:
            ids = self.token_ids([text for _, text in missing])
            for key, row, states in zip(missing, ids, self.encode_ids(ids).cpu()):
                self._states[key] = (states, row != PAD_ID)
                while len(self._states) > CACHED_REPORTS:
                    self._states.popitem(last=False)
        for key in keys:
            self._states.move_to_end(key)
        tokens = torch.stack([self._states[key][0] for key in keys]).to(self.device)
        mask = torch.stack([self._states[key][1] for key in keys]).to(tokens.device)
        return TextFeatures(tokens=tokens, mask=mask, pooled=masked_mean(tokens, mask))

    def _apply(self, fn: Any, recurse: bool = True) -> CLIPTextEncoder:
        self._states.clear()  # a dtype change (.half(), ...) or loaded weights invalidate cached states
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self._states.clear()
        super()._load_from_state_dict(*args, **kwargs)

    def extra_repr(self) -> str:
        return f"name_or_path={self.name_or_path!r}, dim={self.feature_dim}, max_length={self.max_length}"
