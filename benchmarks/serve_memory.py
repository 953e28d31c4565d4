"""Peak memory of the clinical app under concurrent uploads of very large images.

Starts the server in a subprocess around a checkpoint (default: an LViT at the paper's size, 224 px and
width 64, with random weights: memory does not depend on what the weights learned), warms it up, then
sends ``--concurrency`` simultaneous POST /api/segment requests, each an ``--width`` x ``--height`` RGB PNG
(small on the wire, large decoded), and reads the server's resident memory from /proc: VmRSS after the
warm-up and VmHWM (the peak) after the burst. Run once with the default working size and once with
``--max-working-side 8192`` (no reduction: what the app did before) to see the difference.

    python benchmarks/serve_memory.py
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


def large_png(width: int, height: int) -> bytes:
    from PIL import Image

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

    app = create_app(
        load_model(args.checkpoint, device="cpu"), image_limits=ImageLimits(max_working_side=args.max_working_side)
    )
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


def main(argv: list[str] | None = None) -> int:
    import subprocess

    import httpx

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=None, help="checkpoint to serve (default: LViT 224)")
    parser.add_argument("--width", type=int, default=8000)
    parser.add_argument("--height", type=int, default=6000)
    parser.add_argument("--concurrency", type=int, default=8)
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
    image = large_png(args.width, args.height)
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

        started = time.perf_counter()
        threads = [threading.Thread(target=upload) for _ in range(args.concurrency)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - started
        peak = memory_kib(process.pid, "VmHWM")
    finally:
        process.terminate()
        process.wait(timeout=30)

    row = {
        "image": f"{args.width}x{args.height} RGB PNG ({len(image) / 1024:.0f} KB)",
        "concurrent uploads": args.concurrency,
        "working side (px)": args.max_working_side,
        "answers": ", ".join(f"{code} x{statuses.count(code)}" for code in sorted(set(statuses))),
        "RSS after warm-up (MB)": f"{baseline / 1024:.0f}",
        "peak RSS (MB)": f"{peak / 1024:.0f}",
        "peak - warm-up (MB)": f"{(peak - baseline) / 1024:.0f}",
        "wall (s)": f"{wall:.1f}",
    }
    table = markdown_table([row])
    print(table)
    if not args.no_record:
        append_section(
            "Server memory under concurrent large uploads",
            f"Served checkpoint: {'LViT 224 px, width 64 (random weights)' if args.checkpoint is None else args.checkpoint.name}"
            "; peak = the server process's VmHWM after the burst (target: below 1.5 GB).\n\n" + table,
        )
    return 0 if set(statuses) == {200} else 1


if __name__ == "__main__":
    sys.exit(main())
