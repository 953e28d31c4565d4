"""Semi-supervised LViT at 25 % labels versus supervised-only on the same 25 %, and all labels, same budget.

    python benchmarks/semi.py                        # synthetic chest set (generated): n=200, 10 minutes per run
    python benchmarks/semi.py --data ../shared/datasets/MoNuSeg --dataset-name MoNuSeg --img-size 224 \\
        --batch-size 2 --augment paper --minutes 8 --rampup-epochs 5

Three runs, each with the same training-time budget (``--minutes`` or ``--seconds``; early stopping after
``--patience`` epochs without a better validation Dice may end a run sooner, and the table says which),
the same model, width, seed and schedule, evaluated on ``Test_Folder`` (threshold 0.5, per-image means):

* ``all labels``: every training mask;
* ``supervised, <f> labels``: only the seeded ``--fraction`` of the training images (``--supervised-only``);
* ``semi-supervised, <f> labels``: the same labeled images plus the others without masks (EPI pseudo-labels
  and the LV loss; references: the labeled images, or ``--lv-templates``).

Without ``--data`` the synthetic chest set (:mod:`lvseg.data.synth`) is generated into the run folder.
The table is printed and appended to ``--results`` (default benchmarks/RESULTS.md) with the command,
machine and date.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from datetime import datetime
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, append_section, markdown_table  # noqa: E402

log = logging.getLogger("benchmarks.semi")
RUNS = ("all", "supervised", "semi")


def _budget(args: argparse.Namespace) -> str:
    return f"{args.seconds:g}s" if args.seconds is not None else f"{args.minutes:g}m"


def run_one(kind: str, data: Path, args: argparse.Namespace) -> dict[str, object]:
    """Train one configuration under the budget and evaluate its best checkpoint on the test split."""
    from lvseg.evaluation.evaluate import evaluate
    from lvseg.training.fit import TrainConfig, train

    out = args.out / kind
    semi_options: dict[str, object] = {}
    if kind != "all":
        semi_options = dict(labeled_fraction=args.fraction, supervised_only=kind == "supervised")
    if kind == "semi":
        semi_options.update(
            lv_templates=args.lv_templates, epi_beta=args.epi_beta, warmup_epochs=args.warmup_epochs,
            rampup_epochs=args.rampup_epochs,
            unlabeled_weight=args.unlabeled_weight, lv_weight=args.lv_weight,
            teacher_decay=args.teacher_decay, strong_view=not args.no_strong_view,
        )
    config = TrainConfig(
        data=data, out=out, model=args.model, text_encoder=args.text_encoder, img_size=args.img_size,
        base_channels=args.base_channels, batch_size=args.batch_size, lr=args.lr, max_epochs=args.max_epochs,
        max_time=_budget(args), patience=args.patience, seed=args.seed, augment=args.augment,
        progress_bar=False, accelerator=args.accelerator, **semi_options,
    )
    started = time.perf_counter()
    result = train(config)
    seconds = time.perf_counter() - started
    report = evaluate(result.best_checkpoint, data, split="test", out=out / "eval_test", text_mode="given")
    labels = "100 %" if kind == "all" else f"{args.fraction:.0%}"
    name = {"all": "all labels", "supervised": f"supervised only, {labels} labels",
            "semi": f"semi-supervised (EPI{' + LV' if args.lv_weight > 0 else ''}), {labels} labels"}[kind]
    budget_seconds = args.seconds if args.seconds is not None else args.minutes * 60
    stopped = ("time budget" if seconds >= 0.98 * budget_seconds
               else "max epochs" if result.epochs >= args.max_epochs
               else f"early stopping ({args.patience} epochs)")
    return {
        "run": name,
        "epochs": result.epochs,
        "training (s)": f"{seconds:.0f}",
        "stopped by": stopped,
        "best val Dice (%)": f"{(result.best_val_dice or 0) * 100:.2f}",
        "test Dice (%)": f"{report.means['dice'] * 100:.2f}",
        "test IoU (%)": f"{report.means['iou'] * 100:.2f}",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=None, help="LViT-layout root; default: generate the synthetic set")
    parser.add_argument("--dataset-name", default=None, help="name in the results (default: synthetic or the folder)")
    parser.add_argument("--n", type=int, default=200,
                        help="synthetic images to generate (70/10/20 split; 200: 35 labeled at 25 %%, where labels are scarce)")
    parser.add_argument("--synth-size", type=int, default=None, help="synthetic image size (default: --img-size)")
    parser.add_argument("--out", type=Path, default=None, help="run folder (default runs/bench/semi-<time>)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="markdown file to append to")
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=RUNS)
    parser.add_argument("--fraction", type=float, default=0.25, help="labeled fraction of the training images")
    parser.add_argument("--model", default="lvit")
    parser.add_argument("--text-encoder", default="learned")
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--base-channels", type=int, default=16, help="width (paper: 64)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, default=10.0, help="training budget per run")
    budget.add_argument("--seconds", type=float, default=None, help="training budget per run, in seconds")
    parser.add_argument("--max-epochs", type=int, default=2000)
    parser.add_argument("--patience", type=int, default=50)
    parser.add_argument("--augment", default="rotate", help="paper, rotate or none (rotate keeps sides: reports name them)")
    parser.add_argument("--lv-templates", type=Path, default=None, help="LV templates folder (default: labeled images)")
    parser.add_argument("--epi-beta", type=float, default=0.8)
    parser.add_argument("--warmup-epochs", type=float, default=10.0, help="supervised epochs before EPI/LV start")
    parser.add_argument("--rampup-epochs", type=float, default=10.0)
    parser.add_argument("--unlabeled-weight", type=float, default=1.0)
    parser.add_argument("--lv-weight", type=float, default=0.1)
    parser.add_argument("--teacher-decay", type=float, default=0.99, help="EMA decay of the pseudo-label teacher")
    parser.add_argument("--no-strong-view", action="store_true", help="train on un-perturbed unlabeled images")
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--note", default="", help="text added to the results section (e.g. 'SMOKE RUN')")
    parser.add_argument("--no-record", action="store_true", help="print only")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out = args.out or Path("runs/bench") / f"semi-{datetime.now():%Y%m%d-%H%M%S}"
    if (args.out / "all" / "last.ckpt").exists() or (args.out / "semi" / "last.ckpt").exists():
        print(f"'{args.out}' already holds runs; choose another --out", file=sys.stderr)
        return 2

    data = args.data
    dataset_name = args.dataset_name or (data.name if data else "synthetic chest")
    if data is None:
        from lvseg.data.synth import generate_synthetic_dataset

        data = args.out / "data"
        generate_synthetic_dataset(data, n=args.n, size=args.synth_size or args.img_size, seed=args.seed)
        dataset_name += f" (n={args.n}, {args.synth_size or args.img_size} px, seed {args.seed})"
    elif not data.is_dir():
        print(f"dataset not found at {data}", file=sys.stderr)
        return 2

    rows = [run_one(kind, data, args) for kind in args.runs]
    table = markdown_table(rows)
    print(table)
    if not args.no_record:
        references = f"templates {args.lv_templates}" if args.lv_templates else "the labeled training images"
        note = (
            f"{args.note + ' ' if args.note else ''}Semi-supervised benchmark on {dataset_name}: {args.model} "
            f"(text encoder {args.text_encoder}, width {args.base_channels}, {args.img_size} px, batch "
            f"{args.batch_size}, Adam {args.lr:g}, augmentation {args.augment}), {_budget(args)} training "
            f"budget per run, labeled fraction {args.fraction:g} (seed {args.seed}); semi-supervised: EPI beta "
            f"{args.epi_beta:g}, warm-up {args.warmup_epochs:g} + ramp-up {args.rampup_epochs:g} epochs, unlabeled weight {args.unlabeled_weight:g}, "
            f"LV weight {args.lv_weight:g}, LV references: {references}, teacher EMA decay {args.teacher_decay:g}, "
            f"strong view {'off' if args.no_strong_view else 'on'}. Best checkpoint by validation Dice, "
            "evaluated on Test_Folder (threshold 0.5, per-image means at model resolution)."
        )
        append_section(f"Semi-supervised, {dataset_name}", note + "\n\n" + table, path=args.results)
        print(f"appended to {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
