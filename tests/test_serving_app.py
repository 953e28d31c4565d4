"""The HTTP API with a fake segmenter: every endpoint, every bad-input case, the API key."""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import re
import tempfile
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from lvseg.data.images import read_image
from lvseg.serving.app import create_app
from lvseg.serving.errors import ApiError
from lvseg.serving.fake import FakeSegmenter
from lvseg.serving.forms import FormLimits, read_multipart
from serving_support import (
    REPORT,
    TESTCLIENT_HOSTS,
    dicom_bytes,
    encode,
    lesion_image,
    png_bytes,
    png_with_header_only,
)

MB = 1024 * 1024


@pytest.fixture
def client() -> Iterator[TestClient]:
    with TestClient(create_app(FakeSegmenter(), allowed_hosts=TESTCLIENT_HOSTS)) as test_client:
        yield test_client


def _segment(
    client: TestClient, image: bytes | None = None, text: str | None = REPORT, query: str = "", **extra: str
) -> object:
    files = {"image": ("scan.png", png_bytes() if image is None else image, "image/png")}
    data = {"text": text, **extra} if text is not None else dict(extra)
    return client.post(f"/api/segment{query}", files=files, data=data)


def _png_array(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))))


def _assert_error(response: object, status: int, *words: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "detail"}
    for word in words:
        assert word in body["error"], body
    return body


# --- endpoints ---------------------------------------------------------------------------------


def test_healthz(client: TestClient) -> None:
    assert client.get("/healthz").json() == {
        "status": "ok",
        "ready": True,
        "model": "fake-brightness",
        "device": "cpu",
        "auth_required": False,
    }


def test_model_info(client: TestClient) -> None:
    info = client.get("/api/model").json()
    assert info["model"] == "fake-brightness" and info["input_size"] == 224 and info["requires_text"] is True
    assert info["metrics"] == {"val_dice": 0.5} and info["validation_dice"] == 0.5
    assert info["text_encoder"] is None
    assert info["limits"]["max_upload_mb"] == 20 and info["limits"]["max_side_px"] == 8192
    assert info["limits"]["max_text_chars"] == 2000


def test_segment_returns_mask_overlay_and_measurements(client: TestClient) -> None:
    response = _segment(client)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    result = response.json()
    image = lesion_image()
    expected = image > 127
    mask = _png_array(result["mask"])
    assert mask.shape == image.shape and set(np.unique(mask)) == {0, 255}
    assert np.array_equal(mask > 0, expected)
    overlay = _png_array(result["overlay"])
    assert overlay.shape == (*image.shape, 3)
    assert (result["width"], result["height"], result["image_format"]) == (96, 64, "png")
    assert result["area_px"] == int(expected.sum())
    assert result["area_percent"] == pytest.approx(100 * expected.mean(), abs=1e-3)
    assert result["lesions"] == 2
    assert result["confidence"] == pytest.approx(image[expected].mean() / 255, abs=1e-4)
    assert result["inference_ms"] >= 0 and result["model"] == "fake-brightness"
    assert result["original"] is None
    colours = {lesion["colour"] for lesion in result["lesion_details"]}
    assert len(colours) == 2
    # Each lesion is drawn in its own colour: the two lesions' overlay pixels differ.
    assert not np.array_equal(overlay[14, 20], overlay[48, 75])
    assert np.array_equal(overlay[2, 2], [30, 30, 30])  # background untouched


def test_segment_png_format_returns_the_mask_itself(client: TestClient) -> None:
    response = _segment(client, query="?format=png")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    mask = np.asarray(Image.open(io.BytesIO(response.content)))
    assert np.array_equal(mask > 0, lesion_image() > 127)
    assert response.headers["x-lesions"] == "2"


def test_an_empty_mask_is_no_lesion_found_with_the_highest_probability(client: TestClient) -> None:
    dim = np.zeros((10, 12), dtype=np.uint8)
    dim[3, 4] = 102  # the fake's probability is brightness: 0.4 at most, under the 0.5 threshold
    result = _segment(client, image=png_bytes(dim)).json()
    assert result["area_px"] == 0 and result["lesions"] == 0
    assert result["finding"] == "no lesion found"
    assert (
        result["max_probability"] == pytest.approx(0.4, abs=1e-3) and result["confidence"] == result["max_probability"]
    )
    found = _segment(client).json()
    assert found["finding"] == "lesion found" and found["confidence"] <= found["max_probability"]


