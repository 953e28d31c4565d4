"""benchmarks/semi.py end to end on a tiny synthetic set: four arms, a table per seed and the summary."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "semi.py"


def test_semi_benchmark_records_four_arms_and_a_summary(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("benchmark_semi", BENCHMARK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = tmp_path / "RESULTS.md"
    code = module.main(
        [
            "--n",
            "24",
            "--img-size",
            "32",
            "--base-channels",
            "8",
            "--batch-size",
            "4",
            "--max-epochs",
            "3",
            "--warmup-epochs",
            "1",
            "--rampup-epochs",
            "1",
            "--accelerator",
            "cpu",
            "--seeds",
            "0",
            "--out",
            str(tmp_path / "run"),
            "--results",
            str(results),
        ]
    )
    assert code == 0
    text = results.read_text(encoding="utf-8")
    rows = [line for line in text.splitlines() if line.startswith("| ") and "Dice" not in line]
    names = [row.split(" | ")[0] for row in rows]
    arms = ["| all labels", "| supervised only", "| semi-supervised", "| semi-supervised + report filter"]
    assert names == arms + arms  # the seed's table, then the summary over seeds
    assert all(" | 3 | " in row and "epoch cap" in row for row in rows[:2])  # each ran its 3 epochs
    assert all(" | 1 + 2 | " in row for row in rows[2:4])  # 1 supervised + 2 semi-supervised epochs
    assert "pseudo-label confidence 0.9" in text and "patience 15" in text and "Command: `" in text
    assert "| gap closed |" in text and "vs supervised only (points)" in text
    for kind in ("all", "supervised", "semi", "semi-filter"):
        assert (tmp_path / "run" / "seed0" / kind / "best.ckpt").is_file()
    assert (tmp_path / "run" / "seed0" / "semi" / "pseudo_labels.pt").is_file()
    assert module.main(["--out", str(tmp_path / "run")]) == 2  # refuses to overwrite earlier runs
