"""``lvseg demo``: the main job of ``make demo``."""

from __future__ import annotations

from pathlib import Path

import typer

from lvseg.cli.output import console as make_console
from lvseg.cli.output import lvseg_command


def demo_command(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Folder for the data, runs and report."),
    n_images: int = typer.Option(1000, "--n", help="Synthetic images to generate."),
    minutes_per_model: float = typer.Option(5.5, "--minutes", help="Training budget of each model, in minutes."),
    img_size: int = typer.Option(64, "--img-size", help="Model input size (multiple of 32)."),
    base_channels: int = typer.Option(16, "--base-channels", help="Width of both networks' first level."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Generate the synthetic set, train LViT and U-Net, and report whether the text helps."""
    from lvseg.demo import DemoConfig, expectations, run_demo
    from lvseg.models.base import check_img_size

    check_img_size("--img-size", img_size)
    config = DemoConfig(
        out=out,
        n_images=n_images,
        minutes_per_model=minutes_per_model,
        img_size=img_size,
        base_channels=base_channels,
        seed=seed,
    )
    summary = run_demo(config)
    console = make_console()
    metrics, checks = summary["metrics"], summary["checks"]
    console.print(
        f"U-Net Dice {metrics['unet']['dice']:.4f} | LViT Dice {metrics['lvit']['dice']:.4f} "
        f"(shuffled reports {metrics['lvit_shuffled']['dice']:.4f})",
        highlight=False,
    )
    for sentence, met in expectations(checks):
        console.print(
            f"{sentence}: {'met' if met else 'NOT met'}", style=None if met else "bold yellow", highlight=False
        )
    console.print(f"report: {out / 'report.md'} (metrics.json, overlay_grid.png beside it)", highlight=False)
    console.print(
        f"next: {lvseg_command()} serve --checkpoint {summary['checkpoints']['lvit']}   "
        "then open http://127.0.0.1:8000 and upload an image from "
        f"{out / 'data' / 'Test_Folder' / 'img'} with its report",
        highlight=False,
    )


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_command)