@pytest.mark.parametrize("fmt", ["JPEG", "TIFF"])
def test_segment_accepts_jpeg_and_tiff(client: TestClient, fmt: str) -> None:
    result = _segment(client, image=encode(lesion_image(), fmt), query="?include_original=true").json()
    assert result["image_format"] == fmt.lower() and result["lesions"] == 2
    assert _png_array(result["original"]).shape == (64, 96, 3)


class _Recorder(FakeSegmenter):
    """Keeps what the app passes to ``predict``."""

    def predict(self, image: object, text: str | None, threshold: float = 0.5, **options: object) -> object:
        self.received = image
        return super().predict(image, text, threshold, **options)


def _twelve_bit(height: int = 40, width: int = 36) -> np.ndarray:
    image = np.random.default_rng(5).integers(0, 1200, size=(height, width)).astype(np.uint16)
    image[8:24, 10:30] = 4095  # a bright square; 4095 = the 12-bit maximum
    return image


@pytest.mark.parametrize("kind", ["gray8", "rgb", "rgba", "gray16"])
def test_the_model_gets_the_array_lvseg_predict_reads(kind: str) -> None:
    """Through the app, the model reads the same (C, H, W) floats as from the file in ``lvseg predict``."""
    rgb = np.random.default_rng(6).integers(0, 256, size=(30, 26, 3)).astype(np.uint8)
    image = {
        "gray8": lesion_image(),
        "rgb": rgb,
        "rgba": np.concatenate([rgb, rgb[..., :1]], axis=2),
        "gray16": _twelve_bit(),
    }[kind]
    data = png_bytes(image)
    recorder = _Recorder()
    with TestClient(create_app(recorder, allowed_hosts=TESTCLIENT_HOSTS)) as client:
        assert _segment(client, image=data).status_code == 200
    for channels in (1, 3):
        assert np.array_equal(read_image(recorder.received, channels=channels), read_image(data, channels=channels))


def test_segment_accepts_dicom(client: TestClient) -> None:
    stored = lesion_image().astype(np.uint16) * 16  # 12-bit range
    data = dicom_bytes(stored, slope=1, intercept=-1024, center=[1024 + 2000 - 1024, 0], width=[4000, 1])
    result = _segment(client, image=data, query="?include_original=true").json()
    assert result["image_format"] == "dicom" and result["lesions"] == 2
    assert (result["width"], result["height"]) == (96, 64)


