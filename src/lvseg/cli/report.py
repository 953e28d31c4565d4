"""``lvseg report parse``: what the report grammar reads in a report (C2FVL's vector, the findings)."""

from __future__ import annotations

import json

import typer

from lvseg.cli.output import console as make_console
from lvseg.errors import LvsegError

report_app = typer.Typer(help="Read reports with the report grammar.", no_args_is_help=True, rich_markup_mode=None)


@report_app.command("parse")
def parse(
    text: str = typer.Argument(
        ...,
        help="A report, e.g. 'Bilateral pulmonary infection, two infected areas, all left lung and upper right lung.'",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Print the 8-value report vector (bilateral, number, lupper ... rlower) and the findings of a report."""
    from lvseg.data.reports import REPORT_VECTOR_FIELDS, ReportError, read_report, render_report, report_vector

    try:
        findings, bilateral = read_report(text)
    except ReportError as error:
        raise LvsegError(str(error)) from None
    vector = report_vector(findings, bilateral)
    result = {
        "vector": vector,
        "fields": list(REPORT_VECTOR_FIELDS),
        "bilateral": bilateral,
        "areas": findings.count,
        "left": [zone for zone in ("upper", "middle", "lower") if zone in findings.left],
        "right": [zone for zone in ("upper", "middle", "lower") if zone in findings.right],
        "canonical_report": render_report(findings),
    }
    if as_json:
        typer.echo(json.dumps(result))
        return
    console = make_console()
    for field, value in zip(REPORT_VECTOR_FIELDS, vector):
        console.print(f"{field:>9}  {value:g}", highlight=False)
    console.print(f"canonical: {result['canonical_report']}", highlight=False)


def register(app: typer.Typer) -> None:
    app.add_typer(report_app, name="report")
