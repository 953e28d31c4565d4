"""Train every registered model under the same budget, evaluate with given and shuffled text, one table.

    python benchmarks/compare.py                                  # every registered model, synthetic set
    python benchmarks/compare.py --models lvit,unet --minutes 5.5
    python benchmarks/compare.py --data ../shared/datasets/MoNuSeg --img-size 224 --minutes 40
    python benchmarks/compare.py --models reclmis --text-encoder reclmis=learned   # no CLIP offline here

The synthetic set is the demo's (reports name the zones of the target lesions; distractor opacities
look alike), generated once under ``--out``. Each model is trained with ``lvseg train``'s defaults for its
recipe except the options below, which are the same for every model; the best checkpoint is evaluated
on the test split with the given reports and with reports shuffled across images. The table (Dice, IoU,
HD95, text reliance = Dice given - Dice shuffled, parameters, GFLOPs at the training size, CPU ms per
image at batch 1) is printed and appended to benchmarks/RESULTS.md. A model added to the registry gets
its row with no change here; one whose pretrained weights are not on the machine is listed as not
measured, with the reason.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_section, markdown_table


def cpu_ms_per_image(checkpoint: Path, repeats: int = 20) -> float:
    """Median wall time of one batch-1 forward (text encoding included) at model resolution, on the CPU."""
    from lvseg.inference import load_model

    segmenter = load_model(checkpoint, device="cpu")
    images = torch.rand(1, segmenter.in_channels, segmenter.img_size, segmenter.img_size)
    text = ["Bilateral pulmonary infection, two infected areas, upper left lung and lower right lung."]
    for _ in range(3):
        segmenter.probabilities(images, text, allow_empty_text=True)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        segmenter.probabilities(images, text, allow_empty_text=True)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def run(model: str, data: Path, args: argparse.Namespace) -> dict[str, object]:
    from lvseg.evaluation.evaluate import evaluate_text_reliance
    from lvseg.models import model_options
    from lvseg.models.describe import describe_model
    from lvseg.training.fit import model_config_for, train
    from lvseg.training.options import TrainConfig, parse_model_options

    out = args.out / model
    base_channels = args.base_channels if "base_channels" in model_options(model) else None
    config = TrainConfig(
        data=data,
        out=out,
        model=model,
        text_encoder=args.text_encoders.get(model),
        model_options=parse_model_options(args.model_options.get(model, [])),
        img_size=args.img_size,
        base_channels=base_channels,
        batch_size=args.batch_size,
        lr=args.lrs.get(model, args.lr),
        max_epochs=100_000,
        max_time=f"{args.minutes}m",
        patience=args.patience,
        seed=args.seed,
        augment=args.augment,
        progress_bar=False,
        resume=(out / "last.ckpt").exists(),
    )
    result = train(config)
    reliance = evaluate_text_reliance(
        result.best_checkpoint, data, split="test", out=out / "eval", modes=("given", "shuffled"), device="cpu"
    )
    given, shuffled = reliance.reports["given"].means, reliance.reports["shuffled"].means
    size = describe_model(model, **{k: v for k, v in model_config_for(config).items() if k != "text_encoder"})
    return {
        "model": model
        + (f" ({args.text_encoders[model]} text)" if model in args.text_encoders else "")
        + (f" ({', '.join(args.model_options[model])})" if model in args.model_options else ""),
        "epochs": result.epochs,
        "test Dice": f"{given['dice']:.4f}",
        "IoU": f"{given['iou']:.4f}",
        "HD95 (px)": f"{given['hd95']:.2f}",
        "Dice, shuffled text": f"{shuffled['dice']:.4f}",
        "text reliance": "n/a" if reliance.text_reliance is None else f"{reliance.text_reliance:+.4f}",
        "parameters (M)": f"{size['parameters'] / 1e6:.3f}",
        "of them training-only (M)": f"{size['training_only_parameters'] / 1e6:.3f}",
        "GFLOPs": f"{size['gflops']:.3f}",
        "CPU ms/image": f"{cpu_ms_per_image(result.best_checkpoint):.1f}",
    }


def main(argv: list[str] | None = None) -> int:
    from lvseg.models import list_models

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(list_models()), help="comma-separated registered models")
    parser.add_argument("--data", type=Path, default=None, help="an LViT-layout dataset (default: synthetic set)")
    parser.add_argument("--out", type=Path, default=Path("runs/compare"))
    parser.add_argument("--minutes", type=float, default=5.5, help="training budget per model")
    parser.add_argument("--n-images", type=int, default=1000, help="size of the synthetic set")
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--base-channels", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--patience", type=int, default=1000)
    parser.add_argument(
        "--lr", type=float, default=None, help="learning rate for every model (default: each model's recipe)"
    )
    parser.add_argument("--augment", default="rotate", help="rotate keeps the sides that reports name")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--text-encoder",
        action="append",
        default=[],
        metavar="MODEL=SPEC",
        help="a text encoder for one model instead of its default, e.g. reclmis=learned",
    )
    parser.add_argument(
        "--model-option",
        action="append",
        default=[],
        metavar="MODEL:KEY=VALUE",
        help="a model option for one model (repeatable), e.g. cris:width=16 (lvseg train's --model-option)",
    )
    parser.add_argument(
        "--lr-for", action="append", default=[], metavar="MODEL=LR", help="a learning rate for one model"
    )
    parser.add_argument("--no-record", action="store_true", help="do not append to benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    args.text_encoders = dict(item.split("=", 1) for item in args.text_encoder if "=" in item)
    args.model_options = {}
    for item in args.model_option:
        name, separator, option = item.partition(":")
        if not separator:
            parser.error(f"--model-option {item!r}: expected MODEL:KEY=VALUE")
        args.model_options.setdefault(name, []).append(option)
    args.lrs = {name: float(value) for name, _, value in (item.partition("=") for item in args.lr_for)}
    logging.basicConfig(level=logging.WARNING)
    models = [name.strip() for name in args.models.split(",") if name.strip()]
    unknown = sorted(set(models) - set(list_models()))
    if unknown:
        parser.error(f"unknown model(s) {unknown}; registered: {list_models()}")

    data = args.data
    if data is None:
        from lvseg.data.synth import generate_synthetic_dataset

        data = args.out / "synthetic"
        if not (data / "Test_Folder").is_dir():
            generate_synthetic_dataset(data, n=args.n_images, size=128, seed=args.seed)
    from lvseg.errors import LvsegError

    rows, not_measured = [], []
    for model in models:
        try:
            rows.append(run(model, data, args))
        except LvsegError as error:  # e.g. pretrained weights that are not on this machine
            not_measured.append(f"- `{model}`: not measured: {error}")
            print(f"{model}: not measured: {error}", file=sys.stderr)
    table = markdown_table(rows) + ("\n\n" + "\n".join(not_measured) if not_measured else "")
    print(table)
    if not args.no_record:
        where = "synthetic chest set" if args.data is None else f"`{args.data.name}`"
        learning_rate = "each model's recipe learning rate" if args.lr is None else f"learning rate {args.lr:g}"
        append_section(
            f"model comparison on the {where}",
            f"Same budget for every model: {args.minutes} CPU minutes of training, {args.img_size} px, base width "
            f"{args.base_channels}, batch {args.batch_size}, "
            f"{learning_rate}, "
            f"augmentation `{args.augment}`, seed {args.seed}; "
            "test split, Dice/IoU per image at threshold 0.5 at model resolution (the LViT paper's metric), "
            "HD95 in pixels; text reliance = Dice with the given reports - Dice with reports shuffled across "
            "images; GFLOPs of one batch-1 forward at the training size (text front end excluded); CPU ms/image: "
            "median of 20 batch-1 forwards through `Segmenter.probabilities` (text encoding included), run after "
            "training on the otherwise idle machine.\n\n" + table,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
