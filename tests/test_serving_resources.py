"""Bounded resources and request hygiene of the app: large images, stalled uploads, disconnects, the
server's text cache, cross-origin posts."""

from __future__ import annotations

import io
import logging
import socket
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from lvseg.serving.app import create_app
from lvseg.serving.fake import FakeSegmenter
from lvseg.serving.uploads import ImageLimits, decode_image
from serving_support import REPORT, TESTCLIENT_HOSTS, encode, png_bytes, running_server

sys.path.insert(0, str(Path(__file__).resolve().parent))


def test_large_images_are_analysed_at_the_working_size() -> None:
    big = np.zeros((3000, 4000), dtype=np.uint8)
    big[1000:2000, 1000:3000] = 255
    for fmt in ("PNG", "JPEG", "TIFF"):
        decoded = decode_image(encode(big, fmt), ImageLimits(max_working_side=1000))
        assert (decoded.width, decoded.height) == (1000, 750), fmt
        assert (decoded.original_width, decoded.original_height) == (4000, 3000) and decoded.reduced
        assert decoded.array.dtype == np.float32 and decoded.pixels.shape == (750, 1000, 3)
        assert abs(float(decoded.array[0, 375, 500]) - 1.0) < 0.05 and float(decoded.array[0, 50, 50]) < 0.05
    small = decode_image(encode(big[:600, :800], "PNG"), ImageLimits(max_working_side=1000))
    assert (small.width, small.height) == (800, 600) and not small.reduced


def test_an_exif_rotated_jpeg_reports_its_upright_size() -> None:
    picture = Image.fromarray(np.zeros((60, 100), dtype=np.uint8))
    exif = picture.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG", exif=exif.tobytes())
    decoded = decode_image(buffer.getvalue(), ImageLimits(max_working_side=50))
    assert (decoded.original_width, decoded.original_height) == (60, 100)  # upright, as displayed
    assert (decoded.width, decoded.height) == (30, 50)


def test_the_segment_response_names_both_sizes() -> None:
    big = np.zeros((900, 1200), dtype=np.uint8)
    big[100:300, 100:500] = 255
    served_app = create_app(
        FakeSegmenter(), image_limits=ImageLimits(max_working_side=600), allowed_hosts=TESTCLIENT_HOSTS
    )
    with TestClient(served_app) as client:
        result = client.post(
            "/api/segment", files={"image": ("big.png", png_bytes(big), "image/png")}, data={"text": REPORT}
        ).json()
    assert (result["width"], result["height"], result["original_width"], result["original_height"]) == (
        600,
        450,
        1200,
        900,
    )
    assert Image.open(io.BytesIO(__import__("base64").b64decode(result["mask"]))).size == (600, 450)


