"""benchmarks/semi.py end to end on a tiny synthetic set: three runs, one recorded table."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "semi.py"


def test_semi_benchmark_records_three_runs(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("benchmark_semi", BENCHMARK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = tmp_path / "RESULTS.md"
    code = module.main([
        "--n", "24", "--img-size", "32", "--base-channels", "8", "--batch-size", "4", "--max-epochs", "2",
        "--seconds", "120", "--warmup-epochs", "1", "--rampup-epochs", "1", "--accelerator", "cpu",
        "--out", str(tmp_path / "run"), "--results", str(results),
    ])
    assert code == 0
    text = results.read_text(encoding="utf-8")
    rows = [line for line in text.splitlines() if line.startswith("| ") and "Dice" not in line]
    assert [row.split(" | ")[0] for row in rows] == [
        "| all labels", "| supervised only, 25% labels", "| semi-supervised (EPI + LV), 25% labels"]
    assert all(" | 2 | " in row and "max epochs" in row for row in rows)  # each ran its 2 epochs
    assert "teacher EMA decay 0.99, strong view on" in text and "Command: `" in text
    for kind in ("all", "supervised", "semi"):
        assert (tmp_path / "run" / kind / "best.ckpt").is_file()
    assert (tmp_path / "run" / "semi" / "pseudo_labels.pt").is_file()
    assert module.main(["--out", str(tmp_path / "run")]) == 2  # refuses to overwrite earlier runs
