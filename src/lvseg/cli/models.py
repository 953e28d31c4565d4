"""Model verbs: ``lvseg info`` (size and cost of a network) and ``lvseg import-lvit`` (official weights)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from lvseg.errors import LvsegError

logger = logging.getLogger(__name__)


def describe_model(
    name: str,
    img_size: int = 224,
    base_channels: int = 64,
    in_channels: int = 3,
    n_classes: int = 1,
    text_len: int | None = None,
    text_dim: int | None = None,
) -> dict[str, Any]:
    """Parameter counts, GFLOPs of one batch-1 forward pass and expected inputs of a network.

    The network is built on the meta device, so nothing is allocated or computed; FLOPs are counted
    by ``torch.utils.flop_counter.FlopCounterMode`` (a multiply-add counts as 2 FLOPs).
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from lvseg.models import create_model

    options: dict[str, Any] = {
        "in_channels": in_channels,
        "n_classes": n_classes,
        "img_size": img_size,
        "base_channels": base_channels,
    }
    text_options = {key: value for key, value in (("text_len", text_len), ("text_dim", text_dim)) if value is not None}
    try:
        with torch.device("meta"):
            net = create_model(name, **options, **text_options)
    except TypeError as error:
        raise LvsegError(f"model {name!r} does not accept option(s) {', '.join(text_options) or error}") from error
    net.eval()
    config = dict(net.config)
    image_shape = [1, config["in_channels"], config["img_size"], config["img_size"]]
    text_shape = [1, config["text_len"], config["text_dim"]] if net.requires_text else None
    images = torch.empty(image_shape, device="meta")
    text = torch.empty(text_shape, device="meta") if text_shape else None
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        net(images, text)
    return {
        "model": name,
        "options": config,
        "parameters": sum(p.numel() for p in net.parameters()),
        "trainable_parameters": sum(p.numel() for p in net.parameters() if p.requires_grad),
        "gflops": counter.get_total_flops() / 1e9,
        "requires_text": bool(net.requires_text),
        "image_shape": image_shape,
        "text_shape": text_shape,
    }


def register(app: typer.Typer) -> None:
    @app.command("info")
    def info(
        model: str = typer.Option(..., "--model", "-m", help="Registered model name (lvit, unet, ...)."),
        img_size: int = typer.Option(224, help="Input size S (images are S x S), a multiple of 32."),
        base_channels: int = typer.Option(64, help="Width of the first level."),
        in_channels: int = typer.Option(3, help="Image channels."),
        n_classes: int = typer.Option(1, help="Output channels (logits)."),
        text_len: int | None = typer.Option(None, help="Text tokens L (text models; default: the model's)."),
        text_dim: int | None = typer.Option(None, help="Text feature size D (text models; default: the model's)."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    ) -> None:
        """Parameters, GFLOPs of one forward pass (batch 1) and expected inputs of a model."""
        report = describe_model(model, img_size, base_channels, in_channels, n_classes, text_len, text_dim)
        if as_json:
            typer.echo(json.dumps(report, indent=2))
            return
        table = Table(title=f"model {model}", show_header=False)
        table.add_column("field", style="bold")
        table.add_column("value")
        table.add_row("parameters", f"{report['parameters']:,} ({report['parameters'] / 1e6:.2f} M)")
        table.add_row("trainable", f"{report['trainable_parameters']:,}")
        table.add_row("GFLOPs (batch 1)", f"{report['gflops']:.2f} ({report['gflops'] / 2:.2f} GMACs)")
        table.add_row("image input", "x".join(map(str, report["image_shape"])))
        table.add_row("text input", "x".join(map(str, report["text_shape"])) if report["text_shape"] else "none")
        for key, value in report["options"].items():
            table.add_row(f"option {key}", str(value))
        Console().print(table)

    @app.command("import-lvit")
    def import_lvit(
        official: Path = typer.Argument(..., help="Checkpoint saved by the official LViT code (.pth)."),
        out: Path = typer.Option(..., "--out", "-o", help="Where to write the lvseg checkpoint."),
        text_encoder: str = typer.Option(
            "hf:bert-base-uncased", "--text-encoder",
            help="Frozen encoder the official model was trained with (per-token BERT-base features), or 'none'.",
        ),
    ) -> None:
        """Convert an official LViT checkpoint into an lvseg checkpoint, dropping unused weights."""
        from lvseg.models.convert import import_official_checkpoint

        spec = None if text_encoder.lower() == "none" else text_encoder
        result = import_official_checkpoint(official, out, text_encoder=spec)
        console = Console()
        console.print(f"wrote [bold]{result.output}[/] ({result.n_parameters:,} parameters)")
        console.print("inferred config: " + json.dumps(result.model_options), highlight=False)
        console.print(f"dropped {len(result.dropped_keys)} unused official keys:")
        for key in result.dropped_keys:
            console.print(f"  {key}", highlight=False)
