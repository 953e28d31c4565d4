"""How often each consistency warning (lvseg.inference.consistency) fires on a checkpoint's own data, and on
images of another kind.

    python benchmarks/consistency.py --checkpoint runs/demo/lvit/best.ckpt --data runs/demo/data \\
        --foreign ../shared/datasets/MoNuSeg

For each split (``--splits``, default val and test) every image is segmented with its own report, as the
app would, and the warnings are counted: a check that fires on most in-distribution images is worse than
none. ``--foreign`` adds the images of another dataset (each with its own report) to show the
out-of-distribution check firing. A checkpoint trained before lvseg recorded the training images' statistics
gets them computed here from ``--data``'s training and validation splits (the table says so).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, append_section, markdown_table

CODES = (
    "image-unlike-training",
    "report-finding-not-found",
    "report-states-no-finding",
    "more-regions-than-report",
    "region-outside-report",
)


def count_warnings(segmenter: object, data: Path, split: str) -> tuple[int, Counter[str], list[float], list[float]]:
    """(images, {code: images it fired on}, Dice of the images with a warning, Dice of those without) for one
    split of ``data`` (Dice lists empty for images without masks)."""
    from lvseg.data.images import read_mask
    from lvseg.data.layout import load_split

    fired: Counter[str] = Counter()
    warned, clean = [], []
    samples = load_split(data, split)
    for sample in samples:
        prediction = segmenter.predict(sample.image_path, sample.text)  # type: ignore[attr-defined]
        codes = {warning.code for warning in prediction.consistency}
        fired.update(codes)
        if sample.mask_path is not None:
            truth, marked = read_mask(sample.mask_path) > 0, prediction.mask > 0
            dice = 2 * float((truth & marked).sum()) / max(float(truth.sum() + marked.sum()), 1.0)
            (warned if codes else clean).append(dice if truth.any() or marked.any() else 1.0)
    return len(samples), fired, warned, clean


def statistics_mean(values: list[float]) -> str:
    return f"{sum(values) / len(values):.3f}" if values else "-"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="the data the checkpoint was trained on")
    parser.add_argument("--name", default=None, help="the checkpoint's name in the table (default: its path)")
    parser.add_argument("--splits", nargs="+", default=["val", "test"])
    parser.add_argument("--foreign", type=Path, nargs="*", default=[], help="datasets of another kind (test split)")
    parser.add_argument("--note", default="", help="text added to the results section")
    parser.add_argument("--no-record", action="store_true", help="print only")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    from lvseg.data.input_statistics import measure_on_files
    from lvseg.data.layout import load_split
    from lvseg.inference import load_model

    segmenter = load_model(args.checkpoint, device="cpu", backend="eager")
    note = args.note
    if segmenter.input_statistics is None:
        segmenter.input_statistics = measure_on_files(
            [sample.image_path for sample in load_split(args.data, "train")],
            [sample.image_path for sample in load_split(args.data, "val")],
            segmenter.img_size,
            segmenter.in_channels,
        )
        note += (
            " The checkpoint holds no (usable) record of its training images' statistics: they were computed here from the "
            "training and validation splits of --data, as training now records them."
        )
    statistics = segmenter.input_statistics
    rows = []
    targets = [(f"{args.data.name} {split}", args.data, split) for split in args.splits]
    targets += [(f"{folder.name} test (another kind of image)", folder, "test") for folder in args.foreign]
    for label, data, split in targets:
        images, fired, warned, clean = count_warnings(segmenter, data, split)
        row: dict[str, object] = {"images": label, "n": images}
        row.update({code: f"{fired[code] / max(images, 1) * 100:.1f} %" for code in CODES})
        row["any warning"] = f"{len(warned) / max(images, 1) * 100:.1f} %" if warned or clean else ""
        row["Dice: warned / not warned"] = (
            f"{statistics_mean(warned)} / {statistics_mean(clean)}" if warned or clean else ""
        )
        rows.append(row)
        print(label, images, dict(fired), flush=True)
    table = markdown_table(rows)
    print(table)
    body = (
        f"{note.strip()} Consistency warnings of `{args.name or args.checkpoint}` (model "
        f"{segmenter.model_name}, {segmenter.img_size} px): the share of images each warning fires on, every "
        "image segmented with its own report at the model's decision threshold. Image check threshold "
        f"{statistics.threshold:.2f} (calibrated on {statistics.calibration_images} validation images, "
        f"{statistics.calibration_flagged} flagged; reference: {statistics.reference_images} training images)."
        "\n\n" + table
    ).strip()
    if not args.no_record:
        append_section(f"Consistency warnings, {args.name or args.checkpoint.parent.name}", body, path=RESULTS)
        print(f"appended to {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
