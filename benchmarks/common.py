"""Helpers shared by the benchmark scripts: machine description and appending to RESULTS.md."""

from __future__ import annotations

import os
import platform
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
HEADER = """# Benchmark results

Every section was appended by a script in `benchmarks/` and states its command, machine and date.
Numbers are measured, never edited by hand; paragraphs starting "Annotation (numbers unchanged)" were
added afterwards to state run conditions the table alone does not show.
"""


def machine() -> str:
    """One line: OS, CPU count, Python and torch versions (with torch's thread count)."""
    try:
        import torch

        torch_part = f", torch {torch.__version__} ({torch.get_num_threads()} threads)"
        if torch.cuda.is_available():
            torch_part += f", GPU {torch.cuda.get_device_name(0)}"
    except ImportError:
        torch_part = ""
    cpu = platform.processor() or platform.machine()
    return f"{platform.system()} {platform.release()}, {cpu}, {os.cpu_count()} CPUs, Python {platform.python_version()}{torch_part}"


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def command_line() -> str:
    return "python " + " ".join(shlex.quote(arg) for arg in sys.argv)


def markdown_table(rows: list[dict[str, object]]) -> str:
    if not rows:
        return ""
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(row.get(key, "")) for key in keys) + " |" for row in rows]
    return "\n".join(lines)


def append_section(title: str, body: str, path: Path = RESULTS) -> Path:
    """Append ``## <date>: <title>`` with ``body``, the command and the machine to RESULTS.md."""
    existing = path.read_text(encoding="utf-8") if path.exists() else HEADER
    section = f"\n## {now()}: {title}\n\n{body.strip()}\n\nCommand: `{command_line()}`  \nMachine: {machine()}.\n"
    path.write_text(existing.rstrip("\n") + "\n" + section, encoding="utf-8")
    return path
