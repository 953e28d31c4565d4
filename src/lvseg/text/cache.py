"""On-disk (plus in-memory) cache of frozen text-encoder features, one safetensors file per text.

Reports repeat heavily (QaTa-COV19 has about 400 distinct reports for 9258 images), so a frozen encoder
computes each distinct text once, ever: the features are stored under
``<cache_dir>/<key[:2]>/<key>.safetensors`` with ``key = sha256(identity, max_length, text)`` and kept in a
bounded in-memory dict for the rest of the run. The cache directory is, in order of precedence, the
``cache_dir`` argument, the ``LVSEG_CACHE_DIR`` environment variable, or ``~/.cache/lvseg/text_features``.
Files are written atomically; a file that cannot be read or has the wrong shape is recomputed.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from lvseg.files import atomic_write_bytes

logger = logging.getLogger(__name__)

CACHE_DIR_ENV = "LVSEG_CACHE_DIR"
DEFAULT_CACHE_DIR = Path("~/.cache/lvseg/text_features")

Entry = tuple[torch.Tensor, torch.Tensor]
"""(tokens (L, D) float32, mask (L,) bool), on the CPU."""

ComputeFn = Callable[[list[str]], Entry]
"""Encodes texts (N of them) in one pass -> (tokens (N, L, D), mask (N, L))."""


def default_cache_dir() -> Path:
    """``$LVSEG_CACHE_DIR`` if set, else ``~/.cache/lvseg/text_features``."""
    env = os.environ.get(CACHE_DIR_ENV)
    return Path(env).expanduser() if env else DEFAULT_CACHE_DIR.expanduser()


def cache_key(identity: str, max_length: int, text: str) -> str:
    """sha256 hex digest of the encoder identity (name or path), ``max_length`` and the text."""
    digest = hashlib.sha256()
    for part in (identity, str(max_length), text):
        data = part.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))  # length-prefixed: no ambiguity between parts
        digest.update(data)
    return digest.hexdigest()


class TextFeatureCache:
    """Features of one frozen encoder (``identity`` + ``max_length``), ``feature_dim`` D, per text.

    ``get_many(texts, compute)`` returns (tokens (B, L, D) float32, mask (B, L) bool) on the CPU, looking
    each text up in memory, then on disk, and calling ``compute`` once with the distinct texts still missing.
    ``disk=False`` keeps only the in-memory layer. ``memory_items`` bounds the in-memory layer (LRU).
    """

    def __init__(
        self,
        identity: str,
        max_length: int,
        feature_dim: int,
        cache_dir: str | os.PathLike[str] | None = None,
        disk: bool = True,
        memory_items: int = 4096,
    ) -> None:
        self.identity = identity
        self.max_length = int(max_length)
        self.feature_dim = int(feature_dim)
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        self.disk = disk
        self.memory_items = int(memory_items)
        self._memory: OrderedDict[str, Entry] = OrderedDict()
        self._disk_write_failed = False
        self.hits_memory = 0
        self.hits_disk = 0
        self.misses = 0

    def path_for(self, key: str) -> Path:
        return self.cache_dir / key[:2] / f"{key}.safetensors"

    def _remember(self, key: str, entry: Entry) -> None:
        self._memory[key] = entry
        self._memory.move_to_end(key)
        while len(self._memory) > self.memory_items:
            self._memory.popitem(last=False)

    def _read(self, key: str) -> Entry | None:
        path = self.path_for(key)
        if not path.is_file():
            return None
        try:
            tensors = load_file(str(path))
            tokens, mask = tensors["tokens"], tensors["mask"]
        except (OSError, SafetensorError, KeyError, ValueError, RuntimeError) as err:
            logger.warning("text feature cache file %s is unreadable (%s); recomputing it", path, err)
            return None
        expected = (self.max_length, self.feature_dim)
        if tuple(tokens.shape) != expected or tuple(mask.shape) != (self.max_length,) or mask.dtype != torch.bool:
            logger.warning("text feature cache file %s has unexpected shapes; recomputing it", path)
            return None
        return tokens.float(), mask

    def _write(self, key: str, entry: Entry) -> None:
        if self._disk_write_failed:
            return
        tokens, mask = entry
        data = save({"tokens": tokens.contiguous(), "mask": mask.contiguous()})
        try:
            atomic_write_bytes(self.path_for(key), data)
        except OSError as err:
            self._disk_write_failed = True
            logger.warning(
                "cannot write text feature cache in %s (%s); keeping features in memory only", self.cache_dir, err
            )

    def get_many(self, texts: Sequence[str], compute: ComputeFn) -> Entry:
        """Features for ``texts`` (B of them): tokens (B, L, D) float32 and mask (B, L) bool, on the CPU."""
        keys = [cache_key(self.identity, self.max_length, text) for text in texts]
        found: dict[str, Entry] = {}
        missing: dict[str, str] = {}  # key -> text, distinct, in first-seen order
        for key, text in zip(keys, texts):
            if key in found or key in missing:
                continue
            entry = self._memory.get(key)
            if entry is not None:
                self._memory.move_to_end(key)
                self.hits_memory += 1
            elif self.disk and (entry := self._read(key)) is not None:
                self._remember(key, entry)
                self.hits_disk += 1
            if entry is None:
                missing[key] = text
            else:
                found[key] = entry
        if missing:
            self.misses += len(missing)
            tokens, mask = compute(list(missing.values()))
            tokens = tokens.detach().to("cpu", torch.float32)
            mask = mask.detach().to("cpu", torch.bool)
            for i, key in enumerate(missing):
                # clone: each entry owns its storage (a view would pin, and save, the whole batch)
                entry = (tokens[i].clone(), mask[i].clone())
                found[key] = entry
                self._remember(key, entry)
                if self.disk:
                    self._write(key, entry)
        if not keys:
            empty = torch.zeros(0, self.max_length, self.feature_dim), torch.zeros(0, self.max_length, dtype=torch.bool)
            return empty
        return (torch.stack([found[key][0] for key in keys]), torch.stack([found[key][1] for key in keys]))
