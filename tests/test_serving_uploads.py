"""Upload decoding: format sniffing, size checks before decoding, DICOM windowing; and the upload endpoints' answers
to malformed requests and corrupt files (no 5xx, JSON for every refusal)."""

from __future__ import annotations

import json
import re
import socket
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from lvseg.data.dicom import window_dicom
from lvseg.data.images import read_image, to_display_rgb8
from lvseg.serving.app import create_app
from lvseg.serving.errors import ApiError
from lvseg.serving.fake import FakeSegmenter
from lvseg.serving.uploads import ImageLimits, decode_image, sniff_format
from serving_support import (
    REPORT,
    TESTCLIENT_HOSTS,
    dicom_bytes,
    encode,
    float_tiff,
    jpeg_cut_in_half,
    jpeg_with_size_header,
    lesion_image,
    png_bytes,
    png_with_header_only,
    running_server,
    textured_image,
)


def _status(data: bytes, limits: ImageLimits | None = None) -> int:
    with pytest.raises(ApiError) as caught:
        decode_image(data, limits)
    return caught.value.status_code


@pytest.mark.parametrize("fmt, kind", [("PNG", "png"), ("JPEG", "jpeg"), ("TIFF", "tiff")])
def test_decodes_common_formats_to_rgb8(fmt: str, kind: str) -> None:
    image = lesion_image()
    decoded = decode_image(encode(image, fmt))
    assert decoded.format == kind
    assert decoded.pixels.shape == (64, 96, 3) and decoded.pixels.dtype == np.uint8
    tolerance = 40 if kind == "jpeg" else 0  # JPEG rings at sharp edges
    assert np.abs(decoded.pixels[:, :, 0].astype(int) - image).max() <= tolerance


def test_format_comes_from_content_not_name() -> None:
    assert sniff_format(png_bytes()) == "png"
    assert sniff_format(encode(lesion_image(), "JPEG")) == "jpeg"
    assert sniff_format(b"GIF89a....") is None
    assert sniff_format(b"\0" * 128 + b"DICM") == "dicom"


def test_sixteen_bit_png_is_scaled_to_its_maximum() -> None:
    image = np.zeros((8, 8), dtype=np.uint16)
    image[0, 0] = 4000
    image[1, 1] = 2000
    decoded = decode_image(encode(image, "PNG"))
    assert decoded.pixels[0, 0, 0] == 255 and decoded.pixels[1, 1, 0] == 128 and decoded.pixels[2, 2, 0] == 0


def twelve_bit_image() -> np.ndarray:
    """uint16 (H, W) with 12-bit values (max 4095), as a radiograph in a 16-bit PNG: a bright square on noise."""
    image = np.random.default_rng(3).integers(0, 1500, size=(20, 24)).astype(np.uint16)
    image[5:12, 6:14] = 4095
    return image


def _test_images() -> dict[str, np.ndarray]:
    rgb = np.random.default_rng(4).integers(0, 256, size=(20, 24, 3)).astype(np.uint8)
    rgba = np.concatenate([rgb, np.full((20, 24, 1), 90, dtype=np.uint8)], axis=2)
    return {"gray8": lesion_image(), "rgb": rgb, "rgba": rgba, "gray16": twelve_bit_image()}


@pytest.mark.parametrize("kind", ["gray8", "rgb", "rgba", "gray16"])
def test_upload_decoder_gives_exactly_the_array_of_read_image(kind: str) -> None:
    """The app decodes with the reader of training and ``lvseg predict``: identical float arrays."""
    data = encode(_test_images()[kind], "PNG")
    decoded = decode_image(data)
    expected = read_image(data, channels=None)
    assert decoded.array.dtype == np.float32 and decoded.array.shape == expected.shape
    assert np.array_equal(decoded.array, expected)
    for channels in (1, 3):  # what a 1- or 3-channel model reads from what the app passes it
        assert np.array_equal(read_image(decoded.model_input, channels=channels), read_image(data, channels=channels))
    if kind != "gray16":  # 8-bit images are shown as they are
        assert np.array_equal(decoded.pixels, to_display_rgb8(expected))


