"""The main job end to end at a tiny size: files, report content and the expectation checks."""

import json

from lvseg.demo import DemoConfig, run_demo


def test_demo_writes_report_metrics_and_grid(tmp_path):
    out = tmp_path / "demo"
    config = DemoConfig(
        out=out,
        n_images=24,
        image_size=64,
        img_size=32,
        base_channels=8,
        batch_size=4,
        minutes_per_model=0.03,
        grid_cases=2,
    )
    summary = run_demo(config)

    saved = json.loads((out / "metrics.json").read_text())
    assert saved["checks"] == summary["checks"]
    for key in ("unet", "lvit", "lvit_shuffled", "lvit_empty"):
        assert 0.0 <= saved["metrics"][key]["dice"] <= 1.0
    gain = saved["metrics"]["lvit"]["dice"] - saved["metrics"]["unet"]["dice"]
    assert abs(saved["checks"]["gain_over_unet"] - gain) < 1e-9
    assert saved["checks"]["gain_met"] == (gain >= 0.15)

    report = (out / "report.md").read_text()
    assert "LViT minus U-Net Dice" in report and "Text reliance" in report
    assert (out / "overlay_grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "lvit" / "best.ckpt").is_file() and (out / "unet" / "best.ckpt").is_file()