def _raw_upload(url: str, body_part: bytes, length: int) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    connection = socket.create_connection((host, int(port)), timeout=10)
    head = (
        f"POST /api/segment HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: multipart/form-data; boundary=x\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()
    connection.sendall(head + body_part)
    return connection


def _read_answer(connection: socket.socket) -> str:
    """The whole HTTP answer (headers and body may arrive in separate packets): read until the body is in."""
    data = b""
    while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _content_length(data):
        chunk = connection.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.decode("latin-1")


def _content_length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return 0


def test_a_stalled_upload_is_answered_408() -> None:
    with running_server(create_app(FakeSegmenter(), read_timeout_s=0.5)) as url:
        connection = _raw_upload(url, b'--x\r\nContent-Disposition: form-data; name="text"\r\n\r\nab', 10_000)
        started = time.monotonic()
        answer = _read_answer(connection)
        connection.close()
    assert answer.startswith("HTTP/1.1 408") and "stalled" in answer
    assert time.monotonic() - started < 5


def test_a_client_that_disconnects_is_one_log_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    with running_server(create_app(FakeSegmenter(), read_timeout_s=5)) as url:
        for _ in range(3):
            _raw_upload(url, b'--x\r\nContent-Disposition: form-data; name="te', 10_000).close()
        time.sleep(1.0)
    messages = [record.getMessage() for record in caplog.records]
    assert not any("Exception in ASGI application" in message for message in messages)
    assert not any(record.exc_info for record in caplog.records)
    assert sum("disconnected" in message for message in messages) == 3


def test_cross_origin_posts_are_refused() -> None:
    with TestClient(create_app(FakeSegmenter(), allowed_hosts=TESTCLIENT_HOSTS)) as client:
        files = {"image": ("scan.png", png_bytes(), "image/png")}
        foreign = client.post(
            "/api/segment", files=files, data={"text": REPORT}, headers={"origin": "http://evil.example"}
        )
        assert foreign.status_code == 403 and "cross-origin" in foreign.json()["error"]
        fetch_site = client.post(
            "/api/segment", files=files, data={"text": REPORT}, headers={"sec-fetch-site": "cross-site"}
        )
        assert fetch_site.status_code == 403
        same = client.post("/api/segment", files=files, data={"text": REPORT}, headers={"origin": "http://testserver"})
        assert same.status_code == 200
        assert client.post("/api/segment", files=files, data={"text": REPORT}).status_code == 200  # curl-like


def test_allowed_hosts_are_enforced() -> None:
    with TestClient(
        create_app(FakeSegmenter(), allowed_hosts=["127.0.0.1", "localhost"]), base_url="http://localhost"
    ) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/healthz", headers={"host": "rebound.example"}).status_code == 400


def test_by_default_only_loopback_host_names_are_accepted() -> None:
    app = create_app(FakeSegmenter())
    for name in ("127.0.0.1", "localhost"):
        with TestClient(app, base_url=f"http://{name}:8000") as client:
            assert client.get("/healthz").status_code == 200, name
    with TestClient(app, base_url="http://localhost") as client:
        assert client.get("/healthz", headers={"host": "rebound.example"}).status_code == 400
        assert client.get("/api/model", headers={"host": "testserver"}).status_code == 400
    with TestClient(create_app(FakeSegmenter(), allowed_hosts=["*"])) as anywhere:
        assert anywhere.get("/healthz", headers={"host": "rebound.example"}).status_code == 200
    with TestClient(create_app(FakeSegmenter(), api_key="k" * 24)) as keyed:  # a key guards it, as `lvseg serve`
        assert keyed.get("/healthz", headers={"host": "rebound.example"}).status_code == 200


def test_host_policy_of_lvseg_serve(monkeypatch: pytest.MonkeyPatch) -> None:
    from lvseg.serving import security

    monkeypatch.setattr(security, "machine_names", lambda: {"ward-pc", "10.0.0.5"})
    loopback = security.allowed_hosts_for("127.0.0.1", api_key_set=False)
    assert set(loopback) == set(security.LOOPBACK_NAMES)
    assert set(security.allowed_hosts_for("0.0.0.0", api_key_set=False, extra_hosts=["lvseg.example"])) == {
        *security.LOOPBACK_NAMES,
        "0.0.0.0",
        "ward-pc",
        "10.0.0.5",
        "lvseg.example",
    }
    assert security.allowed_hosts_for("0.0.0.0", api_key_set=True) == ["*"]
    assert security.allowed_hosts_for("127.0.0.1", api_key_set=False, extra_hosts=["*"]) == ["*"]
    assert "lvseg.example" in security.allowed_hosts_for("0.0.0.0", api_key_set=True, extra_hosts=["lvseg.example"])


def test_the_server_keeps_frozen_text_features_in_memory_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hf_support import save_tiny_bert
    from lvseg.checkpoint import save_inference_checkpoint
    from lvseg.inference import load_model
    from lvseg.models import create_model

    cache_dir = tmp_path / "cache"
    monkeypatch.setenv("LVSEG_CACHE_DIR", str(cache_dir))
    bert = save_tiny_bert(tmp_path / "bert", hidden=16)
    net = create_model("lvit", img_size=32, base_channels=8, text_encoder=f"hf:{bert}", text_len=8)
    save_inference_checkpoint(tmp_path / "m.ckpt", net)
    segmenter = load_model(tmp_path / "m.ckpt", device="cpu")
    with TestClient(create_app(segmenter, allowed_hosts=TESTCLIENT_HOSTS)) as client:
        for index in range(3):
            response = client.post(
                "/api/segment",
                files={"image": ("scan.png", png_bytes(), "image/png")},
                data={"text": f"{REPORT} number {index}"},
            )
            assert response.status_code == 200, response.text
    assert segmenter.text_encoder.cache is not None and segmenter.text_encoder.cache.disk is False
    assert not cache_dir.exists() or not any(cache_dir.rglob("*.safetensors"))


def test_dicom_pixel_spacing_gives_areas_in_square_millimetres() -> None:
    from serving_support import dicom_bytes

    pixels = np.zeros((40, 60), dtype=np.uint16)
    pixels[10:20, 10:30] = 4000  # 200 px
    data = dicom_bytes(pixels, center=[2000], width=[4000], pixel_spacing=(0.5, 0.25))
    with TestClient(create_app(FakeSegmenter(), allowed_hosts=TESTCLIENT_HOSTS)) as client:
        result = client.post(
            "/api/segment", files={"image": ("ct.dcm", data, "application/dicom")}, data={"text": REPORT}
        ).json()
        assert result["area_px"] == 200 and result["pixel_spacing_mm"] == [0.5, 0.25]
        assert result["area_mm2"] == pytest.approx(200 * 0.125) and result["lesion_details"][0]["area_mm2"] == 25.0
        png = client.post(
            "/api/segment", files={"image": ("x.png", png_bytes(), "image/png")}, data={"text": REPORT}
        ).json()
        assert png["area_mm2"] is None and png["pixel_spacing_mm"] is None
    # reduced to the working size, a pixel covers more: the area in mm2 stays the same
    served_app = create_app(
        FakeSegmenter(), image_limits=ImageLimits(max_working_side=30), allowed_hosts=TESTCLIENT_HOSTS
    )
    with TestClient(served_app) as client:
        small = client.post(
            "/api/segment", files={"image": ("ct.dcm", data, "application/dicom")}, data={"text": REPORT}
        ).json()
    assert small["width"] == 30 and small["area_mm2"] == pytest.approx(25.0, rel=0.1)


def _pdf_text(content: bytes) -> str:
    pypdf = pytest.importorskip("pypdf", reason="pypdf is needed to read the PDF's text")
    return " ".join(" ".join(page.extract_text() for page in pypdf.PdfReader(io.BytesIO(content)).pages).split())


def test_the_pdf_renders_cjk_reports_and_carries_patient_referrer_and_sign_off() -> None:
    report = "双肺感染，两处感染区，左上肺和右下肺。 左肺に浸潤影。 양측 폐렴."
    with TestClient(create_app(FakeSegmenter(), allowed_hosts=TESTCLIENT_HOSTS)) as client:
        segmented = client.post(
            "/api/segment", files={"image": ("scan.png", png_bytes(), "image/png")}, data={"text": report}
        ).json()
        response = client.post(
            f"/api/results/{segmented['result_id']}/report",
            files={"patient_id": (None, "P-0042"), "referrer": (None, "Dr. 李")},
        )
    assert response.status_code == 200, response.text
    text = _pdf_text(response.content)
    for fragment in ("双肺感染", "左肺に浸潤影", "양측", "P-0042", "Dr. 李", "Reviewed by", "Signature and date"):
        assert fragment in text, fragment
    from lvseg.serving.report_pdf import cjk_font

    if cjk_font("zh")[1]:  # a TrueType CJK font is installed: embedded, not named for the viewer to find
        assert b"STSong-Light" not in response.content and b"FontFile2" in response.content
    else:
        assert b"STSong-Light" in response.content and b"HeiseiMin-W3" in response.content


def test_heatmap_and_side_markers_from_dicom_orientation() -> None:
    from lvseg.rendering import probability_heatmap, side_markers
    from serving_support import dicom_bytes

    heat = probability_heatmap(np.array([[0.0, 0.5, 1.0]]))
    assert heat.shape == (1, 3, 3) and tuple(heat[0, 0]) == (68, 1, 84) and tuple(heat[0, 2]) == (253, 231, 37)
    assert side_markers("L") == ("R", "L") and side_markers("RA") == ("LP", "RA") and side_markers("?") is None

    pixels = np.full((64, 96), 500, dtype=np.uint16)
    plain = dicom_bytes(pixels, center=[2000], width=[4000])
    import pydicom

    dataset = pydicom.dcmread(io.BytesIO(plain))
    dataset.PatientOrientation = ["L", "F"]
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    with TestClient(create_app(FakeSegmenter(), allowed_hosts=TESTCLIENT_HOSTS)) as client:
        oriented = client.post(
            "/api/segment", files={"image": ("pa.dcm", buffer.getvalue(), "application/dicom")}, data={"text": REPORT}
        ).json()
        unmarked = client.post(
            "/api/segment", files={"image": ("pa.dcm", plain, "application/dicom")}, data={"text": REPORT}
        ).json()
    assert oriented["side_markers"] == ["R", "L"] and unmarked["side_markers"] is None
    import base64

    def image(b64: str) -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))))

    marked, bare = image(oriented["overlay"]), image(unmarked["overlay"])
    assert not np.array_equal(marked[:, :20], bare[:, :20]) and not np.array_equal(marked[:, -20:], bare[:, -20:])
    assert np.array_equal(image(oriented["mask"]), image(unmarked["mask"]))  # markers never touch the mask
    assert image(oriented["heatmap"]).shape == (64, 96, 3)


