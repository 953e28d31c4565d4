"""The names of the inference backends and the help line of ``--backend`` (no torch import: the CLI reads it)."""

BACKENDS = ("auto", "eager", "bf16", "compile", "onnx", "openvino", "openvino-bf16")
#: The backends that run the network exported to ONNX (CPU only; they need an example batch to export).
EXPORTING_BACKENDS = ("onnx", "openvino", "openvino-bf16")
#: The help line of every ``--backend`` option (predict, evaluate, serve).
BACKEND_HELP = ("How the network runs: eager (fp32 reference), bf16 (channels-last + bf16 where the CPU/GPU has it), "
                "compile (torch.compile), onnx (ONNX Runtime), openvino (fp32), openvino-bf16, or auto (the fastest "
                "that passes the accuracy guard: openvino, else onnx, when installed; eager on CUDA and for a single --image, "
                "where exporting costs more than it saves).")
#: The help line of ``--checkpoint`` where an export folder also works (predict, evaluate, serve).
CHECKPOINT_HELP = "An lvseg checkpoint (.ckpt), or a folder written by `lvseg export` (runs with onnx or openvino)."
