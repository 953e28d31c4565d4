"""Record the main job (`lvseg demo`) in benchmarks/RESULTS.md.

python benchmarks/demo.py                          # runs the demo into runs/demo, then records it
python benchmarks/demo.py --from-run runs/demo     # records a finished demo run's metrics.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_section, markdown_table


def summary_table(summary: dict) -> str:
    metrics, epochs = summary["metrics"], summary["epochs"]
    rows = []
    for key, model, text in (
        ("unet", "U-Net", "-"),
        ("lvit", "LViT", "given"),
        ("lvit_shuffled", "LViT", "shuffled"),
        ("lvit_empty", "LViT", "empty"),
    ):
        values = metrics[key]
        rows.append(
            {
                "model": model,
                "text at test": text,
                "Dice": f"{values['dice']:.4f}",
                "IoU": f"{values['iou']:.4f}",
                "Dice (orig. res.)": f"{values['dice_original']:.4f}",
                "HD95 (px)": f"{values['hd95']:.2f}",
                "epochs": epochs["unet" if key == "unet" else "lvit"],
            }
        )
    return markdown_table(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from-run", type=Path, help="a finished demo folder holding metrics.json")
    parser.add_argument("--out", type=Path, default=Path("runs/demo"))
    parser.add_argument("--note", default="", help="how the run was made, added to the section (e.g. threads, load)")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.from_run:
        summary = json.loads((args.from_run / "metrics.json").read_text())
    else:
        from lvseg.demo import DemoConfig, run_demo

        summary = run_demo(DemoConfig(out=args.out))
    config, checks = summary["config"], summary["checks"]
    note = (
        f"`lvseg demo` (the main job of `make demo`): {config['n_images']} synthetic chest images generated at "
        f"{config['image_size']} px, models at {config['img_size']} px with base width {config['base_channels']}, "
        f"batch {config['batch_size']}, {config['minutes_per_model']} min of training per model, augmentation "
        f"'{config['augment']}'; test split. LViT - U-Net Dice: {checks['gain_over_unet']:+.4f} (expected >= +0.15); "
        f"text reliance Dice(given) - Dice(shuffled): {checks['text_reliance']:+.4f} (expected >= 0.15). "
        f"Wall time {summary['seconds']['total'] / 60:.1f} min. {args.note}"
    )
    table = summary_table(summary)
    print(table)
    if not args.no_record:
        append_section("demo (synthetic chest set, LViT vs U-Net)", note + "\n\n" + table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