def test_uploads_over_the_pending_limit_are_answered_503() -> None:
    import httpx

    with running_server(create_app(FakeSegmenter(), max_pending_requests=1, read_timeout_s=5)) as url:
        holding = _raw_upload(url, b'--x\r\nContent-Disposition: form-data; name="te', 10_000)  # holds the slot
        time.sleep(0.3)
        busy = httpx.post(
            f"{url}/api/segment",
            files={"image": ("scan.png", png_bytes(), "image/png")},
            data={"text": REPORT},
            timeout=10,
        )
        holding.close()
        time.sleep(0.3)
        after = httpx.post(
            f"{url}/api/segment",
            files={"image": ("scan.png", png_bytes(), "image/png")},
            data={"text": REPORT},
            timeout=10,
        )
    assert busy.status_code == 503 and "busy" in busy.json()["error"]
    assert after.status_code == 200  # the slot is given back when the stalled upload ends


def test_an_image_only_model_keeps_no_report_and_the_answer_names_its_model() -> None:
    with TestClient(create_app(FakeSegmenter(requires_text=False), allowed_hosts=TESTCLIENT_HOSTS)) as client:
        result = client.post(
            "/api/segment", files={"image": ("scan.png", png_bytes(), "image/png")}, data={"text": "ignored words"}
        ).json()
    assert result["report_text"] == "" and result["validation_dice"] == 0.5 and result["model"] == "fake-brightness"


def test_the_pdf_takes_the_dicom_s_own_patient_and_study_ids_when_the_form_leaves_them_blank() -> None:
    import pydicom

    from serving_support import dicom_bytes

    dataset = pydicom.dcmread(io.BytesIO(dicom_bytes(np.full((32, 32), 500, dtype=np.uint16))))
    dataset.PatientID, dataset.StudyID = "PAT-7731", "ST-42"
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    with TestClient(create_app(FakeSegmenter(), allowed_hosts=TESTCLIENT_HOSTS)) as client:
        result = client.post(
            "/api/segment", files={"image": ("a.dcm", buffer.getvalue(), "application/dicom")}, data={"text": REPORT}
        ).json()
        blank = client.post(f"/api/results/{result['result_id']}/report", files={"notes": (None, "")})
        given = client.post(f"/api/results/{result['result_id']}/report", files={"patient_id": (None, "FORM-1")})
    assert blank.status_code == given.status_code == 200
    assert "PAT-7731" in _pdf_text(blank.content) and "ST-42" in _pdf_text(blank.content)
    assert 'filename="lvseg-report-ST-42.pdf"' in blank.headers["content-disposition"]
    assert "FORM-1" in _pdf_text(given.content) and "PAT-7731" not in _pdf_text(given.content)
