"""Semi-supervised training at 25 % labels against supervised-only on the same 25 % and all labels, at convergence.

    python benchmarks/semi.py --n 200 --seeds 0 1 2          # synthetic chest set (generated per seed)
    python benchmarks/semi.py --n 1000 --seeds 0 1 2
    python benchmarks/semi.py --data ../shared/datasets/MoNuSeg --dataset-name MoNuSeg --img-size 224 \\
        --batch-size 2 --augment paper --seeds 0

Every arm trains until early stopping (``--patience`` epochs without a better validation Dice, the same for
every arm; a semi-supervised run ends its supervised phase by the same rule, then runs its semi phase until
it stops improving) under a generous cap (``--max-epochs``, ``--max-minutes``); the table says what stopped
each run, its epochs and wall time beside its Dice. Arms (``--runs``):

* ``all``: every training mask;
* ``supervised``: only the seeded ``--fraction`` of the training images (``--supervised-only``);
* ``semi``: the same labeled images plus the others without masks (supervised phase, then EPI pseudo-labels
  with the confidence mask and the LV loss);
* ``semi-filter``: ``semi`` with the report filter (``--report-filter``).

Each run's best checkpoint is evaluated on ``Test_Folder`` (threshold 0.5, per-image means). Seconds per
epoch: the semi phase's are (semi run - supervised-only run) / (semi epochs) -- the supervised phase is
the supervised-only run, step for step. A summary table gives the mean test Dice over seeds and the share
of the gap between supervised-only and all labels that semi-supervised training closes. Without ``--data``
the synthetic chest set (:mod:`lvseg.data.synth`) is generated for each seed. Each seed's table, and then the
summary, is appended to ``--results`` (default benchmarks/RESULTS.md) with the command, machine and date as
soon as it is measured. Each seed folder keeps its measurements in ``results.json``: ``--include DIR...`` adds
seed folders of other runs (e.g. seeds run as separate processes) to the summary, and ``--summarize-only``
trains nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from lvseg.files import atomic_write_text

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, append_section, markdown_table

log = logging.getLogger("benchmarks.semi")
RESULTS_FILE = "results.json"  # each seed folder's measured arms, for --include / --summarize-only
RUNS = ("all", "supervised", "semi", "semi-filter")
NAMES = {
    "all": "all labels",
    "supervised": "supervised only",
    "semi": "semi-supervised",
    "semi-filter": "semi-supervised + report filter",
}


def run_one(kind: str, data: Path, out: Path, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Train one arm until early stopping (or the cap) and evaluate its best checkpoint on the test split."""
    from lvseg.evaluation.evaluate import evaluate
    from lvseg.training.fit import TrainConfig, train

    options: dict[str, Any] = {}
    if kind != "all":
        options = dict(labeled_fraction=args.fraction, supervised_only=kind == "supervised")
    if kind.startswith("semi"):
        options.update(
            lv_templates=args.lv_templates,
            epi_beta=args.epi_beta,
            warmup_epochs=args.warmup_epochs,
            rampup_epochs=args.rampup_epochs,
            unlabeled_weight=args.unlabeled_weight,
            lv_weight=args.lv_weight,
            teacher_decay=args.teacher_decay,
            strong_view=not args.no_strong_view,
            pseudo_confidence=args.pseudo_confidence,
            report_filter=kind == "semi-filter",
        )
    config = TrainConfig(
        data=data,
        out=out / kind,
        model=args.model,
        text_encoder=args.text_encoder,
        img_size=args.img_size,
        base_channels=args.base_channels,
        batch_size=args.batch_size,
        lr=args.lr,
        max_epochs=args.max_epochs,
        max_time=f"{args.max_minutes:g}m",
        patience=args.patience,
        seed=seed,
        augment=args.augment,
        progress_bar=False,
        accelerator=args.accelerator,
        **options,
    )
    started = time.perf_counter()
    result = train(config)
    seconds = time.perf_counter() - started
    report = evaluate(result.best_checkpoint, data, split="test", out=out / kind / "eval_test", text_mode="given")
    epochs = result.epochs  # epochs completed
    stopped = (
        "time cap"
        if seconds >= 0.98 * args.max_minutes * 60
        else "epoch cap"
        if epochs >= args.max_epochs
        else "early stopping"
    )
    phases = result.phases or {}
    return {
        "kind": kind,
        "epochs": epochs,
        "seconds": seconds,
        "stopped": stopped,
        "val": result.best_val_dice or 0.0,
        "test_dice": report.means["dice"],
        "test_iou": report.means["iou"],
        "semi_start": phases.get("semi_start_epoch"),
        "best_phase": phases.get("best_checkpoint_phase"),
    }


