"""Inference speed of every registered model per backend, with the fp32 eager time of the same run.

For each model at ``--img-size`` (and LViT also at 512): batch-1 latency (median of ``--repeats`` runs after
warm-up) and batch-16 throughput of the network through ``Segmenter.probabilities`` (text encoding included),
per backend, with the ratio to fp32 eager and the accuracy guard (lowest per-image Dice between the masks
of the backend and of eager, largest probability difference). Models whose pretrained weights are not on
the machine (CLIPSeg, BiomedCLIPSeg) are timed with random weights of the published architecture: speed does
not depend on the weights. Then LViT end to end through ``lvseg.load_model(...).predict`` on a PNG file
(decode, resize, text, forward, upsample). The table is printed and appended to benchmarks/RESULTS.md.

    python benchmarks/speed.py                                   # every model, every available backend
    python benchmarks/speed.py --models lvit,unet --backends eager,bf16,openvino
    python benchmarks/speed.py --device cuda --models lvit      # on a GPU: eager (AMP), bf16 + channels-last, compile

On CUDA the exporting backends (CPU runtimes) are left out and eager runs with bf16/fp16 autocast (AMP), the
reference of the ratios there.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_section, markdown_table

REPORT = "Bilateral pulmonary infection, two infected areas, upper left lung and lower right lung."


def build(name: str, img_size: int) -> torch.nn.Module:
    from lvseg.models import create_model, model_class
    from lvseg.models.pretrained import weights_from

    options: dict[str, object] = {"img_size": img_size}
    if (
        model_class(name).requires_text
        and "text_encoder" in __import__("inspect").signature(model_class(name).__init__).parameters
    ):
        options["text_encoder"] = "learned"  # a pretrained tower (CLIP for reclmis) may not be offline
    torch.manual_seed(0)
    with weights_from("nowhere"):  # random weights of the published architecture when none are here
        return create_model(name, texts=[REPORT], **options).eval()


def timed(function, repeats: int) -> float:
    for _ in range(3):
        function()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append((time.perf_counter() - started) * 1000.0)
    return statistics.median(times)


def measure_model(
    name: str, img_size: int, backends: list[str], repeats: int, batch: int, device: torch.device
) -> list[dict[str, object]]:
    from lvseg.inference import Segmenter
    from lvseg.inference.backends import agreement

    rows, reference, eager_ms = [], None, None
    for backend in backends:
        model = build(name, img_size)
        images = torch.rand(batch, model.config.get("in_channels", 3), img_size, img_size)
        texts = [REPORT] * batch
        try:
            started = time.perf_counter()
            segmenter = Segmenter(model, device=device, backend=backend)
            segmenter.probabilities(images[:1], texts[:1])  # compiles / exports here
            setup_s = time.perf_counter() - started
        except Exception as error:  # a backend that cannot run this model is a row, not a crash
            rows.append(
                {
                    "model": name,
                    "size": img_size,
                    "backend": backend,
                    "batch-1 ms": "-",
                    "ratio to eager": "-",
                    f"batch-{batch} img/s": "-",
                    "min Dice vs eager": "-",
                    "max prob diff": "-",
                    "setup s": f"failed: {str(error).splitlines()[0][:80]}",
                }
            )
            continue
        latency = timed(lambda: segmenter.probabilities(images[:1], texts[:1]), repeats)
        batch_ms = timed(lambda: segmenter.probabilities(images, texts), max(3, repeats // 5))
        probabilities = segmenter.probabilities(images, texts).numpy()
        if backend == "eager":
            reference, eager_ms = probabilities, latency
        guard = agreement(reference, probabilities) if reference is not None else None
        rows.append(
            {
                "model": name,
                "size": img_size,
                "backend": backend,
                "batch-1 ms": f"{latency:.1f}",
                "ratio to eager": f"{eager_ms / latency:.2f}x" if eager_ms else "-",
                f"batch-{batch} img/s": f"{batch / (batch_ms / 1000.0):.1f}",
                "min Dice vs eager": f"{guard['min_dice']:.4f}" if guard else "-",
                "max prob diff": f"{guard['max_abs_diff']:.2e}" if guard else "-",
                "setup s": f"{setup_s:.1f}",
            }
        )
        print(rows[-1], flush=True)
    return rows


def end_to_end(backends: list[str], repeats: int, device: torch.device) -> list[dict[str, object]]:
    """LViT 224 through ``lvseg.load_model(...).predict`` on a 512x512 PNG file."""
    from PIL import Image

    from lvseg.checkpoint import save_inference_checkpoint
    from lvseg.inference import load_model

    folder = Path(tempfile.mkdtemp(prefix="lvseg-speed-"))
    save_inference_checkpoint(folder / "lvit.ckpt", build("lvit", 224))
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((512, 512)) * 255).astype(np.uint8)).save(folder / "xray.png")
    rows, eager_ms = [], None
    for backend in backends:
        segmenter = load_model(folder / "lvit.ckpt", device=device, backend=backend)
        latency = timed(lambda: segmenter.predict(folder / "xray.png", REPORT), repeats)
        eager_ms = latency if backend == "eager" else eager_ms
        rows.append(
            {
                "path": "load_model(...).predict, LViT 224, 512 px PNG",
                "backend": backend,
                "ms per image": f"{latency:.1f}",
                "ratio to eager": f"{eager_ms / latency:.2f}x" if eager_ms else "-",
            }
        )
        print(rows[-1], flush=True)
    return rows


def guard_on_data(checkpoint: Path, data: Path, backends: list[str]) -> list[dict[str, object]]:
    """The accuracy guard on a trained checkpoint and a dataset's test split: every backend's masks against
    fp32 eager's, per image."""
    from lvseg.data.images import read_image, resize_image
    from lvseg.data.layout import load_split
    from lvseg.inference import load_model
    from lvseg.inference.backends import agreement

    samples = load_split(data, "test")
    reference, rows = None, []
    for backend in backends:
        segmenter = load_model(checkpoint, device="cpu", backend=backend)
        images = torch.stack(
            [
                resize_image(read_image(s.image_path, channels=segmenter.in_channels), segmenter.img_size)
                for s in samples
            ]
        )
        probabilities = torch.cat(
            [
                segmenter.probabilities(images[i : i + 16], [s.text for s in samples[i : i + 16]])
                for i in range(0, len(samples), 16)
            ]
        ).numpy()
        if backend == "eager":
            reference = probabilities
            continue
        guard = agreement(reference, probabilities)
        rows.append(
            {
                "checkpoint": f"{checkpoint.parent.name}/{checkpoint.name}",
                "test images": len(samples),
                "backend": backend,
                "min Dice vs eager": f"{guard['min_dice']:.4f}",
                "max prob diff": f"{guard['max_abs_diff']:.2e}",
                "passes (>= 0.99)": "yes" if guard["min_dice"] >= 0.99 else "NO",
            }
        )
        print(rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    from lvseg.inference.backend_choice import BACKENDS, EXPORTING_BACKENDS
    from lvseg.models import list_models

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(list_models()))
    parser.add_argument(
        "--backends",
        default=None,
        help="comma-separated (default: every installed one; "
        "compile only for lvit, its compilation takes minutes per model here)",
    )
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument(
        "--guard",
        type=Path,
        nargs=2,
        action="append",
        default=[],
        metavar=("CHECKPOINT", "DATA"),
        help="also run the accuracy guard of a trained checkpoint on DATA's test split (repeatable)",
    )
    parser.add_argument("--guard-only", action="store_true", help="only the --guard runs (no timing)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 (default: CUDA when available)")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args(argv)
    from lvseg.inference import resolve_device

    device = resolve_device(args.device)
    installed = [
        name
        for name in BACKENDS
        if name != "auto"
        and (
            name not in EXPORTING_BACKENDS
            or importlib.util.find_spec({"onnx": "onnxruntime", "openvino-bf16": "openvino"}.get(name, name))
        )
    ]
    chosen = args.backends.split(",") if args.backends else installed
    if device.type != "cpu":  # ONNX Runtime and OpenVINO run here on the CPU only
        chosen = [name for name in chosen if name not in EXPORTING_BACKENDS]
    guard_backends = ["eager", *[b for b in chosen if b not in ("eager", "compile")]]
    guard_rows = [row for checkpoint, data in args.guard for row in guard_on_data(checkpoint, data, guard_backends)]
    if args.guard_only:
        table = markdown_table(guard_rows)
        print(table)
        if not args.no_record:
            append_section(
                "Accuracy guard of the inference backends on trained checkpoints",
                "Masks (threshold 0.5) of each backend against fp32 eager on every test image, at "
                "model resolution; min Dice = the lowest per-image Dice.\n\n" + table,
            )
        return 0
    rows = []
    for name in args.models.split(","):
        backends = [b for b in chosen if b != "compile" or name == "lvit" or args.backends]
        backends = ["eager", *[b for b in backends if b != "eager"]]
        rows += measure_model(name, args.img_size, backends, args.repeats, args.batch, device)
    if "lvit" in args.models.split(","):
        rows += measure_model(
            "lvit",
            512,
            ["eager", *[b for b in chosen if b not in ("eager", "compile")]],
            max(5, args.repeats // 4),
            4,
            device,
        )
    table = markdown_table(rows)
    e2e = markdown_table(
        end_to_end(["eager", *[b for b in chosen if b not in ("eager", "compile")]], args.repeats, device)
    )
    print(table + "\n\n" + e2e)
    where = (
        f"GPU {torch.cuda.get_device_name(device)} (eager = bf16/fp16 autocast, the reference of the ratios)"
        if device.type == "cuda"
        else "CPU"
    )
    gpu_note = (
        ""
        if device.type == "cuda"
        else (" GPU rows: not measured (no GPU was lent to this session)." if not torch.cuda.is_available() else "")
    )
    if not args.no_record:
        append_section(
            "Inference speed per backend" + (" on a GPU" if device.type == "cuda" else ""),
            f"Network through `Segmenter.probabilities` (text encoding included), {where}; batch-1 latency = median of "
            f"{args.repeats} runs after 3 warm-ups; throughput at batch {args.batch} (LViT 512: batch 4); ratio = "
            "eager fp32 batch-1 time / this backend's, same run; guard = lowest per-image Dice between this "
            "backend's masks and eager's (threshold 0.5), largest probability difference. Random weights "
            f"(speed does not depend on them; CLIPSeg/BiomedCLIPSeg at their published sizes).{gpu_note}\n\n"
            + table
            + "\n\nEnd to end:\n\n"
            + e2e,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
