"""``lvseg serve``: options, API key file, loopback default, clear errors."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from lvseg.cli import serve as serve_cli
from lvseg.cli.main import app
from lvseg.errors import LvsegError
from lvseg.serving.fake import FakeSegmenter


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / "model.ckpt"
    path.write_bytes(b"not read: the loader is faked")
    return path


@pytest.fixture
def fake_run(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    calls: dict[str, Any] = {}
    monkeypatch.setattr(serve_cli, "_load_segmenter", lambda path, device, backend="eager": FakeSegmenter())
    import uvicorn

    def run(app_: Any, **kwargs: Any) -> None:
        calls.update(kwargs, app=app_)

    monkeypatch.setattr(uvicorn, "run", run)
    return calls


def test_serve_defaults_to_loopback(checkpoint: Path, fake_run: dict[str, Any]) -> None:
    result = CliRunner().invoke(app, ["serve", "--checkpoint", str(checkpoint)])
    assert result.exit_code == 0, result.output
    assert fake_run["host"] == "127.0.0.1" and fake_run["port"] == 8000


def test_serve_with_api_key_file(checkpoint: Path, fake_run: dict[str, Any], tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    key_file = tmp_path / "key"
    key_file.write_text("a-long-random-service-key\n")
    key_file.chmod(0o600)
    result = CliRunner().invoke(
        app, ["serve", "-c", str(checkpoint), "--api-key-file", str(key_file), "--host", "0.0.0.0", "--port", "8123"]
    )
    assert result.exit_code == 0, result.output
    assert fake_run["host"] == "0.0.0.0" and fake_run["port"] == 8123
    client = TestClient(fake_run["app"])
    assert client.get("/api/model").status_code == 401
    assert client.get("/api/model", headers={"X-API-Key": "a-long-random-service-key"}).status_code == 200


def test_missing_checkpoint_and_bad_key_file_are_user_errors(checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(LvsegError, match="does not exist"):
        serve_cli.build_app(tmp_path / "missing.ckpt", None, None)
    empty = tmp_path / "empty"
    empty.write_text("  \n")
    with pytest.raises(LvsegError, match="empty"):
        serve_cli.read_api_key(empty)
    with pytest.raises(LvsegError, match="does not exist"):
        serve_cli.read_api_key(tmp_path / "nope")


def test_missing_serve_extra_is_a_clear_error(checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "lvseg.serving.app", None)  # makes the import fail
    with pytest.raises(LvsegError, match=r"lvseg\[serve\]"):
        serve_cli.build_app(checkpoint, None, None)


def test_serve_help_mentions_the_api_key_file() -> None:
    result = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    output = re.sub(r"\x1b\[[0-9;]*m", "", result.output)
    for option in ("--api-key-file", "--checkpoint", "--host", "--port", "--device"):
        assert option in output, option


def test_serve_warms_the_model_up_before_it_answers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lvseg.checkpoint import save_inference_checkpoint
    from lvseg.inference import Segmenter
    from lvseg.models import create_model

    real = save_inference_checkpoint(tmp_path / "unet.ckpt", create_model("unet", img_size=32, base_channels=4))
    calls: list[str] = []
    original = Segmenter.warm_up
    monkeypatch.setattr(Segmenter, "warm_up", lambda self: (calls.append(self.backend), original(self)))
    serve_cli._load_segmenter(real, "cpu", "eager")
    assert calls == ["eager"]
