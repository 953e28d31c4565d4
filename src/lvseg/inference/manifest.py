"""Names in an export folder's layout (written by :mod:`lvseg.inference.export`, read by
:mod:`lvseg.inference.exported`), and the SHA-256 record of its files."""

from __future__ import annotations

import hashlib
from pathlib import Path

MANIFEST = "lvseg_export.json"
FRONT_END = "text_front_end.safetensors"
#: The state-dict keys of a model's text front end (what ``FRONT_END`` stores).
FRONT_END_PREFIX = "text_encoder."
#: Version of the export folder's layout; 2 added ``model_config`` and the text front end's weights.
EXPORT_VERSION = 2
#: The manifest's key for the exported model's decision threshold (absent from older layout-2 folders: 0.5).
THRESHOLD_KEY = "decision_threshold"
#: The manifest's key for the SHA-256 of every file it lists, ``{file name: hex digest}`` (absent from folders
#: written before lvseg recorded them: those load unverified, with a warning).
HASHES_KEY = "sha256"

#: The formats ``lvseg export`` writes and the graph files each one's folder must hold.
FORMAT_FILES: dict[str, tuple[str, ...]] = {
    "onnx": ("network.onnx",),
    "openvino": ("network.onnx", "network.xml", "network.bin"),
}
FORMATS = tuple(FORMAT_FILES)
#: The network's file, described by the manifest's ``network`` entry; the other graphs are conversions of it.
NETWORK_FILE = "network.onnx"

_CHUNK = 1 << 20


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of the file at ``path`` as 64 hex digits, read in 1 MiB chunks (any size, little memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_hashes(folder: str | Path, names: list[str]) -> dict[str, str]:
    """``{name: SHA-256}`` of the files ``names`` of ``folder`` (what the manifest records under ``HASHES_KEY``)."""
    return {name: file_sha256(Path(folder) / name) for name in names}


#: The manifest's key for the exported checkpoint's backend record (:mod:`lvseg.backend_record`; None: untuned).
BACKEND_RECORD_KEY = "backend_record"