@pytest.mark.parametrize("kind", ["gray8", "rgb", "gray16"])
def test_uploads_keep_their_own_samples_and_are_shown_as_from_the_float_array(kind: str) -> None:
    """The model is given the file's samples in their own dtype (read into the float array by its reader), not a
    float copy; the display is what the float array gives (a 16-bit image stretched to its own maximum)."""
    decoded = decode_image(encode(_test_images()[kind], "PNG"))
    assert decoded.model_input.dtype == (np.uint16 if kind == "gray16" else np.uint8)
    array = decoded.array
    if kind == "gray16":
        array = array / float(array.max())
    assert np.array_equal(decoded.pixels, to_display_rgb8(array))
    kept = decoded.without_model_input()  # what a result keeps: the size, not the samples
    assert (kept.width, kept.height) == (decoded.width, decoded.height) and kept.samples.strides == (0, 0, 0)


def test_the_heatmap_in_bands_is_the_heatmap_of_the_whole_map() -> None:
    from lvseg.rendering import probability_heatmap
    from lvseg.serving.service import HEATMAP_BAND_ROWS, _heatmap

    probability = np.random.default_rng(3).random((2 * HEATMAP_BAND_ROWS + 5, 7)).astype(np.float32)
    probability[0, :3] = (0.0, 1.0, 0.5)
    assert np.array_equal(_heatmap(probability), probability_heatmap(probability))


def test_sixteen_bit_png_reaches_the_model_scaled_by_65535_not_its_maximum() -> None:
    decoded = decode_image(encode(twelve_bit_image(), "PNG"))
    assert decoded.array.max() == np.float32(4095 / 65535)  # 1/16: as in training, not stretched to 1
    assert decoded.pixels.max() == 255  # the display alone is stretched


