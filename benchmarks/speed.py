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
import os
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


def tuned_end_to_end(checkpoint: Path, repeats: int) -> list[dict[str, object]]:
    """A checkpoint tuned by ``lvseg tune-backend`` (or training) end to end through
    ``lvseg.load_model(...).predict`` on a 512x512 PNG: ``auto`` (what its record chooses), then every backend
    of its record that passed, each against fp32 eager of the same run."""
    from PIL import Image

    from lvseg.checkpoint import load_checkpoint
    from lvseg.inference import load_model

    record = load_checkpoint(checkpoint).backend_record
    if record is None:
        raise SystemExit(f"{checkpoint} has no backend record: run `lvseg tune-backend` on it first")
    folder = Path(tempfile.mkdtemp(prefix="lvseg-speed-"))
    Image.fromarray((np.random.default_rng(0).random((512, 512)) * 255).astype(np.uint8)).save(folder / "x.png")
    rows, eager_ms = [], None
    for backend in ["eager", "auto", *[name for name in record.passed() if name != "eager"]]:
        segmenter = load_model(checkpoint, device="cpu", backend=backend)
        report = segmenter.example_reports[0]
        latency = timed(lambda: segmenter.predict(folder / "x.png", report), repeats)
        eager_ms = latency if backend == "eager" else eager_ms
        trial = record.trial(segmenter.backend)
        rows.append(
            {
                "checkpoint": f"{checkpoint.parent.name}/{checkpoint.name}",
                "backend": backend if backend != "auto" else f"auto = {segmenter.backend}",
                "ms per image": f"{latency:.1f}",
                "ratio to eager": f"{eager_ms / latency:.2f}x" if eager_ms else "-",
                "fraction of eager": f"{latency / eager_ms:.2f}" if eager_ms else "-",
                "guard (record)": f"{trial.min_dice:.4f}" if trial and trial.min_dice is not None else "-",
            }
        )
        print(rows[-1], flush=True)
    return rows


def folder_throughput(
    checkpoint: Path, backends: list[str], n_images: int = 64, batch: int = 16, sources: Path | None = None
) -> list[dict[str, object]]:
    """Folder prediction (``predict_folder``: decode, resize, network, upsample, checks, mask and overlay PNGs)
    of ``n_images`` 512x512 PNGs at ``batch``, against the network's own throughput at that batch
    (``Segmenter.probabilities`` on tensors already at model resolution), per backend, same run. The PNGs are
    the images of ``sources`` (a folder of images, cycled) resized to 512 px, else random noise (the worst
    case for PNG encoding)."""
    import csv

    from PIL import Image

    from lvseg.inference import load_model
    from lvseg.inference.folder import predict_folder

    folder = Path(tempfile.mkdtemp(prefix="lvseg-folder-"))
    (folder / "img").mkdir()
    rng = np.random.default_rng(0)
    rows = []
    probe = load_model(checkpoint, device="cpu", backend="eager")
    report = probe.example_reports[0]
    with open(folder / "Test_text.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Image", "Description"])
        originals = sorted(p for p in sources.iterdir() if p.is_file()) if sources is not None else []
        for index in range(n_images):
            if originals:
                picture = Image.open(originals[index % len(originals)]).convert("RGB").resize((512, 512))
            else:
                picture = Image.fromarray((rng.random((512, 512)) * 255).astype(np.uint8))
            picture.save(folder / "img" / f"x{index:03d}.png")
            writer.writerow([f"x{index:03d}.png", report])
    for backend in backends:
        segmenter = load_model(checkpoint, device="cpu", backend=backend)
        images = torch.rand(batch, segmenter.in_channels, segmenter.img_size, segmenter.img_size)
        network_ms = timed(lambda: segmenter.probabilities(images, [report] * batch), 3)
        predict_folder(segmenter, folder, folder / "warm", batch_size=batch)  # first-call costs out of the timing
        network_rate = batch / (network_ms / 1000.0)
        for overlays in (True, False):
            started = time.perf_counter()
            predict_folder(segmenter, folder, folder / f"out-{backend}-{overlays}", batch_size=batch, overlays=overlays)
            folder_rate = n_images / (time.perf_counter() - started)
            rows.append(
                {
                    "checkpoint": f"{checkpoint.parent.name}/{checkpoint.name}",
                    "backend": segmenter.backend,
                    "writes": "masks, overlays, CSV" if overlays else "masks, CSV (--no-overlays)",
                    f"network batch-{batch} img/s": f"{network_rate:.1f}",
                    f"folder prediction img/s ({n_images} PNGs, 512 px)": f"{folder_rate:.1f}",
                    "folder / network": f"{folder_rate / network_rate:.2f}",
                }
            )
            print(rows[-1], flush=True)
    return rows


def official_lvit_rows(folder: Path, repeats: int) -> list[dict[str, object]]:
    """The official LViT code's forward (``nets/LViT.py``, ``Config.get_CTranS_config``, from the user's own
    checkout at ``folder``; nothing is downloaded) at 224, batch 1, fp32 and with bf16 autocast."""
    import importlib

    for name in [name for name in sys.modules if name == "Config" or name == "nets" or name.startswith("nets.")]:
        del sys.modules[name]  # another checkout's modules of the same names
    sys.path.insert(0, str(folder))
    try:
        config = importlib.import_module("Config")
        network = importlib.import_module("nets.LViT").LViT(
            config.get_CTranS_config(), n_channels=3, n_classes=1, img_size=224
        )
    except Exception as error:  # the user's checkout: any import problem is a row, not a crash
        return [{"path": "official LViT forward", "precision": "-", "ms": f"failed: {str(error).splitlines()[0][:80]}"}]
    finally:
        sys.path.remove(str(folder))
    network.eval()
    images, text = torch.rand(1, 3, 224, 224), torch.rand(1, 10, 768)
    rows = []
    for precision in ("fp32", "bf16 autocast"):
        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision != "fp32")

        def forward() -> None:
            with torch.no_grad(), autocast:
                network(images, text)

        rows.append(
            {
                "path": "official LViT forward (LVIT_OFFICIAL)",
                "precision": precision,
                "ms": f"{timed(forward, repeats):.1f}",
            }
        )
        print(rows[-1], flush=True)
    return rows


