"""Consistency warnings: a result against its report (count, sides, zones) and the image against the
training images (lvseg.inference.consistency, lvseg.data.input_statistics), in the library and the app."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from lvseg.data.input_statistics import InputStatistics, measure_input_statistics, measure_on_files
from lvseg.data.synth import generate_synthetic_dataset
from lvseg.inference.consistency import check_consistency, image_warnings, report_warnings
from lvseg.rendering import draw_lesion_numbers, label_lesions
from lvseg.serving.app import create_app
from lvseg.serving.fake import FakeSegmenter

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving_support import TESTCLIENT_HOSTS

UPPER_LEFT = "Unilateral pulmonary infection, one infected area, upper left lung."
SIZE = 100


def codes(warnings: list) -> list[str]:
    return [warning.code for warning in warnings]


def mask_with(*boxes: tuple[int, int, int, int]) -> np.ndarray:
    """(SIZE, SIZE) uint8 with each (row0, row1, col0, col1) box set."""
    mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
    for top, bottom, left, right in boxes:
        mask[top:bottom, left:right] = 1
    return mask


# Rows 18-82 are the lung fields (upper third 18-39); the patient's left lung is the image's right half.
PATIENT_LEFT_UPPER = (22, 35, 65, 80)
PATIENT_RIGHT_UPPER = (22, 35, 20, 35)
PATIENT_LEFT_LOWER = (65, 78, 65, 80)


def test_a_report_that_names_a_lesion_and_an_empty_mask() -> None:
    warnings = report_warnings(np.zeros((SIZE, SIZE), np.uint8), None, UPPER_LEFT)
    assert codes(warnings) == ["report-finding-not-found"]
    assert "upper left lung" in warnings[0].message and "no lesion" in warnings[0].message
    assert report_warnings(mask_with(PATIENT_LEFT_UPPER), None, UPPER_LEFT) == []


def test_a_negative_report_and_a_marked_region() -> None:
    assert codes(report_warnings(mask_with(PATIENT_LEFT_UPPER), None, "No pulmonary infection.")) == [
        "report-states-no-finding"
    ]
    assert report_warnings(np.zeros((SIZE, SIZE), np.uint8), None, "No pulmonary infection.") == []


def test_far_more_regions_than_the_report_counts() -> None:
    specks = [(24 + 4 * (k // 4), 26 + 4 * (k // 4), 62 + 4 * (k % 4), 64 + 4 * (k % 4)) for k in range(8)]
    warnings = report_warnings(mask_with(*specks), None, UPPER_LEFT)
    assert codes(warnings) == ["more-regions-than-report"] and "8 separate regions" in warnings[0].message
    # two regions for a report of one: within the tolerance (a lesion split in two is common)
    assert report_warnings(mask_with(PATIENT_LEFT_UPPER, (36, 38, 65, 80)), None, UPPER_LEFT) == []


def test_sides_follow_the_radiological_convention_and_the_dicom_orientation() -> None:
    wrong_side = mask_with(PATIENT_RIGHT_UPPER)
    warnings = report_warnings(wrong_side, None, UPPER_LEFT)
    assert codes(warnings) == ["region-outside-report"]
    assert "right lung" in warnings[0].message and "radiological convention" in warnings[0].message
    # PatientOrientation row direction L: the radiological convention, the same verdict
    assert codes(report_warnings(wrong_side, None, UPPER_LEFT, row_direction="L")) == ["region-outside-report"]
    # PatientOrientation row direction R: the patient's left is on the image's left
    assert report_warnings(wrong_side, None, UPPER_LEFT, row_direction="R") == []
    flipped = report_warnings(mask_with(PATIENT_LEFT_UPPER), None, UPPER_LEFT, row_direction="R")
    assert codes(flipped) == ["region-outside-report"] and "PatientOrientation" in flipped[0].message
    # a lateral view (rows toward anterior): sides cannot be told, nothing is claimed
    assert report_warnings(wrong_side, None, UPPER_LEFT, row_direction="A") == []


def test_zones_and_a_small_contradicting_speck() -> None:
    assert codes(report_warnings(mask_with(PATIENT_LEFT_LOWER), None, UPPER_LEFT)) == ["region-outside-report"]
    # a speck under 10 % of the marked area in the other lung is not worth a warning
    big = (20, 39, 55, 95)
    assert report_warnings(mask_with(big, (30, 32, 30, 32)), None, UPPER_LEFT) == []


def test_reports_outside_the_grammar_give_no_report_warning() -> None:
    histology = "Many dense nuclei, scattered, in an H&E stained tile."
    assert report_warnings(np.zeros((SIZE, SIZE), np.uint8), None, histology) == []
    assert report_warnings(mask_with(PATIENT_RIGHT_UPPER), None, "") == []


def _grey_chest_like(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    grey = np.clip(rng.normal(0.45, 0.12, size=(32, 32)), 0, 1).astype(np.float32)
    return np.repeat(grey[None], 3, axis=0)


def _stained_tile(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    tile = np.empty((3, 32, 32), dtype=np.float32)
    tile[0] = rng.uniform(0.7, 0.95, (32, 32))  # pink and purple: red and blue high, green low
    tile[1] = rng.uniform(0.3, 0.6, (32, 32))
    tile[2] = rng.uniform(0.6, 0.9, (32, 32))
    return tile


def test_an_image_unlike_the_training_images_is_flagged() -> None:
    statistics = measure_input_statistics(
        [_grey_chest_like(seed) for seed in range(60)], [_grey_chest_like(100 + seed) for seed in range(50)], 32
    )
    assert statistics.calibration_images == 50 and statistics.calibration_flagged <= 0.01 * 50
    assert statistics.threshold >= 1.0
    assert image_warnings(_grey_chest_like(7), statistics) == []
    warnings = image_warnings(_stained_tile(0), statistics)
    assert codes(warnings) == ["image-unlike-training"]
    blank = np.zeros((3, 32, 32), dtype=np.float32)  # a black image: another intensity distribution
    assert codes(image_warnings(blank, statistics)) == ["image-unlike-training"]
    # the record round-trips through a checkpoint's plain data, and a malformed one disables the check
    assert InputStatistics.from_dict(statistics.to_dict()) == statistics
    assert InputStatistics.from_dict({**statistics.to_dict(), "threshold": float("nan")}) is None
    assert InputStatistics.from_dict("junk") is None
    assert image_warnings(_stained_tile(0), None) == []


def test_the_calibration_flags_at_most_one_percent_of_the_validation_images() -> None:
    validation = [_grey_chest_like(200 + seed) for seed in range(300)]
    statistics = measure_input_statistics([_grey_chest_like(seed) for seed in range(100)], validation, 32)
    flagged = sum(statistics.is_unusual(image) for image in validation)
    assert flagged == statistics.calibration_flagged <= 3


def test_statistics_from_the_synthetic_set_flag_a_stained_tile(tmp_path: Path) -> None:
    from lvseg.data.layout import load_split

    generate_synthetic_dataset(tmp_path / "data", n=40, size=32, seed=0)
    train, val = load_split(tmp_path / "data", "train"), load_split(tmp_path / "data", "val")
    statistics = measure_on_files([s.image_path for s in train], [s.image_path for s in val], 32, 3)
    assert statistics.reference_images == len(train) and statistics.calibration_flagged == 0
    assert statistics.is_unusual(_stained_tile(1))


def test_the_segmenter_attaches_the_warnings(tmp_path: Path) -> None:
    from lvseg.inference import Segmenter
    from lvseg.models import create_model

    torch.manual_seed(0)
    model = create_model("unet", img_size=32, base_channels=4)
    statistics = measure_input_statistics([_grey_chest_like(seed) for seed in range(40)], [], 32)
    segmenter = Segmenter(model, hparams={"input_statistics": statistics.to_dict()}, device="cpu")
    tile = (_stained_tile(2).transpose(1, 2, 0) * 255).astype(np.uint8)
    assert "image-unlike-training" in codes(segmenter.predict(tile).consistency)
    grey = (_grey_chest_like(3)[0] * 255).astype(np.uint8)
    assert "image-unlike-training" not in codes(segmenter.predict(grey).consistency)
    assert Segmenter(model, device="cpu").predict(tile).consistency == []  # no record: no image check


def test_lesions_are_numbered_by_size_and_the_numbers_drawn() -> None:
    mask = mask_with((5, 8, 5, 8), (50, 90, 50, 90), (20, 30, 70, 80))
    labels, count = label_lesions(mask)
    areas = [int((labels == k).sum()) for k in range(1, count + 1)]
    assert count == 3 and areas == sorted(areas, reverse=True) == [1600, 100, 9]
    rgb = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)
    drawn = draw_lesion_numbers(rgb, labels, count)
    assert drawn[50:90, 50:90].any() and not rgb.any()  # "1" written on the largest lesion, input untouched


def _png(mask: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray((mask * 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_the_app_page_api_and_pdf_carry_the_warnings() -> None:
    pypdf = pytest.importorskip("pypdf", reason="pypdf is needed to read the PDF's text")
    with TestClient(create_app(FakeSegmenter(), allowed_hosts=TESTCLIENT_HOSTS)) as client:
        blank = _png(np.zeros((SIZE, SIZE), np.uint8))
        answer = client.post("/api/segment", files={"image": ("x.png", blank, "image/png")}, data={"text": UPPER_LEFT})
        assert answer.status_code == 200, answer.text
        found = answer.json()["consistency"]
        assert [item["code"] for item in found] == ["report-finding-not-found"]
        report = client.post(f"/api/results/{answer.json()['result_id']}/report", files={"study_id": (None, "S-1")})
        assert report.status_code == 200, report.text
        text = " ".join(
            " ".join(page.extract_text() for page in pypdf.PdfReader(io.BytesIO(report.content)).pages).split()
        )
        assert "Checks of this result" in text and "found no lesion" in text
        assert "Mean lesion probability" in text and "Confidence" not in text
        fine = _png(mask_with(PATIENT_LEFT_UPPER))
        answer = client.post("/api/segment", files={"image": ("y.png", fine, "image/png")}, data={"text": UPPER_LEFT})
        assert answer.json()["consistency"] == []
        png = client.post(
            "/api/segment?format=png", files={"image": ("x.png", blank, "image/png")}, data={"text": UPPER_LEFT}
        )
        assert png.headers["X-Consistency-Warnings"] == "report-finding-not-found"
        info = client.get("/api/model").json()
        assert info["example_reports"] and all(isinstance(text, str) for text in info["example_reports"])


def test_check_consistency_puts_the_image_warning_first() -> None:
    statistics = measure_input_statistics([_grey_chest_like(seed) for seed in range(20)], [], 32)
    warnings = check_consistency(np.zeros((32, 32), np.uint8), None, UPPER_LEFT, _stained_tile(3), statistics)
    assert codes(warnings) == ["image-unlike-training", "report-finding-not-found"]


def test_the_model_line_names_the_recorded_training_data() -> None:
    record = {"name": "qata", "training_images": 5716, "validation_images": 1429, "synthetic": False}
    segmenter = FakeSegmenter(hparams={"training_data": record, "validation_data": "the 1429 validation images"})
    with TestClient(create_app(segmenter, allowed_hosts=TESTCLIENT_HOSTS)) as client:
        info = client.get("/api/model").json()
    assert info["training_data"] == "5716 training images of 'qata'"
    synthetic = FakeSegmenter(hparams={"training_data": {**record, "name": "data", "synthetic": True}})
    with TestClient(create_app(synthetic, allowed_hosts=TESTCLIENT_HOSTS)) as client:
        assert "synthetic phantom images" in client.get("/api/model").json()["training_data"]


def test_the_app_reads_the_sides_from_the_dicom_orientation() -> None:
    import pydicom

    from serving_support import dicom_bytes

    pixels = np.zeros((SIZE, SIZE), dtype=np.uint16)
    top, bottom, left, right = PATIENT_LEFT_UPPER  # the image's right: the patient's left, radiologically
    pixels[top:bottom, left:right] = 4000

    def upload(orientation: list[str] | None) -> list[str]:
        dataset = pydicom.dcmread(io.BytesIO(dicom_bytes(pixels, center=[2000], width=[4000])))
        if orientation:
            dataset.PatientOrientation = orientation
        buffer = io.BytesIO()
        dataset.save_as(buffer, enforce_file_format=True)
        with TestClient(create_app(FakeSegmenter(), allowed_hosts=TESTCLIENT_HOSTS)) as client:
            answer = client.post(
                "/api/segment",
                files={"image": ("a.dcm", buffer.getvalue(), "application/dicom")},
                data={"text": UPPER_LEFT},
            )
        assert answer.status_code == 200, answer.text
        return [item["code"] for item in answer.json()["consistency"]]

    assert upload(None) == [] and upload(["L", "F"]) == []  # radiological: the box is in the left lung
    assert upload(["R", "F"]) == ["region-outside-report"]  # the patient's left on the image's left
