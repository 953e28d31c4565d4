"""``lvseg export``: a checkpoint as an ONNX or OpenVINO model with its preprocessing described."""

from __future__ import annotations

from pathlib import Path

import typer

from lvseg.cli.output import console
from lvseg.files import check_output


def export_command(
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help="An lvseg checkpoint (.ckpt)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the exported model and lvseg_export.json."),
    fmt: str = typer.Option("onnx", "--format", help="onnx (ONNX Runtime and others) or openvino (IR)."),
) -> None:
    """Export a trained model for deployment: the network (and a learned text encoder) as ONNX/OpenVINO,
    and a manifest saying how to prepare the image and the text inputs."""
    from lvseg.inference.export import export_model

    check_output(out, "--out", "folder", "for the exported model and lvseg_export.json")
    manifest = export_model(checkpoint, out, fmt)
    console().print(f"exported to {out} (manifest {manifest.name})", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("export")(export_command)
