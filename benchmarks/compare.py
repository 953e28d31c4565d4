"""Train every registered model under the same budget, evaluate with given and shuffled text, one table.

    python benchmarks/compare.py                                  # every registered model, synthetic set
    python benchmarks/compare.py --models lvit,unet --minutes 5.5
    python benchmarks/compare.py --data ../shared/datasets/MoNuSeg --img-size 224 --minutes 40
    python benchmarks/compare.py --models reclmis --text-encoder reclmis=learned   # no CLIP offline here
    python benchmarks/compare.py --multi-class                    # LViT and U-Net, synthetic disc/ring/bar set

The synthetic set is the demo's (reports name the zones of the target lesions; distractor opacities
look alike), generated once under ``--out``. Each model is trained with ``lvseg train``'s defaults for its
recipe except the options below, which are the same for every model; the best checkpoint is evaluated
on the test split with the given reports and with reports shuffled across images. The table (Dice, IoU,
HD95, text reliance = Dice given - Dice shuffled, parameters, GFLOPs at the training size, CPU ms per
image at batch 1) is printed and appended to benchmarks/RESULTS.md. A model added to the registry gets
its row with no change here; one whose pretrained weights are not on the machine is listed as not
measured, with the reason.

``--multi-class``: the synthetic multi-class set (:mod:`lvseg.data.synth_classes`: a disc, a ring and a bar of
one intensity, size range and placement in every image, so only the prompt says which one is asked for),
generated once under ``--out`` (or a multi-class ``--data``), default models ``lvit,unet``. A text model trains
on one (image, prompt, binary mask) sample per class; a model declaring ``multi_channel_classes`` (U-Net) on one
sample per image with one output channel per class. Both are scored on the same (image, class) test samples:
Dice per class and their mean (an empty prediction on an absent class scores 1), and for a text model the
class-swap reliance (:mod:`lvseg.evaluation.class_swap`: Dice with another present class's prompt against that
class's mask, minus against the original class's; near 1 when the model segments what it is asked for).

Every run writes ``<out>/results.json`` (the table's rows and, in the multi-class mode, each model's per-class
metrics and class-swap summary).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_section, markdown_table

if TYPE_CHECKING:
    from lvseg.training.options import TrainConfig


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


def train_config(model: str, data: Path, args: argparse.Namespace, **data_options: Any) -> TrainConfig:
    """The same training options for every model (its recipe's for the rest); ``data_options``: how to read a
    multi-class set (``modality``, ...)."""
    from lvseg.models import model_options
    from lvseg.training.options import TrainConfig, parse_model_options

    out = args.out / model
    base_channels = args.base_channels if "base_channels" in model_options(model) else None
    return TrainConfig(
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
        tune_backends=False,  # the comparison measures accuracy; backend tuning would take minutes of the run
        **data_options,
    )


def model_label(model: str, args: argparse.Namespace) -> str:
    return (
        model
        + (f" ({args.text_encoders[model]} text)" if model in args.text_encoders else "")
        + (f" ({', '.join(args.model_options[model])})" if model in args.model_options else "")
    )


def run(model: str, data: Path, args: argparse.Namespace) -> dict[str, object]:
    from lvseg.evaluation.evaluate import evaluate_text_reliance
    from lvseg.inference import load_model
    from lvseg.models.describe import describe_built_model
    from lvseg.training.fit import train

    config = train_config(model, data, args)
    out = args.out / model
    result = train(config)
    reliance = evaluate_text_reliance(
        result.best_checkpoint, data, split="test", out=out / "eval", modes=("given", "shuffled"), device="cpu"
    )
    given, shuffled = reliance.reports["given"].means, reliance.reports["shuffled"].means
    size = describe_built_model(load_model(result.best_checkpoint, device="cpu").model)
    return {
        "model": model_label(model, args),
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


def _dice(value: float | None) -> str:
    return "-" if value is None or value != value else f"{value:.4f}"


def run_classes(model: str, data: Path, args: argparse.Namespace) -> tuple[dict[str, object], dict[str, object]]:
    """Train ``model`` on the multi-class set and score it per class on the test split: (table row, raw record)."""
    from lvseg.data.formats import DataOptions
    from lvseg.evaluation.class_swap import evaluate_class_swap
    from lvseg.evaluation.classes import class_mean, class_summary_json
    from lvseg.evaluation.evaluate import evaluate_modes, evaluate_text_reliance
    from lvseg.inference import load_model
    from lvseg.models import model_class
    from lvseg.models.describe import describe_built_model
    from lvseg.training.fit import train

    config = train_config(model, data, args, modality=args.modality)
    out = args.out / model
    result = train(config)
    segmenter = load_model(result.best_checkpoint, device="cpu")
    options = DataOptions(modality=args.modality, seed=args.seed)
    evaluation = {"split": "test", "out": out / "eval", "device": "cpu", "model": segmenter, "data_options": options}
    text_reliance = swap = None
    if segmenter.requires_text:
        combined = evaluate_text_reliance(result.best_checkpoint, data, modes=("given", "shuffled"), **evaluation)
        given, text_reliance = combined.reports["given"], combined.text_reliance
        swap = evaluate_class_swap(
            result.best_checkpoint, data, split="test", out=out / "eval", model=segmenter, data_options=options
        )
    else:
        given = evaluate_modes(result.best_checkpoint, data, modes=("given",), **evaluation)["given"]
    mean = class_mean(given.per_class)
    size = describe_built_model(segmenter.model)
    reliance = None if swap is None else swap.class_swap_reliance
    row: dict[str, object] = {
        "model": model_label(model, args),
        "targets": f"{segmenter.output_classes} channels" if segmenter.output_classes > 1 else "one class per prompt",
        "epochs": result.epochs,
        **{f"Dice {name}": _dice(values["dice"]) for name, values in given.per_class.items()},
        "mean Dice": _dice(mean["dice"]),
        "mean IoU": _dice(mean["iou"]),
        "class-swap reliance": "n/a" if reliance is None else f"{reliance:+.4f}",
        "text reliance": "n/a" if text_reliance is None else f"{text_reliance:+.4f}",
        "parameters (M)": f"{size['parameters'] / 1e6:.3f}",
        "GFLOPs": f"{size['gflops']:.3f}",
    }
    record: dict[str, object] = {
        "model": model,
        "checkpoint": str(result.best_checkpoint),
        "epochs": result.epochs,
        "output_classes": segmenter.output_classes,
        "multi_channel_classes": model_class(model).multi_channel_classes,
        "n_samples": given.n_images,
        **class_summary_json(given.per_class),
        "text_reliance": text_reliance,
        "class_swap": None if swap is None else swap.to_json(),
    }
    logging.getLogger(__name__).warning(
        "%s: mean Dice %s, per class %s, class-swap reliance %s",
        model,
        _dice(mean["dice"]),
        ", ".join(f"{name} {_dice(values['dice'])}" for name, values in given.per_class.items()),
        "n/a" if reliance is None else f"{reliance:+.4f}",
    )
    return row, record


def _multi_class_data(args: argparse.Namespace) -> Path:
    """``--data`` (a multi-class set) or the synthetic disc/ring/bar set, generated once under ``--out``."""
    from lvseg.data.synth_classes import generate_multiclass_dataset

    if args.data is not None:
        return Path(args.data)
    data = args.out / "synthetic_classes"
    if not (data / "Test_Folder").is_dir():
        generate_multiclass_dataset(data, n=args.n_images, size=args.synth_size, seed=args.seed)
    return data


def main(argv: list[str] | None = None) -> int:
    from lvseg.models import list_models

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--models",
        default=None,
        help="comma-separated registered models (default: every one; --multi-class: lvit,unet)",
    )
    parser.add_argument(
        "--multi-class",
        action="store_true",
        help="the synthetic disc/ring/bar set (or a multi-class --data): Dice per class, class-swap reliance",
    )
    parser.add_argument("--synth-size", type=int, default=128, help="side of the generated synthetic images, in pixels")
    parser.add_argument(
        "--modality",
        default=None,
        help="--multi-class: the modality of the per-class prompts (default: the synthetic set's)",
    )
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
    if args.models is None:
        args.models = "lvit,unet" if args.multi_class else ",".join(list_models())
    if args.modality is None:
        from lvseg.data.synth_classes import MODALITY

        args.modality = MODALITY if args.data is None else "image"
    models = [name.strip() for name in args.models.split(",") if name.strip()]
    unknown = sorted(set(models) - set(list_models()))
    if unknown:
        parser.error(f"unknown model(s) {unknown}; registered: {list_models()}")

    if args.multi_class:
        return main_classes(models, args)
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
    write_results(args, {"mode": "binary", "data": str(data), "rows": rows, "not_measured": not_measured})
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


def write_results(args: argparse.Namespace, results: dict[str, object]) -> Path:
    """``<out>/results.json``: the options, then ``results``."""
    path = args.out / "results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    options = {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}
    path.write_text(json.dumps({"options": options, **results}, indent=2) + "\n", encoding="utf-8")
    return path


def main_classes(models: list[str], args: argparse.Namespace) -> int:
    """``--multi-class``: train, score per class and record (see the module docstring)."""
    from lvseg.errors import LvsegError

    data = _multi_class_data(args)
    rows, records, not_measured = [], [], []
    for model in models:
        try:
            row, record = run_classes(model, data, args)
        except LvsegError as error:
            not_measured.append(f"- `{model}`: not measured: {error}")
            print(f"{model}: not measured: {error}", file=sys.stderr)
            continue
        rows.append(row)
        records.append(record)
    table = markdown_table(rows) + ("\n\n" + "\n".join(not_measured) if not_measured else "")
    print(table)
    path = write_results(args, {"mode": "multi-class", "data": str(data), "rows": rows, "models": records})
    print(f"results: {path}")
    if not args.no_record:
        where = "synthetic disc/ring/bar set" if args.data is None else f"multi-class set `{args.data.name}`"
        learning_rate = "each model's recipe learning rate" if args.lr is None else f"learning rate {args.lr:g}"
        size = f"{args.n_images} images of {args.synth_size} px, " if args.data is None else ""
        append_section(
            f"multi-class model comparison on the {where}",
            f"Same budget for every model: {args.minutes} CPU minutes of training, {size}trained at {args.img_size} "
            f"px, base width {args.base_channels}, batch {args.batch_size}, {learning_rate}, augmentation "
            f"`{args.augment}`, seed {args.seed}, prompts `random` (modality '{args.modality}'), every absent class a "
            "negative sample. Text models train on one (image, prompt, binary mask) sample per class; U-Net "
            "(`multi_channel_classes`) on one sample per image with one output channel per class. Both are scored "
            "on the same (image, class) test samples at threshold 0.5 at model resolution: Dice per class and "
            "their mean (an empty prediction on an absent class scores 1); class-swap reliance = mean Dice of the "
            "output with another present class's prompt against that class's mask - against the original "
            "class's mask (text models only); text reliance = Dice given - Dice with prompts shuffled across "
            "samples.\n\n" + table,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
