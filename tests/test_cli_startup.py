"""``lvseg`` starts light: ``--help`` costs about an import of torch (heavy frameworks load inside the verbs
that use them), deferred verbs load when invoked, and ``--version`` answers."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

import lvseg
from lvseg.cli.main import DEFERRED_COMMANDS, app

#: Frameworks a verb imports when it runs, never at start-up.
HEAVY = ["monai", "lightning", "pytorch_lightning", "transformers", "pandas", "uvicorn", "fastapi"]


#: Run in a fresh interpreter, with argv[1] = JSON [heavy modules, deferred verb modules]: which of them
#: ``import lvseg.cli.main`` loads, then ``lvseg --help``.
PROBE = """
import json, sys
heavy, deferred = json.loads(sys.argv[1])
from typer.testing import CliRunner
from lvseg.cli.main import app
imported = [m for m in heavy if m in sys.modules]
result = CliRunner().invoke(app, ["--help"])
assert result.exit_code == 0, result.output
print(json.dumps({"import": imported, "help": [m for m in heavy + deferred if m in sys.modules]}))
"""


def test_importing_the_cli_and_its_help_load_no_heavy_framework() -> None:
    deferred = [module for module, _ in DEFERRED_COMMANDS.values()]
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps([HEAVY, deferred])],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    assert json.loads(done.stdout) == {"import": [], "help": []}


def _fastest(command: list[str], runs: int = 3) -> float:
    """The shortest wall time of ``runs`` runs (the least disturbed by other processes on the machine)."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, capture_output=True, check=True, timeout=300)
        times.append(time.perf_counter() - started)
    return min(times)


def test_lvseg_help_takes_about_as_long_as_importing_torch() -> None:
    """A ratio, not seconds: it holds on a slow or a loaded machine. The root help lists the import verbs, which
    come from the model registry, so torch itself is paid; MONAI, Lightning and transformers (5-10x more) not."""
    torch_alone = _fastest([sys.executable, "-c", "import torch"])
    help_time = _fastest([sys.executable, "-m", "lvseg.cli.main", "--help"])
    assert help_time < 2.0 * torch_alone, f"lvseg --help {help_time:.2f} s, import torch {torch_alone:.2f} s"


def test_root_help_lists_every_verb_and_deferred_ones_by_their_own_summary() -> None:
    result = CliRunner().invoke(app, ["--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    for verb in ("train", "evaluate", "predict", "serve", "demo", "prompts", "import-lvit", "data"):
        assert f"  {verb} " in result.output, verb
    for name, (module, summary) in DEFERRED_COMMANDS.items():
        import importlib

        import typer

        holder = typer.Typer()
        importlib.import_module(module).register(holder)
        (command,) = [info for info in holder.registered_commands if info.name == name]
        assert command.callback is not None and command.callback.__doc__ is not None
        assert command.callback.__doc__.strip().splitlines()[0] == summary, name
        assert summary[:40] in result.output


@pytest.mark.parametrize("verb", list(DEFERRED_COMMANDS))
def test_a_deferred_verb_runs_and_explains_itself(verb: str) -> None:
    result = CliRunner().invoke(app, [verb, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "--data" in result.output and DEFERRED_COMMANDS[verb][1] in result.output
    result = CliRunner().invoke(app, [verb])  # a real command: its required options are asked for
    assert result.exit_code == 2 and "Missing option" in result.output


def test_version() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"lvseg {lvseg.__version__}"
    done = subprocess.run(
        [sys.executable, "-m", "lvseg.cli.main", "--version"], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0 and done.stdout.strip() == f"lvseg {lvseg.__version__}"
