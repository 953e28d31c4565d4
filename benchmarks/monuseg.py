"""Train U-Net and LViT on MoNuSeg with the paper's settings under a time budget; evaluate on Test_Folder.

    python benchmarks/monuseg.py --minutes 40                 # both models, one after the other
    python benchmarks/monuseg.py --minutes 40 --models lvit   # one model
    python benchmarks/monuseg.py --minutes 40 --precision bf16-mixed --channels-last --text-encoder minilm
                                                              # the fast training path, LViT with all-MiniLM-L6-v2

Results (Dice/IoU at 224 as the LViT paper reports them, epochs reached, wall time) are printed and
appended to benchmarks/RESULTS.md beside the published figures.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_section, markdown_table

PUBLISHED = {"unet": (76.45, 62.86), "lvit": (80.36, 67.31)}
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "MoNuSeg"


def run(model: str, args: argparse.Namespace) -> dict[str, object]:
    from lvseg.evaluation.evaluate import evaluate
    from lvseg.training.fit import TrainConfig, train

    out = args.out / model
    config = TrainConfig(
        data=args.data,
        out=out,
        model=model,
        text_encoder=args.text_encoder,
        img_size=args.img_size,
        batch_size=2,
        lr=1e-3,
        max_epochs=2000,
        max_time=f"{args.minutes}m",
        patience=50,
        seed=args.seed,
        progress_bar=False,
        resume=(out / "last.ckpt").exists(),
        precision=args.precision,
        channels_last=args.channels_last,
    )
    started = time.perf_counter()
    result = train(config)
    train_minutes = (time.perf_counter() - started) / 60
    report = evaluate(result.best_checkpoint, args.data, split="test", out=out / "eval_test", text_mode="given")
    published_dice, published_iou = PUBLISHED[model]
    row = {
        "model": model,
        "text encoder": args.text_encoder if model != "unet" else "-",
        "img size": args.img_size,
        "precision": (args.precision or "32-true") + (" + channels-last" if args.channels_last else ""),
        "epochs reached": result.epochs,
        "training (min)": f"{train_minutes:.1f}",
        "best val Dice": f"{(result.best_val_dice or 0) * 100:.2f}",
        "test Dice (%)": f"{report.means['dice'] * 100:.2f}",
        "test IoU (%)": f"{report.means['iou'] * 100:.2f}",
        "published Dice / IoU (%)": f"{published_dice} / {published_iou}",
    }
    if model != "unet":
        shuffled = evaluate(result.best_checkpoint, args.data, split="test", text_mode="shuffled", model=None)
        row["test Dice, shuffled text (%)"] = f"{shuffled.means['dice'] * 100:.2f}"
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="MoNuSeg root in the LViT layout")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/monuseg"))
    parser.add_argument("--models", nargs="+", default=["unet", "lvit"], choices=sorted(PUBLISHED))
    parser.add_argument("--minutes", type=float, default=40.0, help="training budget per model")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument(
        "--text-encoder",
        default="learned",
        help="'learned', 'minilm' (packaged all-MiniLM-L6-v2) or 'hf:<id or path>' (LViT used BERT)",
    )
    parser.add_argument("--precision", default=None, help="Lightning precision, e.g. bf16-mixed (default: fp32 on CPU)")
    parser.add_argument("--channels-last", action="store_true", help="channels-last images and weights")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads for this process")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-record", action="store_true", help="print only; do not append to RESULTS.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if not args.data.is_dir():
        print(f"MoNuSeg not found at {args.data}; pass --data", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [run(model, args) for model in args.models]
    table = markdown_table(rows)
    print(table)
    if not args.no_record:
        note = (
            f"MoNuSeg, paper settings (batch 2, Adam 1e-3, cosine warm restarts, early stopping 50), "
            f"{args.minutes:g} min training budget per model, one model at a time on "
            f"{torch.get_num_threads()} torch threads, Test_Folder (14 images), threshold 0.5, per-image means."
        )
        append_section(f"MoNuSeg {', '.join(args.models)}", note + "\n\n" + table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