def seed_rows(results: list[dict[str, Any]]) -> list[dict[str, object]]:
    """The per-seed table: one row per arm, with seconds per epoch of each phase."""
    supervised = next((r for r in results if r["kind"] == "supervised"), None)
    rows = []
    for r in results:
        epochs = f"{r['epochs']}"
        per_epoch = f"{r['seconds'] / max(r['epochs'], 1):.2f}"
        if r["semi_start"] is not None:
            semi_epochs = r["epochs"] - r["semi_start"]
            epochs = f"{r['semi_start']} + {semi_epochs}"
            if supervised is not None and semi_epochs > 0:
                per_epoch = f"{(r['seconds'] - supervised['seconds']) / semi_epochs:.2f} (semi phase)"
        rows.append(
            {
                "run": NAMES[r["kind"]],
                "epochs": epochs,
                "training (s)": f"{r['seconds']:.0f}",
                "s / epoch": per_epoch,
                "stopped by": r["stopped"],
                "best from": r["best_phase"] or "",
                "best val Dice (%)": f"{r['val'] * 100:.2f}",
                "test Dice (%)": f"{r['test_dice'] * 100:.2f}",
                "test IoU (%)": f"{r['test_iou'] * 100:.2f}",
            }
        )
    return rows


def summary_rows(by_seed: dict[int, list[dict[str, Any]]]) -> list[dict[str, object]]:
    """Mean test Dice per arm over the seeds, each arm's difference to supervised-only, and the gap closed."""
    means = {
        kind: statistics.mean(r["test_dice"] for results in by_seed.values() for r in results if r["kind"] == kind)
        for kind in RUNS
        if any(r["kind"] == kind for results in by_seed.values() for r in results)
    }
    rows = []
    for kind, mean in means.items():
        row: dict[str, object] = {
            "run": NAMES[kind],
            "seeds": sum(any(r["kind"] == kind for r in results) for results in by_seed.values()),
            "mean test Dice (%)": f"{mean * 100:.2f}",
            "vs supervised only (points)": "",
            "gap closed": "",
        }
        if "supervised" in means and kind != "supervised":
            row["vs supervised only (points)"] = f"{(mean - means['supervised']) * 100:+.2f}"
            gap = means.get("all", float("nan")) - means["supervised"]
            if kind.startswith("semi") and "all" in means and abs(gap) > 1e-9:
                row["gap closed"] = f"{(mean - means['supervised']) / gap * 100:.0f} %"
        rows.append(row)
    return rows


