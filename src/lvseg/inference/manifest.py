"""Names in an export folder's layout (written by :mod:`lvseg.inference.export`, read by
:mod:`lvseg.inference.exported`)."""

MANIFEST = "lvseg_export.json"
FRONT_END = "text_front_end.safetensors"
#: The state-dict keys of a model's text front end (what ``FRONT_END`` stores).
FRONT_END_PREFIX = "text_encoder."
#: Version of the export folder's layout; 2 added ``model_config`` and the text front end's weights.
EXPORT_VERSION = 2
#: The manifest's key for the exported model's decision threshold (absent from older layout-2 folders: 0.5).
THRESHOLD_KEY = "decision_threshold"