def guard_on_data(checkpoint: Path, data: Path, backends: list[str]) -> list[dict[str, object]]:
    """The accuracy guard on a trained checkpoint and a dataset's test split: every backend's masks against
    fp32 eager's, per image."""
    from lvseg.checkpoint import load_checkpoint
    from lvseg.data.images import read_image, resize_image
    from lvseg.data.layout import load_split
    from lvseg.inference import load_model
    from lvseg.inference.backend_choice import backend_spec
    from lvseg.inference.backends import agreement

    record = load_checkpoint(checkpoint).backend_record
    tuned = {trial.backend for trial in record.trials if trial.error is None} if record is not None else set()
    backends = [name for name in backends if not backend_spec(name).tuned or name in tuned]
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
        trial = record.trial(backend) if record is not None else None
        rows.append(
            {
                "checkpoint": f"{checkpoint.parent.name}/{checkpoint.name}",
                "tuned on": record.data if trial is not None else "-",
                "passed on tuning images": ("yes" if trial.passed else "no") if trial is not None else "-",
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
    parser.add_argument(
        "--tuned",
        type=Path,
        action="append",
        default=[],
        metavar="CHECKPOINT",
        help="also time a tuned checkpoint end to end: auto (its record's choice) and each backend that passed",
    )
    parser.add_argument("--tuned-only", action="store_true", help="only the --tuned (and --guard) runs")
    parser.add_argument(
        "--folder-throughput",
        type=Path,
        default=None,
        metavar="CHECKPOINT",
        help="also measure folder prediction at --batch against the network's own batch throughput",
    )
    parser.add_argument("--folder-images", type=Path, default=None, help="images to build that folder from")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 (default: CUDA when available)")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args(argv)
    from lvseg.inference import resolve_device

    device = resolve_device(args.device)
    from lvseg.inference.backend_choice import backend_spec

    installed = [
        name
        for name in BACKENDS
        if name != "auto"
        and not backend_spec(name).tuned  # bf16-mixed, openvino-int8: set up per checkpoint (--tuned, --guard)
        and (
            name not in EXPORTING_BACKENDS
            or importlib.util.find_spec({"onnx": "onnxruntime", "openvino-bf16": "openvino"}.get(name, name))
        )
    ]
    chosen = args.backends.split(",") if args.backends else installed
    if device.type != "cpu":  # ONNX Runtime and OpenVINO run here on the CPU only
        chosen = [name for name in chosen if name not in EXPORTING_BACKENDS]
    guard_backends = [
        "eager",
        *[
            b
            for b in (args.backends.split(",") if args.backends else BACKENDS)
            if b not in ("auto", "eager", "compile") and backend_spec(b).available()
        ],
    ]
    guard_rows = [row for checkpoint, data in args.guard for row in guard_on_data(checkpoint, data, guard_backends)]
    if args.tuned_only:
        tuned_rows = [row for checkpoint in args.tuned for row in tuned_end_to_end(checkpoint, args.repeats)]
        folder_rows = []
        if args.folder_throughput is not None:
            folder_rows = folder_throughput(
                args.folder_throughput,
                args.backends.split(",") if args.backends else ["auto"],
                batch=args.batch,
                sources=args.folder_images,
            )
        official = os.environ.get("LVIT_OFFICIAL")
        official_rows = official_lvit_rows(Path(official), args.repeats) if official else []
        tables = [markdown_table(rows) for rows in (guard_rows, tuned_rows, folder_rows, official_rows) if rows]
        print("\n\n".join(tables))
        if not args.no_record:
            parts = []
            if guard_rows:
                parts.append(
                    "Guard: masks (threshold 0.5) of each backend against fp32 eager on every TEST image (the record "
                    "was measured on the validation images)."
                )
            if tuned_rows:
                parts.append(
                    "End to end: `load_model(C, backend=...).predict` on a 512 px PNG, median of "
                    f"{args.repeats} after 3 warm-ups, same run as eager."
                )
            if folder_rows:
                parts.append(
                    f"Folder prediction (`predict_folder`, batch {args.batch}, decoding and writing overlapped with the "
                    "network) against the network's own batch throughput (`Segmenter.probabilities` on tensors at "
                    "model resolution), same run."
                )
            parts.append(
                "Official LViT rows: "
                + (
                    "measured from LVIT_OFFICIAL."
                    if official
                    else "not measured (LVIT_OFFICIAL not set: no checkout of the official code on this machine)."
                )
            )
            title = "Tuned checkpoints: " + ", ".join(
                name
                for name, rows in (
                    ("the per-checkpoint guard on test images", guard_rows),
                    ("auto end to end", tuned_rows),
                    ("folder prediction throughput", folder_rows),
                )
                if rows
            )
            append_section(title, " ".join(parts) + "\n\n" + "\n\n".join(tables))
        return 0
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