def test_report_returns_a_pdf_with_the_report_text(client: TestClient) -> None:
    pypdf = pytest.importorskip("pypdf", reason="pypdf is needed to read the PDF's text")
    response = client.post(
        "/api/report",
        files={"image": ("scan.png", png_bytes(), "image/png")},
        data={
            "text": REPORT,
            "study_id": "ST 42/7",
            "notes": "Compare with prior <study> & follow up.",
            "recommendations": "CT in six weeks.",
        },
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/pdf"
    assert 'filename="lvseg-report-ST_42_7.pdf"' in response.headers["content-disposition"]
    assert response.content.startswith(b"%PDF")
    text = " ".join(page.extract_text() for page in pypdf.PdfReader(io.BytesIO(response.content)).pages)
    flat = " ".join(text.split())
    for expected in (
        "upper left lung",
        "ST 42/7",
        "Compare with prior <study> & follow up.",
        "CT in six weeks.",
        "fake-brightness",
        "0.500",
        "not a diagnostic device",
        "Connected lesions",
    ):
        assert expected in flat, expected
    assert len(pypdf.PdfReader(io.BytesIO(response.content)).pages[0].images) >= 2


def test_page_docs_and_static_files(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for needle in ('for="image-input"', 'for="report-text"', 'id="segment-button"', 'role="alert"', 'id="opacity"'):
        assert needle in page.text
    assert "http://" not in page.text and "https://" not in page.text  # nothing from a CDN
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/style.css").status_code == 200
    assert client.get("/docs").status_code == 200


def _docs_asset_urls(html: str) -> list[str]:
    return re.findall(r'(?:src|href)="([^"]+)"', html)


def test_docs_page_is_served_from_local_assets_only() -> None:
    pytest.importorskip("swagger_ui", reason="swagger-ui-py (the serve extra) provides the /docs assets")
    key = "s3cret-key-0123456789"
    with TestClient(create_app(FakeSegmenter(), api_key=key)) as client:  # /docs needs no API key
        page = client.get("/docs")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert "http://" not in page.text and "https://" not in page.text  # no CDN, no outside host
        assert "'/openapi.json'" in page.text and '"validatorUrl": null' in page.text
        urls = _docs_asset_urls(page.text)
        assert {url.rsplit("/", 1)[-1] for url in urls} == {
            "swagger-ui-bundle.js",
            "swagger-ui.css",
            "favicon-32x32.png",
        }
        for url in urls:
            assert url.startswith("/docs-assets/"), url  # same origin, not protocol-relative (//host)
            asset = client.get(url)
            assert asset.status_code == 200 and len(asset.content) > 1000, url
        assert client.get("/docs-assets/swagger-ui-bundle.js").headers["content-type"].startswith("text/javascript")
        assert client.get("/docs-assets/swagger-ui.css").headers["content-type"].startswith("text/css")
        assert client.get("/openapi.json").json()["openapi"].startswith("3.1")
        # Only the files /docs uses are served; /redoc (CDN-only) is gone.
        for path in (
            "/docs-assets/swagger-initializer.js",
            "/docs-assets/swagger-editor-bundle.js",
            "/docs-assets/LICENSE",
            "/redoc",
        ):
            assert client.get(path).status_code == 404, path


def test_docs_page_without_swagger_ui_py_stays_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    import lvseg.serving.app as app_module

    monkeypatch.setattr(app_module, "swagger_ui_dir", lambda: None)
    with TestClient(create_app(FakeSegmenter(), allowed_hosts=TESTCLIENT_HOSTS)) as client:
        page = client.get("/docs")
        assert page.status_code == 200 and "swagger-ui-py" in page.text and 'href="/openapi.json"' in page.text
        assert "http://" not in page.text and "https://" not in page.text
        assert client.get("/docs-assets/swagger-ui-bundle.js").status_code == 404


def test_openapi_describes_every_field(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    segment = schema["paths"]["/api/segment"]["post"]
    form = segment["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert set(form["required"]) == {"image", "text"}
    assert form["properties"]["image"]["format"] == "binary"
    assert all(prop.get("description") for prop in form["properties"].values())
    report = schema["paths"]["/api/report"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert {"study_id", "notes", "recommendations"} <= set(report["properties"])
    for model in ("SegmentResponse", "ModelInfo", "HealthResponse", "ErrorResponse", "LesionInfo"):
        props = schema["components"]["schemas"][model]["properties"]
        assert all(prop.get("description") for name, prop in props.items() if name != "limits"), model
    assert {"408", "413", "415", "422"} <= set(segment["responses"])
    # the schema tells the truth about authentication: no key declared when the server asks for none
    assert "401" not in segment["responses"] and "security" not in segment
    assert form["properties"]["text"]["minLength"] == 1 and form["properties"]["text"]["not"] == {
        "pattern": r"^[\W_]*$"
    }
    assert form["additionalProperties"] is False
    with TestClient(create_app(FakeSegmenter(), api_key="k" * 24)) as keyed:
        secured = keyed.get("/openapi.json").json()["paths"]["/api/segment"]["post"]
    assert "401" in secured["responses"] and secured["security"] == [{"APIKeyHeader": []}]


# --- bad input ---------------------------------------------------------------------------------


def test_not_an_image_is_415(client: TestClient) -> None:
    _assert_error(_segment(client, image=b"just some text, not pixels"), 415, "not a supported image")
    _assert_error(_segment(client, image=b"GIF89a" + b"\0" * 64), 415)


def test_not_multipart_is_415(client: TestClient) -> None:
    _assert_error(client.post("/api/segment", json={"text": REPORT}), 415, "multipart/form-data")


def test_corrupt_or_truncated_image_is_422(client: TestClient) -> None:
    good = png_bytes()
    _assert_error(_segment(client, image=good[: len(good) // 2]), 422, "corrupt or truncated")
    _assert_error(_segment(client, image=encode(lesion_image(), "JPEG")[:150]), 422, "corrupt or truncated")


def test_upload_over_20_mb_is_413(client: TestClient) -> None:
    big = png_bytes() + b"\0" * (20 * MB)
    _assert_error(_segment(client, image=big), 413, "larger than 20 MB")


def test_size_cap_is_enforced_while_reading_without_content_length(client: TestClient) -> None:
    boundary = "lvsegboundary"
    sent = {"chunks": 0}

    def body() -> Iterator[bytes]:
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="text"\r\n\r\n{REPORT}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        for _ in range(40):  # would be 40 MB
            sent["chunks"] += 1
            yield b"\0" * MB
        yield f"\r\n--{boundary}--\r\n".encode()

    response = client.post(
        "/api/segment", content=body(), headers={"content-type": f"multipart/form-data; boundary={boundary}"}
    )
    _assert_error(response, 413)


def test_reader_stops_reading_soon_after_the_limit() -> None:
    boundary = "lvsegboundary"
    read = {"chunks": 0}

    async def stream() -> AsyncIterator[bytes]:
        yield (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n').encode()
        for _ in range(40):
            read["chunks"] += 1
            yield b"\0" * MB

    with pytest.raises(ApiError) as caught:
        asyncio.run(
            read_multipart(f"multipart/form-data; boundary={boundary}", None, stream(), {"image"}, FormLimits())
        )
    assert caught.value.status_code == 413
    assert read["chunks"] <= 21


def test_lying_content_length_is_413_early(client: TestClient) -> None:
    response = client.post(
        "/api/segment",
        content=b"x" * 10,
        headers={"content-type": "multipart/form-data; boundary=b", "content-length": str(50 * MB)},
    )
    assert response.status_code == 413


def test_image_too_large_or_bomb_is_413_before_decoding(client: TestClient) -> None:
    body = _assert_error(_segment(client, image=png_with_header_only(8193, 100)), 413, "8192")
    assert body["detail"]["width"] == 8193
    _assert_error(_segment(client, image=png_with_header_only(8000, 8000)), 413, "decompression bomb")


@pytest.mark.parametrize("text", ["", "   \n\t "])
def test_empty_text_is_422(client: TestClient, text: str) -> None:
    _assert_error(_segment(client, text=text), 422, "empty")


def test_text_over_2000_characters_is_422(client: TestClient) -> None:
    body = _assert_error(_segment(client, text="a" * 2001), 422, "2001 characters", "2000")
    assert body["detail"]["field"] == "text"
    assert _segment(client, text="é" * 2000).status_code == 200  # characters, not bytes
    _assert_error(_segment(client, text="a" * 70000), 422, "too long")


@pytest.mark.parametrize("missing", ["image", "text"])
def test_missing_field_is_422_naming_it(client: TestClient, missing: str) -> None:
    if missing == "image":
        response = client.post("/api/segment", files={"text": (None, REPORT)})
    else:
        response = client.post("/api/segment", files={"image": ("a.png", png_bytes(), "image/png")})
    body = _assert_error(response, 422, f"missing field '{missing}'")
    assert body["detail"]["field"] == missing


def test_fastapi_validation_errors_use_the_same_shape(client: TestClient) -> None:
    body = _assert_error(_segment(client, query="?format=jpeg"), 422, "format")
    assert body["detail"][0]["loc"] == ["query", "format"]
    assert "input" not in body["detail"][0]


def test_malformed_multipart_and_duplicates_are_422(client: TestClient) -> None:
    headers = {"content-type": "multipart/form-data; boundary=xyz"}
    assert client.post("/api/segment", content=b"--xyz\r\nbroken", headers=headers).status_code == 422
    _assert_error(
        client.post("/api/segment", content=b"", headers={"content-type": "multipart/form-data"}), 422, "boundary"
    )
    response = client.post(
        "/api/segment",
        files=[("image", ("a.png", png_bytes(), "image/png")), ("text", (None, REPORT)), ("text", (None, REPORT))],
    )
    _assert_error(response, 422, "more than once")


def test_report_validates_its_extra_fields(client: TestClient) -> None:
    response = client.post(
        "/api/report", files={"image": ("a.png", png_bytes(), "image/png")}, data={"text": REPORT, "notes": "n" * 4001}
    )
    _assert_error(response, 422, "notes")
    _assert_error(
        client.post("/api/report", files={"image": ("a.png", b"nope", "image/png")}, data={"text": REPORT}), 415
    )


def test_unknown_route_is_json_404(client: TestClient) -> None:
    _assert_error(client.get("/api/nothing-here"), 404)


def test_server_keeps_serving_after_bad_requests(client: TestClient) -> None:
    bad = [
        _segment(client, image=b"nope"),
        _segment(client, image=png_bytes()[:40]),
        _segment(client, text=""),
        _segment(client, image=png_with_header_only(9000, 9000)),
        client.post("/api/segment"),
    ]
    assert all(400 <= response.status_code < 500 for response in bad)
    assert _segment(client).status_code == 200
    assert client.get("/healthz").status_code == 200


def test_image_only_model_accepts_missing_or_empty_text() -> None:
    with TestClient(create_app(FakeSegmenter(requires_text=False), allowed_hosts=TESTCLIENT_HOSTS)) as client:
        assert client.post("/api/segment", files={"image": ("a.png", png_bytes(), "image/png")}).status_code == 200
        assert _segment(client, text="").status_code == 200


def test_model_failure_is_a_json_500_and_the_server_goes_on() -> None:
    class Broken(FakeSegmenter):
        def predict(self, image: object, text: str | None, threshold: float = 0.5, **options: object) -> object:
            raise RuntimeError("boom")

    with TestClient(create_app(Broken(), allowed_hosts=TESTCLIENT_HOSTS), raise_server_exceptions=False) as client:
        response = _segment(client)
        assert response.status_code == 500
        assert response.json() == {"error": "internal error while processing the request", "detail": None}
        assert client.get("/healthz").status_code == 200


# --- API key, privacy, concurrency ---------------------------------------------------------------


def test_api_key_protects_every_api_route() -> None:
    key = "s3cret-key-0123456789"
    with TestClient(create_app(FakeSegmenter(), api_key=key)) as client:
        assert client.get("/healthz").json()["auth_required"] is True
        assert client.get("/").status_code == 200
        for method, path in (("get", "/api/model"), ("post", "/api/segment"), ("post", "/api/report")):
            for headers in ({}, {"X-API-Key": "wrong"}, {"X-API-Key": ""}):
                response = getattr(client, method)(path, headers=headers)
                _assert_error(response, 401, "API key")
        assert client.get("/api/model", headers={"X-API-Key": key}).status_code == 200
        files = {"image": ("a.png", png_bytes(), "image/png")}
        assert (
            client.post("/api/segment", files=files, data={"text": REPORT}, headers={"X-API-Key": key}).status_code
            == 200
        )
        assert (
            client.post("/api/report", files=files, data={"text": REPORT}, headers={"X-API-Key": key}).status_code
            == 200
        )
    with pytest.raises(ValueError):
        create_app(FakeSegmenter(), api_key="  ")


def test_uploads_are_never_written_to_disk(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("an upload was about to be written to a temporary file")

    for name in ("SpooledTemporaryFile", "TemporaryFile", "NamedTemporaryFile", "mkstemp", "mkdtemp"):
        monkeypatch.setattr(tempfile, name, refuse)
    noisy = np.random.default_rng(0).integers(0, 255, (1200, 1200), dtype=np.uint8)  # ~1.4 MB PNG
    data = png_bytes(noisy)
    assert len(data) > MB
    assert _segment(client, image=data, query="?format=png").status_code == 200


def test_logs_hold_no_report_text_or_image_data(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    secret = "ZEBRA-PATIENT-4711 consolidation"
    image = png_bytes()
    with caplog.at_level(logging.DEBUG):
        assert _segment(client, text=secret).status_code == 200
        assert (
            client.post(
                "/api/report",
                files={"image": ("Jane Doe.png", image, "image/png")},
                data={"text": secret, "notes": secret, "study_id": "ZEBRA"},
            ).status_code
            == 200
        )
        _segment(client, text=secret, image=b"not an image")
    logged = caplog.text
    assert "/api/segment" in logged  # requests are logged...
    assert "ZEBRA" not in logged and "Jane Doe" not in logged  # ...but not their content
    assert base64.b64encode(image)[:40].decode() not in logged


def test_identical_inputs_give_identical_masks_under_concurrency(client: TestClient) -> None:
    inputs = [png_bytes(), png_bytes(np.roll(lesion_image(), 7, axis=1))]

    def one(index: int) -> tuple[int, bytes]:
        response = _segment(client, image=inputs[index % 2], query="?format=png")
        assert response.status_code == 200
        return index % 2, np.asarray(Image.open(io.BytesIO(response.content))).tobytes()

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(one, range(24)))
    for which in (0, 1):
        masks = {mask for index, mask in results if index == which}
        assert len(masks) == 1
    assert {mask for _, mask in results if _ == 0} != {mask for _, mask in results if _ == 1}


def test_model_refusals_are_422_and_long_encoder_lists_are_summarised() -> None:
    from lvseg.errors import LvsegError

    class Picky(FakeSegmenter):
        def predict(self, image: object, text: str | None, threshold: float = 0.5, **options: object) -> object:
            raise LvsegError("this model reads English reports only")

    class Encoder:
        def config(self) -> dict:
            return {"type": "learned", "vocab": [f"word{n}" for n in range(500)], "dim": 64}

    with TestClient(create_app(Picky(text_encoder=Encoder()), allowed_hosts=TESTCLIENT_HOSTS)) as client:
        _assert_error(_segment(client), 422, "English reports only")
        assert client.get("/api/model").json()["text_encoder"] == {"type": "learned", "vocab": "500 entries", "dim": 64}
