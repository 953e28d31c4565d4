"""The app with a multi-class checkpoint: /api/model lists the classes, the segment endpoints take a 'classes'
field and answer a label map with per-class results, the PDF has a per-class table; binary checkpoints are
unchanged. The fake's class t owns the t-th vertical band of the image (lvseg.serving.fake)."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from lvseg.data.classes import ClassInfo
from lvseg.serving.app import create_app
from lvseg.serving.fake import FakeSegmenter
from serving_support import REPORT, TESTCLIENT_HOSTS, dicom_bytes, lesion_image, png_bytes

TABLE = [ClassInfo(1, "disc"), ClassInfo(2, "ring", "{name} in {modality}")]


def _client(**options: object) -> TestClient:
    return TestClient(create_app(FakeSegmenter(**options), allowed_hosts=TESTCLIENT_HOSTS))


@pytest.fixture(scope="module")
def client() -> TestClient:
    return _client(class_table=TABLE)


def _segment(client: TestClient, image: bytes, query: str = "", **fields: str) -> object:
    return client.post(f"/api/segment{query}", files={"image": ("a.png", image)}, data=fields)


def _label_map(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))))


def test_model_info_lists_the_classes_with_colours_and_prompts(client: TestClient) -> None:
    info = client.get("/api/model").json()
    assert info["classes"] == [
        {"value": 1, "name": "disc", "colour": "#e6194b", "prompt": "disc"},
        {"value": 2, "name": "ring", "colour": "#3cb44b", "prompt": "ring in an image"},
    ]
    assert info["classes_required"] is False
    binary = _client().get("/api/model").json()
    assert binary["classes"] == [] and binary["classes_required"] is False


def test_segment_with_classes_answers_a_label_map_and_per_class_areas(client: TestClient) -> None:
    # lesion_image: a bright rectangle in the left half (disc's band), one in the right half (ring's)
    answer = _segment(client, png_bytes(), classes="ring, DISC")  # no report needed: each class has its prompt
    assert answer.status_code == 200, answer.text
    body = answer.json()
    label_map = _label_map(body["mask"])
    assert label_map.shape == (64, 96) and set(np.unique(label_map)) == {0, 1, 2}
    image = lesion_image()
    expected = np.where(image > 127, np.where(np.arange(96) < 48, 1, 2)[None, :], 0)
    np.testing.assert_array_equal(label_map, expected)
    by_name = {row["name"]: row for row in body["classes"]}
    assert list(by_name) == ["disc", "ring"]  # table order
    assert by_name["disc"]["area_px"] == 12 * 20 and by_name["ring"]["area_px"] == 16 * 30
    assert by_name["disc"]["finding"] == "disc found" and by_name["disc"]["regions"] == 1
    assert by_name["ring"]["prompt"] == "ring in an image" and by_name["ring"]["colour"] == "#3cb44b"
    assert by_name["disc"]["area_percent"] == pytest.approx(100 * 240 / (64 * 96), abs=1e-3)
    assert body["area_px"] == 240 + 480 and body["lesion_details"] == []
    overlay = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["overlay"]))).convert("RGB")).astype(int)
    assert overlay[14, 20, 0] > overlay[14, 20, 1]  # disc in red-ish #e6194b
    assert overlay[48, 75, 1] > overlay[48, 75, 0]  # ring in green #3cb44b


def test_an_absent_class_is_reported_not_found(client: TestClient) -> None:
    left_only = np.full((40, 80), 20, dtype=np.uint8)
    left_only[10:20, 5:25] = 230
    body = _segment(client, png_bytes(left_only), classes="all").json()
    ring = body["classes"][1]
    assert ring["area_px"] == 0 and ring["finding"].startswith("no ring found (highest probability")
    assert ring["mean_probability"] is None


def test_unknown_classes_are_422_naming_them_and_the_accepted_names(client: TestClient) -> None:
    answer = _segment(client, png_bytes(), classes="disc,lung,liver")
    assert answer.status_code == 422
    body = answer.json()
    assert "'lung', 'liver'" in body["error"] and "disc, ring" in body["error"]
    assert body["detail"] == {"field": "classes", "unknown": ["lung", "liver"], "accepted": ["disc", "ring"]}
    too_long = _segment(client, png_bytes(), classes="x" * 3000)
    assert too_long.status_code == 422 and too_long.json()["detail"]["field"] == "classes"


def test_without_classes_a_multi_class_text_model_segments_what_the_report_says(client: TestClient) -> None:
    missing = _segment(client, png_bytes())
    assert missing.status_code == 422 and "report" in missing.json()["error"]
    body = _segment(client, png_bytes(), text=REPORT).json()
    assert body["classes"] is None and body["lesions"] == 2
    assert set(np.unique(_label_map(body["mask"]))) == {0, 255}


def test_a_model_with_one_channel_per_class_needs_a_choice() -> None:
    client = _client(class_table=TABLE, output_classes=2, requires_text=False)
    assert client.get("/api/model").json()["classes_required"] is True
    answer = _segment(client, png_bytes())
    assert answer.status_code == 422 and answer.json()["detail"]["accepted"] == ["disc", "ring"]
    assert _segment(client, png_bytes(), classes="all").status_code == 200


def test_the_png_format_is_the_label_map_with_per_class_headers(client: TestClient) -> None:
    answer = _segment(client, png_bytes(), query="?format=png", classes="all")
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/png"
    assert answer.headers["x-class-areas-px"] == "disc=240,ring=480"
    assert set(np.unique(np.asarray(Image.open(io.BytesIO(answer.content))))) == {0, 1, 2}


def test_a_binary_checkpoint_takes_no_classes_field() -> None:
    answer = _segment(_client(), png_bytes(), text=REPORT, classes="disc")
    assert answer.status_code == 422 and "'classes'" in answer.json()["error"]


def test_areas_in_mm2_for_a_dicom_with_pixel_spacing(client: TestClient) -> None:
    pixels = lesion_image().astype(np.uint16) * 200
    answer = client.post(
        "/api/segment",
        files={"image": ("a.dcm", dicom_bytes(pixels, pixel_spacing=(0.5, 0.5)), "application/dicom")},
        data={"classes": "all"},
    )
    assert answer.status_code == 200, answer.text
    for row in answer.json()["classes"]:
        assert row["area_mm2"] == pytest.approx(row["area_px"] * 0.25)


def test_the_schema_declares_the_classes_field_only_for_a_multi_class_checkpoint(client: TestClient) -> None:
    def fields(app_client: TestClient) -> tuple[dict[str, object], list[str]]:
        schema = app_client.get("/openapi.json").json()
        body = schema["paths"]["/api/segment"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
        return body["properties"], body["required"]

    properties, required = fields(client)
    assert "classes" in properties and "disc, ring" in properties["classes"]["description"]
    assert required == ["image"]  # with classes chosen the report may be empty
    binary_properties, binary_required = fields(_client())
    assert "classes" not in binary_properties and binary_required == ["image", "text"]


def _pdf_text(content: bytes) -> str:
    pypdf = pytest.importorskip("pypdf", reason="pypdf is needed to read the PDF's text")
    return " ".join(" ".join(page.extract_text() for page in pypdf.PdfReader(io.BytesIO(content)).pages).split())


def test_the_pdf_lists_each_class_in_a_table(client: TestClient) -> None:
    left_only = np.full((40, 80), 20, dtype=np.uint8)
    left_only[10:20, 5:25] = 230
    body = _segment(client, png_bytes(left_only), classes="all", text="Kept on the report.").json()
    answer = client.post(f"/api/results/{body['result_id']}/report", files={"study_id": (None, "S-7")})
    assert answer.status_code == 200 and answer.content.startswith(b"%PDF")
    text = _pdf_text(answer.content)
    assert "Kept on the report." in text and "one colour per class" in text
    assert "Class Colour Finding" in text and "Asked as" in text
    assert "disc Found 200 (6.25 %) 1" in text  # 10 x 20 pixels of 40 x 80
    assert "ring Not found 0 (0.00 %) 0" in text and "ring in an image" in text
    assert "Found disc" in text  # the summary row: the classes found
    one_shot = client.post(
        "/api/report", files={"image": ("a.png", png_bytes())}, data={"classes": "ring", "study_id": "S-8"}
    )
    assert one_shot.status_code == 200
    shot = _pdf_text(one_shot.content)
    assert "ring Found 480" in shot and "disc Found" not in shot
