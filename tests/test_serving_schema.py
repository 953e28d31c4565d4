"""The OpenAPI schema tells the truth: schemathesis (every check) over /openapi.json finds no failure.

Runs the schemathesis command line against the app served on loopback (the fake segmenter, with and
without an API key), a bounded number of examples per operation and a fixed seed, with the settings of
tests/fixtures/schemathesis.toml (which says why a schema-valid upload may be answered 413/415, and why
negative_data_rejection, which cannot judge multipart text fields, is left out).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lvseg.serving.app import create_app
from lvseg.serving.fake import FakeSegmenter
from serving_support import running_server

CONFIG = Path(__file__).resolve().parent / "fixtures" / "schemathesis.toml"
SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
KEY = "a-long-random-service-key-for-tests"


@pytest.mark.parametrize("requires_text", [True, False], ids=["text-model", "image-only-model"])
@pytest.mark.parametrize("api_key", [None, KEY], ids=["no-auth", "api-key"])
def test_schemathesis_finds_no_failure(requires_text: bool, api_key: str | None, tmp_path: Path) -> None:
    executable = SCHEMATHESIS if SCHEMATHESIS.exists() else shutil.which("schemathesis")
    if executable is None:
        pytest.skip("schemathesis is not installed (it is in the test extra: pip install -e '.[test]')")
    app = create_app(FakeSegmenter(requires_text=requires_text), api_key=api_key)
    with running_server(app) as url:
        command = [
            str(executable),
            "--config-file",
            str(CONFIG),
            "run",
            f"{url}/openapi.json",
            "--checks",
            "all",
            "--exclude-checks",
            "negative_data_rejection",
            "--max-examples",
            "25",
            "--seed",
            "7",
            "--no-color",
            "--report-dir",
            str(tmp_path),
        ]
        if api_key:
            command += ["--header", f"X-API-Key: {api_key}"]
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=300, cwd=tmp_path
        )  # its cache stays there
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]
    assert "No issues found" in result.stdout or " passed" in result.stdout
