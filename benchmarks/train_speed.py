"""Training speed: fp32 against bf16-mixed + channels-last (and torch.compile), same steps and data, then val Dice.

For each model and batch size, ``lvseg train`` (the library's ``train``) runs ``--steps`` training steps on
the synthetic chest set at ``--img-size`` in fp32 (``precision 32-true``) and in ``bf16-mixed`` with
``--channels-last``, from the same seed. A callback times every training step (the first ``--skip`` are
warm-up and not counted); after the steps, one validation pass gives the Dice. The table (step time,
images/s, ratio, validation Dice of both) is printed and appended to benchmarks/RESULTS.md.

    python benchmarks/train_speed.py                       # LViT and U-Net, batch 2 (paper) and 8, 224 px
    python benchmarks/train_speed.py --models lvit --batches 2 --steps 20
    python benchmarks/train_speed.py --modes fp32,fast,compile   # torch.compile on top of the fast path
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_section, markdown_table

MODES = {
    "fp32": {"precision": "32-true"},
    "bf16-mixed + channels-last": {"precision": "bf16-mixed", "channels_last": True},
    "bf16-mixed + channels-last + compile": {"precision": "bf16-mixed", "channels_last": True, "compile": True},
}
MODE_NAMES = {"fp32": "fp32", "fast": "bf16-mixed + channels-last", "compile": "bf16-mixed + channels-last + compile"}


def run(model: str, batch: int, steps: int, skip: int, img_size: int, data: Path, mode: str) -> dict[str, object]:
    import lightning as L

    from lvseg.training import fit
    from lvseg.training.options import TrainConfig

    times: list[float] = []

    class StepTimer(L.Callback):
        def on_train_batch_start(self, trainer, module, batch_, batch_idx) -> None:
            self.started = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch_, batch_idx) -> None:
            times.append(time.perf_counter() - self.started)

    original = fit._make_trainer

    def with_timer(**options):
        options["callbacks"] = [*options.get("callbacks", []), StepTimer()]
        return original(**options)

    fit._make_trainer = with_timer
    try:
        out = Path(tempfile.mkdtemp(prefix="lvseg-train-speed-")) / "run"
        result = fit.train(
            TrainConfig(
                data=data,
                out=out,
                model=model,
                img_size=img_size,
                batch_size=batch,
                max_epochs=1,
                seed=0,
                limit_train_batches=steps,
                augment="none",
                progress_bar=False,
                text_encoder="learned" if model != "unet" else None,
                **MODES[mode],
            )
        )
    finally:
        fit._make_trainer = original
    step = statistics.median(times[skip:]) if len(times) > skip else float("nan")
    return {
        "model": model,
        "batch": batch,
        "mode": mode,
        "step s": step,
        "images/s": batch / step,
        "val Dice": result.best_val_dice,
        "steps": len(times),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="lvit,unet")
    parser.add_argument("--batches", default="2,8")
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--skip", type=int, default=4, help="warm-up steps not timed")
    parser.add_argument(
        "--modes",
        default="fp32,fast",
        help="fp32, fast (bf16-mixed + channels-last), compile "
        "(fast + torch.compile); the first is the reference of the ratio",
    )
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--n-images", type=int, default=240, help="synthetic images (train/val/test split)")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.modes.split(",")) - set(MODE_NAMES))
    if unknown:
        parser.error(f"--modes: unknown mode(s) {', '.join(unknown)}; expected {', '.join(MODE_NAMES)}")

    from lvseg.data.synth import generate_synthetic_dataset

    data = Path(tempfile.mkdtemp(prefix="lvseg-train-speed-data-")) / "data"
    generate_synthetic_dataset(data, n=args.n_images, size=args.img_size, seed=0)
    rows = []
    for model in args.models.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            runs = [
                run(model, batch, args.steps, args.skip, args.img_size, data, MODE_NAMES[mode])
                for mode in args.modes.split(",")
            ]
            reference = runs[0]
            for row in runs:
                rows.append(
                    {
                        **row,
                        "step s": f"{row['step s']:.3f}",
                        "images/s": f"{row['images/s']:.2f}",
                        "ratio": f"{reference['step s'] / row['step s']:.2f}x",
                        "val Dice": "-" if row["val Dice"] is None else f"{row['val Dice']:.4f}",
                    }
                )
                print(rows[-1], flush=True)
    table = markdown_table(rows)
    print(table)
    if not args.no_record:
        append_section(
            "Training speed: " + " vs ".join(MODE_NAMES[mode] for mode in args.modes.split(",")),
            f"`lvseg.training.fit.train` on the synthetic chest set at {args.img_size} px, {args.steps} training steps "
            f"per run from seed 0 (median step time after {args.skip} warm-up steps, forward + backward + optimiser), "
            "no augmentation, then one validation pass (val Dice after the same steps). CPU; GPU: not measured "
            "(no GPU lent to this session).\n\n" + table,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
