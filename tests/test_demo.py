"""The main job end to end at a tiny size: files, report content and the expectation checks."""

import json

from lvseg.demo import DemoConfig, run_demo


def test_demo_writes_report_metrics_and_grid(tmp_path, caplog):
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
    with caplog.at_level("WARNING", logger="lvseg.demo"):
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
    unmet = [message for message in caplog.messages if "demo expectation NOT met" in message]
    assert len(unmet) == (not saved["checks"]["gain_met"]) + (not saved["checks"]["reliance_met"])


def _summary(out, gain: float, reliance: float) -> dict:
    return {
        "metrics": {
            "unet": {"dice": 0.5},
            "lvit": {"dice": 0.5 + gain},
            "lvit_shuffled": {"dice": 0.5 + gain - reliance},
        },
        "checks": {
            "gain_over_unet": gain,
            "gain_met": gain >= 0.15,
            "text_reliance": reliance,
            "reliance_met": reliance >= 0.15,
        },
        "checkpoints": {"lvit": str(out / "lvit" / "best.ckpt"), "unet": str(out / "unet" / "best.ckpt")},
    }


def test_the_console_says_when_the_expectations_are_not_met_and_how_to_serve(tmp_path, monkeypatch, capsys):
    """``make demo`` runs .venv/bin/lvseg with the venv inactive: the suggested command must be that script."""
    import sys

    import pytest

    import lvseg.demo
    from lvseg.cli.main import main

    script = tmp_path / ".venv" / "bin" / "lvseg"
    script.parent.mkdir(parents=True)
    script.write_text("#!/bin/sh\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    out = tmp_path / "runs"
    for gain, reliance in ((0.05, 0.30), (0.30, 0.30)):
        monkeypatch.setattr(lvseg.demo, "run_demo", lambda config, g=gain, r=reliance: _summary(config.out, g, r))
        monkeypatch.setattr(sys, "argv", [".venv/bin/lvseg", "demo", "--out", str(out)])
        with pytest.raises(SystemExit) as exited:
            main()
        assert exited.value.code == 0
        lines = capsys.readouterr().out.splitlines()
        gain_line = next(line for line in lines if line.startswith("LViT minus U-Net Dice"))
        reliance_line = next(line for line in lines if line.startswith("Text reliance"))
        if gain < 0.15:
            assert gain_line.endswith("+0.0500 (expected at least +0.15): NOT met")
        else:
            assert gain_line.endswith(": met")
        assert reliance_line.endswith(": met")
        (suggestion,) = [line for line in lines if line.startswith("next:")]
        assert suggestion.startswith(f"next: .venv/bin/lvseg serve --checkpoint {out / 'lvit' / 'best.ckpt'}")


def test_the_expectations_read_as_sentences():
    from lvseg.demo import expectations

    checks = {"gain_over_unet": 0.02, "gain_met": False, "text_reliance": 0.4, "reliance_met": True}
    (gain, gain_met), (reliance, reliance_met) = expectations(checks)
    assert not gain_met and reliance_met
    assert gain == "LViT minus U-Net Dice: +0.0200 (expected at least +0.15)"
    assert reliance.startswith("Text reliance, LViT Dice(given) - Dice(shuffled): +0.4000")
