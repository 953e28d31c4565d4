"""Peak memory of the clinical app under concurrent uploads of very large images.

Starts the server in a subprocess around a checkpoint (default: an LViT at the paper's size, 224 px and
width 64, with random weights: memory does not depend on what the weights learned), loaded with
``--backend`` (default ``auto``, what ``lvseg serve`` runs) and warmed up as ``lvseg serve`` does, then
sends ``--bursts`` bursts of ``--concurrency`` simultaneous POST /api/segment requests, each an ``--width``
x ``--height`` PNG (small on the wire, large decoded): 8-bit RGB, or with ``--bit-depth 16`` 16-bit
grayscale (a radiograph's layout). It reads the server's resident memory from /proc: VmRSS after the
warm-up and after each burst, and VmHWM (the peak over all bursts) at the end. Run once with the default
working size and once with ``--max-working-side 8192`` (no reduction: what the app did before) to see
the difference.

    python benchmarks/serve_memory.py
    python benchmarks/serve_memory.py --bit-depth 16
    python benchmarks/serve_memory.py --max-working-side 8192

The table is printed and appended to benchmarks/RESULTS.md (target: peak below 1.5 GB).
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_section, markdown_table
from load_test import free_port, wait_ready

REPORT = "Bilateral pulmonary infection, two infected areas, upper left lung and lower right lung."


def memory_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/{pid}/status")


def large_png(width: int, height: int, bit_depth: int = 8) -> bytes:
    """A PNG of two bright areas on a dark background: 8-bit RGB, or 16-bit grayscale (12-bit values)."""
    from PIL import Image

    if bit_depth == 16:
        pixels = np.full((height, width), 640, dtype=np.uint16)
        pixels[height // 4 : height // 2, width // 5 : width // 2] = 3500
        pixels[height // 2 : 3 * height // 4, width // 2 : 4 * width // 5] = 3300
    else:
        pixels = np.full((height, width, 3), 40, dtype=np.uint8)
        pixels[height // 4 : height // 2, width // 5 : width // 2] = (220, 200, 190)
        pixels[height // 2 : 3 * height // 4, width // 2 : 4 * width // 5] = (200, 210, 220)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def default_checkpoint(folder: Path) -> Path:
    import torch

    from lvseg.checkpoint import save_inference_checkpoint
    from lvseg.models import create_model

    torch.manual_seed(0)
    model = create_model("lvit", img_size=224, text_encoder="learned", texts=[REPORT])
    return save_inference_checkpoint(folder / "lvit-224.ckpt", model)


def serve(args: argparse.Namespace) -> None:
    import uvicorn

    from lvseg.inference import load_model
    from lvseg.serving.app import create_app
    from lvseg.serving.uploads import ImageLimits

    segmenter = load_model(args.checkpoint, device="cpu", backend=args.backend)
    segmenter.warm_up()  # as `lvseg serve` does before it listens
    app = create_app(segmenter, image_limits=ImageLimits(max_working_side=args.max_working_side))
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


def main(argv: list[str] | None = None) -> int:
    import subprocess

    import httpx

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=None, help="checkpoint to serve (default: LViT 224)")
    parser.add_argument("--width", type=int, default=8000)
    parser.add_argument("--height", type=int, default=6000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--bit-depth", type=int, choices=(8, 16), default=8, help="8: RGB PNG; 16: grayscale PNG")
    parser.add_argument("--bursts", type=int, default=3, help="bursts of concurrent uploads, one after another")
    parser.add_argument("--backend", default="auto", help="inference backend (default auto, as `lvseg serve`)")
    parser.add_argument("--max-working-side", type=int, default=2048, help="the app's working size")
    parser.add_argument("--no-record", action="store_true")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args)
        return 0

    scratch = Path(tempfile.mkdtemp(prefix="lvseg-memory-"))
    checkpoint = args.checkpoint or default_checkpoint(scratch)
    image = large_png(args.width, args.height, args.bit_depth)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--serve",
            "--port",
            str(port),
            "--checkpoint",
            str(checkpoint),
            "--max-working-side",
            str(args.max_working_side),
            "--backend",
            args.backend,
        ]
    )
    statuses: list[int] = []
    try:
        wait_ready(url, process, 180.0)
        with httpx.Client(timeout=300.0) as client:  # warm-up with a small image
            small = large_png(256, 256)
            client.post(f"{url}/api/segment", files={"image": ("w.png", small, "image/png")}, data={"text": REPORT})
        baseline = memory_kib(process.pid, "VmRSS")

        def upload() -> None:
            with httpx.Client(timeout=600.0) as client:
                response = client.post(
                    f"{url}/api/segment", files={"image": ("big.png", image, "image/png")}, data={"text": REPORT}
                )
                statuses.append(response.status_code)

        after_bursts: list[int] = []
        walls: list[float] = []
        for _ in range(args.bursts):
            started = time.perf_counter()
            threads = [threading.Thread(target=upload) for _ in range(args.concurrency)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            walls.append(time.perf_counter() - started)
            after_bursts.append(memory_kib(process.pid, "VmRSS"))
        peak = memory_kib(process.pid, "VmHWM")
    finally:
        process.terminate()
        process.wait(timeout=30)

    kind = "16-bit grayscale" if args.bit_depth == 16 else "RGB"
    row = {
        "image": f"{args.width}x{args.height} {kind} PNG ({len(image) / 1024:.0f} KB)",
        "backend": args.backend,
        "concurrent uploads x bursts": f"{args.concurrency} x {args.bursts}",
        "working side (px)": args.max_working_side,
        "answers": ", ".join(f"{code} x{statuses.count(code)}" for code in sorted(set(statuses))),
        "RSS after warm-up (MB)": f"{baseline / 1024:.0f}",
        "RSS after each burst (MB)": ", ".join(f"{kib / 1024:.0f}" for kib in after_bursts),
        "peak RSS (MB)": f"{peak / 1024:.0f}",
        "peak - warm-up (MB)": f"{(peak - baseline) / 1024:.0f}",
        "wall per burst (s)": ", ".join(f"{wall:.1f}" for wall in walls),
    }
    table = markdown_table([row])
    print(table)
    if not args.no_record:
        append_section(
            "Server memory under concurrent large uploads",
            f"Served checkpoint: {'LViT 224 px, width 64 (random weights)' if args.checkpoint is None else args.checkpoint.name}"
            "; peak = the server process's VmHWM over all bursts (target: below 1.5 GB).\n\n" + table,
        )
    return 0 if set(statuses) == {200} else 1


if __name__ == "__main__":
    sys.exit(main())
