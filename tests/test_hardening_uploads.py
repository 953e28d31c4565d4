"""``lvseg predict`` refuses what the web app refuses (issue 22): corrupt JPEGs, animated GIFs and reports without
letters or digits, by the same decoder and the same text check; and the app closes slow clients (real sockets)."""

from __future__ import annotations

import json
import select
import socket
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from lvseg.checkpoint import save_inference_checkpoint
from lvseg.cli.main import app
from lvseg.errors import DataValidationError, LvsegError
from lvseg.inference import load_model
from lvseg.models import create_model
from lvseg.serving.app import create_app
from lvseg.serving.connections import guarded_h11_protocol
from lvseg.serving.fake import FakeSegmenter
from lvseg.text import create_text_encoder
from serving_support import (
    REPORT,
    animated_gif,
    jpeg_cut_in_half,
    jpeg_with_size_header,
    png_bytes,
    running_server,
    textured_image,
)

IMG_SIZE = 32
REPORTS = ["lesion upper left", "lesion lower right"]
BLANK_REPORTS = ["\x00", "...", "\u200b\u200b", "\ufeff", " \u00a0 "]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    encoder = create_text_encoder("learned", texts=REPORTS, dim=8, max_length=6)
    options = {"img_size": IMG_SIZE, "base_channels": 8, "text_dim": 8, "text_len": 6}
    lvit = save_inference_checkpoint(root / "lvit.ckpt", create_model("lvit", **options, text_encoder=encoder))
    unet = save_inference_checkpoint(root / "unet.ckpt", create_model("unet", img_size=IMG_SIZE, base_channels=4))
    return {"lvit": lvit, "unet": unet}


def invoke(*args: object):
    return CliRunner().invoke(app, ["predict", *map(str, args)])


@pytest.mark.parametrize(
    "name, data, words",
    [
        ("half.jpg", jpeg_cut_in_half(), "rows are all the uniform grey (128)"),
        ("patched.jpg", jpeg_with_size_header(8000, 6000), "says 8000x6000 pixels, which need at least 93750 bytes"),
        ("cine.gif", animated_gif(), "not a PNG/JPEG/TIFF/BMP/DICOM file"),
    ],
    ids=["jpeg-cut-in-half", "jpeg-size-header", "animated-gif"],
)
def test_predict_refuses_what_the_app_refuses(
    ckpts: dict[str, Path], tmp_path: Path, name: str, data: bytes, words: str
) -> None:
    image = tmp_path / name
    image.write_bytes(data)
    out = tmp_path / "mask.png"
    result = invoke("-c", ckpts["unet"], "-i", image, "-o", out)
    assert isinstance(result.exception, LvsegError), result.output
    assert str(image) in str(result.exception) and words in str(result.exception)
    assert not out.exists()


def test_predict_still_reads_a_complete_jpeg(ckpts: dict[str, Path], tmp_path: Path) -> None:
    image = tmp_path / "whole.jpg"
    Image.fromarray(textured_image()).save(image, quality=90)
    result = invoke("-c", ckpts["unet"], "-i", image, "-o", tmp_path / "mask.png")
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "mask.png").size == (256, 256)


@pytest.mark.parametrize("text", BLANK_REPORTS)
def test_predict_refuses_a_report_without_letters_or_digits(ckpts: dict[str, Path], tmp_path: Path, text: str) -> None:
    image = tmp_path / "x.png"
    Image.fromarray(textured_image(32, 32)).save(image)
    result = invoke("-c", ckpts["lvit"], "-i", image, "-t", text, "-o", tmp_path / "m.png")
    assert isinstance(result.exception, LvsegError), result.output
    assert "--text" in str(result.exception) and "no letters or digits" in str(result.exception)
    assert not (tmp_path / "m.png").exists()
    # An image-only model ignores the text, as the app does.
    assert invoke("-c", ckpts["unet"], "-i", image, "-t", text, "-o", tmp_path / "m.png").exit_code == 0