def _describe(args: argparse.Namespace, dataset_name: str) -> str:
    references = f"templates {args.lv_templates}" if args.lv_templates else "the labeled training images"
    warmup = "until early stopping" if args.warmup_epochs is None else f"{args.warmup_epochs:g} epochs"
    return (
        f"{args.note + ' ' if args.note else ''}Semi-supervised benchmark at convergence on {dataset_name}: "
        f"{args.model} (text encoder {args.text_encoder}, width {args.base_channels}, {args.img_size} px, batch "
        f"{args.batch_size}, Adam {args.lr:g}, augmentation {args.augment}); every arm until early stopping "
        f"(patience {args.patience}; caps {args.max_epochs} epochs, {args.max_minutes:g} minutes); labeled fraction "
        f"{args.fraction:g}; semi-supervised: supervised phase {warmup}, then EPI beta {args.epi_beta:g}, pseudo-label "
        f"confidence {args.pseudo_confidence:g}, ramp-up {args.rampup_epochs:g} epochs, unlabeled weight "
        f"{args.unlabeled_weight:g}, LV weight {args.lv_weight:g} (references: {references}), teacher EMA decay "
        f"{args.teacher_decay:g}, strong view {'off' if args.no_strong_view else 'on'}. Best checkpoint by validation "
        "Dice, evaluated on Test_Folder (threshold 0.5, per-image means at model resolution); torch threads "
        f"{torch.get_num_threads()}."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=None, help="LViT-layout root; default: generate the synthetic set")
    parser.add_argument("--dataset-name", default=None, help="name in the results (default: synthetic or the folder)")
    parser.add_argument(
        "--n",
        type=int,
        default=200,
        help="synthetic images to generate (70/10/20 split; 200: 35 labeled at 25 %%, where labels are scarce)",
    )
    parser.add_argument("--synth-size", type=int, default=None, help="synthetic image size (default: --img-size)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds (data, split, initialisation)")
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
    parser.add_argument("--patience", type=int, default=15, help="early stopping, the same for every arm and phase")
    parser.add_argument("--max-epochs", type=int, default=400, help="cap per run")
    parser.add_argument("--max-minutes", type=float, default=45.0, help="cap per run")
    parser.add_argument(
        "--augment", default="rotate", help="paper, rotate or none (rotate keeps sides: reports name them)"
    )
    parser.add_argument("--lv-templates", type=Path, default=None, help="LV templates folder (default: labeled images)")
    parser.add_argument("--epi-beta", type=float, default=0.8)
    parser.add_argument(
        "--warmup-epochs", type=float, default=None, help="supervised phase length (default: until early stopping)"
    )
    parser.add_argument("--rampup-epochs", type=float, default=5.0)
    parser.add_argument("--unlabeled-weight", type=float, default=1.0)
    parser.add_argument("--lv-weight", type=float, default=0.1)
    parser.add_argument("--pseudo-confidence", type=float, default=0.9)
    parser.add_argument("--teacher-decay", type=float, default=0.99, help="EMA decay of the pseudo-label teacher")
    parser.add_argument("--no-strong-view", action="store_true", help="train on un-perturbed unlabeled images")
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--note", default="", help="text added to the results section (e.g. 'SMOKE RUN')")
    parser.add_argument("--no-record", action="store_true", help="print only")
    parser.add_argument(
        "--include",
        type=Path,
        nargs="*",
        default=[],
        help="seed folders of other runs (seedN/ with a results.json) to add to the summary; folders of one seed "
        "merge arm by arm",
    )
    parser.add_argument(
        "--summarize-only", action="store_true", help="train nothing: summarise --include (and --out's seed folders)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out = args.out or Path("runs/bench") / f"semi-{datetime.now():%Y%m%d-%H%M%S}"
    if any(args.out.glob("seed*/*/last.ckpt")) and not args.summarize_only:
        print(f"'{args.out}' already holds runs; choose another --out", file=sys.stderr)
        return 2
    if args.data is not None and not args.data.is_dir():
        print(f"dataset not found at {args.data}", file=sys.stderr)
        return 2

    by_seed: dict[int, list[dict[str, Any]]] = {}
    base_name = args.dataset_name or (args.data.name if args.data else "synthetic chest")
    for folder in [*args.include, *(sorted(args.out.glob("seed*")) if args.summarize_only else [])]:
        # Folders of one seed merge arm by arm (arms of one seed may run as separate processes).
        merged = {r["kind"]: r for r in by_seed.get(int(folder.name.removeprefix("seed")), [])}
        merged |= {r["kind"]: r for r in json.loads((folder / RESULTS_FILE).read_text(encoding="utf-8"))}
        by_seed[int(folder.name.removeprefix("seed"))] = [merged[kind] for kind in RUNS if kind in merged]
    for seed in [] if args.summarize_only else args.seeds:
        out = args.out / f"seed{seed}"
        data, name = args.data, base_name
        if data is None:
            from lvseg.data.synth import generate_synthetic_dataset

            data = out / "data"
            generate_synthetic_dataset(data, n=args.n, size=args.synth_size or args.img_size, seed=seed)
            name += f" (n={args.n}, {args.synth_size or args.img_size} px)"
        by_seed[seed] = []
        for kind in args.runs:  # results.json after each arm: a run stopped later keeps what it measured
            by_seed[seed].append(run_one(kind, data, out, seed, args))
            atomic_write_text(out / RESULTS_FILE, json.dumps(by_seed[seed], indent=1))
        table = markdown_table(seed_rows(by_seed[seed]))
        print(table)
        if not args.no_record:
            append_section(
                f"Semi-supervised at convergence, {name}, seed {seed}",
                _describe(args, f"{name}, seed {seed}") + "\n\n" + table,
                path=args.results,
            )
    if args.summarize_only and not args.no_record:  # each seed's table, rebuilt from its results.json
        for seed in sorted(by_seed):
            append_section(
                f"Semi-supervised at convergence, {base_name}"
                + (f" (n={args.n}, {args.synth_size or args.img_size} px)" if args.data is None else "")
                + f", seed {seed} (table rebuilt from results.json)",
                _describe(args, f"{base_name}, seed {seed}") + "\n\n" + markdown_table(seed_rows(by_seed[seed])),
                path=args.results,
            )
    summary = markdown_table(summary_rows(by_seed))
    print(summary)
    if not args.no_record:
        seeds = ", ".join(str(seed) for seed in sorted(by_seed))
        name = base_name + (f" (n={args.n}, {args.synth_size or args.img_size} px)" if args.data is None else "")
        append_section(
            f"Semi-supervised at convergence, {name}, mean over seeds {seeds}",
            _describe(args, name) + "\n\n" + summary,
            path=args.results,
        )
        print(f"appended to {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