def test_rgba_and_palette_images_become_rgb() -> None:
    rgba = np.zeros((4, 5, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    assert decode_image(encode(rgba, "PNG")).pixels.shape == (4, 5, 3)


@pytest.mark.parametrize("data", [b"", b"hello, I am text", b"GIF89a" + b"\0" * 100, b"%PDF-1.7\n"])
def test_not_an_image_is_415_or_empty_422(data: bytes) -> None:
    assert _status(data) == (422 if not data else 415)


def test_corrupt_and_truncated_files_are_422() -> None:
    good = png_bytes()
    assert _status(good[: len(good) // 2]) == 422
    assert _status(encode(lesion_image(), "JPEG")[:200]) == 422
    assert _status(b"\x89PNG\r\n\x1a\n" + b"\0" * 50) == 422
    assert _status(b"II*\x00" + b"\xff" * 40) == 422
    assert _status(b"\0" * 128 + b"DICM" + b"\x02\x00garbage") == 422


def test_sizes_are_checked_from_the_header_before_decoding() -> None:
    # The pixel data of these files is garbage: decoding would give 422, the header check gives 413.
    assert _status(png_with_header_only(8193, 16)) == 413
    assert _status(png_with_header_only(16, 9000)) == 413
    assert _status(png_with_header_only(8000, 8000)) == 413  # 64 Mpx: a decompression bomb
    assert _status(png_with_header_only(100, 100)) == 422
    assert _status(png_bytes(), ImageLimits(max_side=8192, max_pixels=1000)) == 413


def test_pil_decompression_bomb_error_is_413() -> None:
    assert _status(png_with_header_only(60000, 60000), ImageLimits(max_side=100000, max_pixels=10**12)) == 413


def test_dicom_monochrome2_uses_rescale_and_first_window_value() -> None:
    stored = np.array([[0, 100, 200, 300]], dtype=np.uint16)
    # Modality values = stored * 2 - 100 = [-100, 100, 300, 500]; window centre 200, width 401 -> [0, 400].
    data = dicom_bytes(stored, slope=2, intercept=-100, center=[200, 40], width=[401, 80])
    decoded = decode_image(data)
    assert decoded.format == "dicom"
    assert decoded.pixels.shape == (1, 4, 3)
    assert decoded.pixels[0, :, 0].tolist() == [0, 64, 192, 255]


def test_dicom_monochrome1_is_inverted_and_unwindowed_uses_full_range() -> None:
    stored = np.array([[0, 50, 100]], dtype=np.uint16)
    mono2 = decode_image(dicom_bytes(stored)).pixels[0, :, 0].tolist()
    mono1 = decode_image(dicom_bytes(stored, photometric="MONOCHROME1")).pixels[0, :, 0].tolist()
    assert mono2 == [0, 128, 255]
    assert mono1 == [255, 128, 0]


def test_dicom_size_is_checked_before_pixels_are_decoded() -> None:
    data = dicom_bytes(np.zeros((20, 30), dtype=np.uint16))
    assert _status(data, ImageLimits(max_side=25)) == 413


def test_dicom_truncated_pixel_data_is_422() -> None:
    data = dicom_bytes(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64))
    assert _status(data[:-4000]) == 422


def test_window_function_matches_the_dicom_standard() -> None:
    values = np.array([-1000.0, 39.5, 40.0, 1000.0])
    out = window_dicom(values, center=40.0, width=400.0)
    assert out[0] == 0.0 and out[-1] == 1.0 and 0.49 < out[1] < 0.51


# --- hardening (issue 22): no 5xx, JSON for every refusal, no confident answer on corrupt input -------------

LONG_BOUNDARY = "b" * 300  # python-multipart accepts at most 256 characters


def _multipart(boundary: str, fields: dict[str, str]) -> bytes:
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        for name, value in fields.items()
    ]
    return ("".join(parts) + f"--{boundary}--\r\n").encode()


def _client(requires_text: bool = True) -> TestClient:
    return TestClient(
        create_app(FakeSegmenter(requires_text=requires_text), allowed_hosts=TESTCLIENT_HOSTS),
        raise_server_exceptions=False,
    )


def _segment_upload(client: TestClient, image: bytes, text: str = REPORT) -> Any:
    return client.post("/api/segment", files={"image": ("scan", image, "image/jpeg")}, data={"text": text})


@pytest.mark.parametrize("path", ["/api/segment", "/api/report", "/api/results/{result_id}/report"])
def test_a_boundary_longer_than_the_parser_takes_is_a_json_400(path: str) -> None:
    with _client() as client:
        result_id = _segment_upload(client, png_bytes()).json()["result_id"]
        response = client.post(
            path.format(result_id=result_id),
            content=_multipart(LONG_BOUNDARY, {"text": REPORT}),
            headers={"content-type": f"multipart/form-data; boundary={LONG_BOUNDARY}"},
        )
    assert response.status_code == 400, response.text
    body = response.json()
    assert set(body) == {"error", "detail"}
    assert "boundary (300 characters)" in body["error"] and "256" in body["error"]
    assert body["detail"] == {"field": "content-type", "boundary_length": 300}


def _http(sock: socket.socket, request: bytes) -> tuple[int, bytes]:
    """Send one request on a keep-alive connection; (status, body) of its answer."""
    sock.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection"
        body += chunk
    return int(head.split()[1]), body


def test_after_a_long_boundary_the_keep_alive_connection_still_serves() -> None:
    body = _multipart(LONG_BOUNDARY, {"text": REPORT})
    request = (
        f"POST /api/segment HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary={LONG_BOUNDARY}"
        f"\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    with running_server(create_app(FakeSegmenter())) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            status, answer = _http(sock, request)
            assert status == 400 and json.loads(answer)["detail"]["boundary_length"] == 300
            status, answer = _http(sock, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert status == 200 and json.loads(answer)["status"] == "ok"


def test_a_host_the_server_does_not_answer_to_is_a_json_400() -> None:
    with _client() as client:
        for path in ("/healthz", "/api/model", "/"):
            response = client.get(path, headers={"host": "rebind.example"})
            assert response.status_code == 400 and response.headers["content-type"] == "application/json"
            assert response.json() == {
                "error": "the Host header 'rebind.example' names no host this server answers to; use one of its own "
                "names (lvseg serve --allowed-host NAME adds one)",
                "detail": {"host": "rebind.example"},
            }
            assert response.headers["x-content-type-options"] == "nosniff"
        assert client.get("/healthz").status_code == 200  # the allowed name still works


@pytest.mark.parametrize(
    "case", ["cut-in-half", "size-header-8000x6000", "size-header-2000x2000", "size-header-4096x4096"]
)
def test_a_corrupt_jpeg_is_refused_not_segmented(case: str) -> None:
    if case == "cut-in-half":
        data, words = jpeg_cut_in_half(), "uniform grey (128)"
    elif case == "size-header-8000x6000":  # about 2 KB claiming 48 megapixels
        data, words = jpeg_with_size_header(8000, 6000), "says 8000x6000 pixels"
    elif case == "size-header-2000x2000":  # enough bytes for the size, but its data ends after 256 rows
        data, words = jpeg_with_size_header(2000, 2000, textured_image()), "uniform grey (128)"
    else:  # the same, decoded reduced (JPEG draft) as the app decodes images over 2048 px
        data, words = jpeg_with_size_header(4096, 4096, textured_image(512, 512)), "uniform grey (128)"
    assert _status(data) == 422
    with _client() as client:
        response = _segment_upload(client, data)
    assert response.status_code == 422, response.text
    assert response.json()["error"].startswith("the JPEG file is corrupt or truncated: ")
    assert words in response.json()["error"] and response.json()["detail"] == {"field": "image"}


def test_a_complete_jpeg_is_still_segmented() -> None:
    with _client() as client:
        assert _segment_upload(client, encode(textured_image(), "JPEG", quality=90)).status_code == 200


def test_a_float_tiff_without_a_finite_value_is_422() -> None:
    with pytest.raises(ApiError) as caught:
        decode_image(float_tiff(np.full((8, 8), np.inf)))
    assert caught.value.status_code == 422
    assert caught.value.error == (
        "the TIFF file is corrupt or truncated: none of its 64 pixel values is a finite number "
        "(all are NaN or infinite)"
    )


@pytest.mark.parametrize(
    "header", [{"center": float("nan"), "width": float("nan")}, {"slope": float("inf"), "intercept": 0.0}]
)
def test_a_dicom_with_non_finite_window_or_rescale_decodes_its_full_range(header: dict[str, float]) -> None:
    stored = np.arange(64, dtype=np.uint16).reshape(8, 8) * 10
    decoded = decode_image(dicom_bytes(stored, **header))
    assert np.array_equal(decoded.array, decode_image(dicom_bytes(stored)).array)  # as without those elements
    assert decoded.pixels.min() == 0 and decoded.pixels.max() == 255  # not an all-black image
    named = "WindowCenter" if "center" in header else "RescaleSlope"
    assert any(named in note and "not a finite number" in note for note in decoded.notices), decoded.notices
    assert decode_image(dicom_bytes(stored)).notices == ()


def test_the_app_shows_how_a_dicom_header_was_not_used_first_among_the_warnings() -> None:
    stored = np.arange(64, dtype=np.uint16).reshape(8, 8) * 10
    with _client() as client:
        broken = _segment_upload(client, dicom_bytes(stored, center=float("nan"), width=float("nan")))
        intact = _segment_upload(client, dicom_bytes(stored))
    assert broken.status_code == 200 and intact.status_code == 200, broken.text
    first = broken.json()["consistency"][0]
    assert first["code"] == "image-header-value-ignored" and "WindowCenter is nan" in first["message"]
    assert all(item["code"] != "image-header-value-ignored" for item in intact.json()["consistency"])


@pytest.mark.parametrize("text", ["\x00", "\x00\x00\x00", "...", "\u200b", "\ufeff", "\ufeff \u200b.", "\u00a0", " "])
@pytest.mark.parametrize("path", ["/api/segment", "/api/report"])
def test_a_report_without_letters_or_digits_is_refused_like_an_empty_one(text: str, path: str) -> None:
    with _client() as client:
        response = client.post(path, files={"image": ("a.png", png_bytes(), "image/png")}, data={"text": text})
    assert response.status_code == 422, response.text
    assert response.json() == {
        "error": "the report text is empty or it holds no letters or digits; this model needs the clinician's report",
        "detail": {"field": "text"},
    }


def test_an_image_only_model_ignores_a_report_without_letters() -> None:
    with _client(requires_text=False) as client:
        assert _segment_upload(client, png_bytes(), text="...\u200b").status_code == 200