def test_predict_folder_lists_reports_without_letters_or_digits(ckpts: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "in"
    (folder / "img").mkdir(parents=True)
    for stem in ("a", "b"):
        Image.fromarray(textured_image(32, 32)).save(folder / "img" / f"{stem}.png")
    pd.DataFrame({"Image": ["a.png", "b.png"], "Description": [REPORTS[0], "\u200b..."]}).to_csv(
        folder / "Test_text.csv", index=False
    )
    result = invoke("-c", ckpts["lvit"], "--folder", folder, "-o", tmp_path / "out")
    assert isinstance(result.exception, DataValidationError), result.output
    assert "row 3" in str(result.exception) and "no letters or digits" in str(result.exception)


@pytest.mark.parametrize("text", BLANK_REPORTS)
def test_the_segmenter_refuses_a_report_without_letters_or_digits(ckpts: dict[str, Path], text: str) -> None:
    segmenter = load_model(ckpts["lvit"], device="cpu", backend="eager")
    with pytest.raises(LvsegError, match="no letters or digits"):
        segmenter.predict(np.zeros((16, 16, 3), dtype=np.float32), text)
    assert segmenter.predict(np.zeros((16, 16, 3), dtype=np.float32), REPORTS[0]).mask.shape == (16, 16)


# ------------------------------------------------------------------------------- slow clients (real sockets)


def _connect(url: str, source: str = "127.0.0.1") -> socket.socket:
    """A TCP connection to the server at ``url`` from the loopback address ``source`` (any of 127.0.0.0/8)."""
    port = int(url.rsplit(":", 1)[1])
    connection = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    connection.settimeout(10)
    connection.bind((source, 0))
    connection.connect(("127.0.0.1", port))
    return connection


def _answer(connection: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one answer, read until its Content-Length is in."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(65536)
        assert chunk, f"the connection closed without an answer: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    while len(body) < int(headers.get("content-length", "0")):
        chunk = connection.recv(65536)
        assert chunk, "the connection closed in the middle of the answer"
        body += chunk
    return int(lines[0].split()[1]), headers, body


def _closed(connection: socket.socket, within_s: float) -> bool:
    """Whether the server closes ``connection`` within ``within_s`` seconds (anything it sends first is read)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        readable, _, _ = select.select([connection], [], [], max(0.0, deadline - time.monotonic()))
        if readable:
            try:
                if not connection.recv(65536):
                    return True
            except ConnectionResetError:
                return True
    return False


def _upload_request(body: bytes, boundary: str = "lvsegboundary", length: int | None = None) -> bytes:
    head = (
        f"POST /api/segment HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(body) if length is None else length}\r\n\r\n"
    )
    return head.encode() + body


def _upload_body(boundary: str = "lvsegboundary") -> bytes:
    return (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="text"\r\n\r\n{REPORT}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + png_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )


def test_a_connection_whose_headers_never_complete_is_answered_408_and_closed() -> None:
    with running_server(create_app(FakeSegmenter()), http=guarded_h11_protocol(1.0)) as url:
        silent = _connect(url)  # sends nothing at all
        trickling = _connect(url)  # a byte every 0.2 s: each would reset uvicorn's idle timer
        trickling.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        start = time.monotonic()
        status = None
        while time.monotonic() - start < 4.0 and status is None:
            try:
                trickling.sendall(b"a")
            except OSError:
                break
            readable, _, _ = select.select([trickling], [], [], 0.2)
            if readable:
                status, headers, body = _answer(trickling)
        assert status == 408, "the trickling client was not cut off"
        assert 0.9 <= time.monotonic() - start < 3.0
        assert headers["content-type"] == "application/json" and headers["connection"] == "close"
        assert json.loads(body) == {
            "error": "the request headers did not arrive within 1 s; the connection is closed",
            "detail": None,
        }
        assert _closed(trickling, 2.0)
        assert _closed(silent, 2.0)
        silent.close()
        trickling.close()


def test_the_header_timeout_leaves_keep_alive_requests_and_slow_bodies_alone() -> None:
    with running_server(create_app(FakeSegmenter()), http=guarded_h11_protocol(1.0)) as url:
        with _connect(url) as connection:
            for _ in range(3):  # one keep-alive connection, a pause longer than the header timeout before each
                time.sleep(0.6)
                connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                assert _answer(connection)[0] == 200
            body = _upload_body()
            connection.sendall(_upload_request(body)[: -len(body)])  # the headers now, the body after 1.5 s
            time.sleep(1.5)
            connection.sendall(body)
            status, _, answer = _answer(connection)
            assert status == 200, answer


def test_a_request_that_is_not_http_is_a_json_400() -> None:
    with running_server(create_app(FakeSegmenter()), http=guarded_h11_protocol(1.0)) as url:
        with _connect(url) as connection:
            connection.sendall(b"NOT HTTP AT ALL\r\n\r\n")
            status, headers, body = _answer(connection)
    assert status == 400 and headers["content-type"] == "application/json"
    assert json.loads(body) == {
        "error": "the request is not valid HTTP/1.1 (Invalid HTTP request received)",
        "detail": None,
    }


def test_slow_uploads_of_one_client_cannot_lock_others_out() -> None:
    """16 stalled uploads from one address (the server takes 16 at once): half are refused 429, and another
    client still gets its upload in (it got 503 before)."""
    with running_server(create_app(FakeSegmenter(), read_timeout_s=10)) as url:
        stalled = []
        refused = []
        for _ in range(16):
            connection = _connect(url)
            connection.sendall(
                _upload_request(b'--lvsegboundary\r\nContent-Disposition: form-data; name="te', length=10_000)
            )
            stalled.append(connection)
        deadline = time.monotonic() + 10.0
        waiting = list(stalled)
        while len(refused) < 8 and time.monotonic() < deadline:  # the refusals, as fast as the server answers
            readable, _, _ = select.select(waiting, [], [], 0.2)
            for connection in readable:
                refused.append(_answer(connection))
                waiting.remove(connection)
        time.sleep(0.3)
        assert len(refused) == 8 and not select.select(waiting, [], [], 0.0)[0]  # the other 8 are held
        status, headers, body = refused[0]
        assert status == 429 and headers["retry-after"] == "5"
        assert json.loads(body) == {
            "error": "this client already has 8 uploads in progress, the most the server takes from one client at "
            "once; wait for one to finish",
            "detail": {"max_uploads_per_client": 8},
        }
        with _connect(url, source="127.0.0.2") as other:
            other.sendall(_upload_request(_upload_body()))
            assert _answer(other)[0] == 200
        with _connect(url) as same:  # the first client's own slots are all taken
            same.sendall(_upload_request(_upload_body()))
            assert _answer(same)[0] == 429
        for connection in stalled:
            connection.close()
        time.sleep(0.5)
        with _connect(url) as again:  # its slots are given back when its uploads end
            again.sendall(_upload_request(_upload_body()))
            assert _answer(again)[0] == 200


def test_lvseg_serve_runs_uvicorn_with_the_header_timeout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    from lvseg.cli import serve as serve_cli
    from lvseg.serving.connections import HEADER_TIMEOUT_S, HeaderTimeoutH11Protocol
    from lvseg.serving.fake import FakeSegmenter as Fake

    calls: dict[str, object] = {}
    monkeypatch.setattr(serve_cli, "_load_segmenter", lambda path, device, backend="eager": Fake())
    monkeypatch.setattr(uvicorn, "run", lambda app_, **kwargs: calls.update(kwargs))
    checkpoint = tmp_path / "model.ckpt"
    checkpoint.write_bytes(b"not read: the loader is faked")
    result = CliRunner().invoke(app, ["serve", "--checkpoint", str(checkpoint)])
    assert result.exit_code == 0, result.output
    protocol = calls["http"]
    assert isinstance(protocol, type) and issubclass(protocol, HeaderTimeoutH11Protocol)
    assert protocol.header_timeout_s == HEADER_TIMEOUT_S and calls["timeout_keep_alive"] == 5
    with pytest.raises(ValueError, match="positive"):
        guarded_h11_protocol(0)
