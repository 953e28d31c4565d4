"""The app around a REAL (tiny, untrained) LViT checkpoint instead of the fake segmenter.

The checkpoint goes through the same path as production: ``save_inference_checkpoint`` ->
``lvseg.inference.load_model`` -> ``create_app``, and through ``lvseg serve`` itself.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from lvseg.serving.app import create_app  # noqa: E402
from serving_support import REPORT, TESTCLIENT_HOSTS, encode, lesion_image  # noqa: E402

TRAINING_REPORTS = [
    REPORT,
    "Unilateral pulmonary infection, one infected area, lower left lung.",
    "No lesion visible.",
]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lvseg.checkpoint import save_inference_checkpoint
    from lvseg.models import create_model
    from lvseg.text import create_text_encoder

    torch.manual_seed(0)
    encoder = create_text_encoder("learned", texts=TRAINING_REPORTS, dim=16, max_length=12)
    net = create_model("lvit", img_size=32, base_channels=8, text_dim=16, text_len=12, text_encoder=encoder)
    path = tmp_path_factory.mktemp("real-model") / "lvit.ckpt"
    save_inference_checkpoint(path, net, metrics={"val_dice": 0.5})
    return path


@pytest.fixture(scope="module")
def client(checkpoint: Path) -> Iterator[TestClient]:
    from lvseg.inference import load_model

    segmenter = load_model(checkpoint, device="cpu")
    with TestClient(create_app(segmenter, allowed_hosts=TESTCLIENT_HOSTS)) as test_client:
        yield test_client


def _segment(client: TestClient, image: bytes, text: str = REPORT, query: str = "") -> Any:
    return client.post(f"/api/segment{query}", files={"image": ("scan.png", image, "image/png")}, data={"text": text})


def _png(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def test_model_info_describes_the_real_checkpoint(client: TestClient) -> None:
    info = client.get("/api/model").json()
    assert info["model"] == "lvit" and info["input_size"] == 32 and info["requires_text"] is True
    assert info["metrics"] == {"val_dice": 0.5} and info["validation_dice"] == 0.5
    assert info["device"] == "cpu"
    assert info["text_encoder"] is not None and info["text_encoder"]["type"] == "learned"
    health = client.get("/healthz").json()
    assert health["model"] == "lvit" and health["ready"] is True


def test_segment_returns_results_at_the_original_resolution(client: TestClient) -> None:
    image = encode(lesion_image(height=50, width=70))  # not square, not the model's 32 x 32
    first = _segment(client, image)
    assert first.status_code == 200, first.text
    result = first.json()
    assert (result["width"], result["height"], result["model"]) == (70, 50, "lvit")
    mask, overlay = _png(result["mask"]), _png(result["overlay"])
    assert mask.size == (70, 50) and overlay.size == (70, 50)  # PIL size is (width, height)
    assert set(np.unique(np.asarray(mask))) <= {0, 255}
    assert np.asarray(overlay).shape == (50, 70, 3)
    assert 0 <= result["area_px"] <= 70 * 50 and result["inference_ms"] >= 0

    second = _segment(client, image).json()
    assert np.array_equal(np.asarray(_png(second["mask"])), np.asarray(mask))  # deterministic
    assert second["area_px"] == result["area_px"] and second["confidence"] == result["confidence"]

    png = _segment(client, image, query="?format=png")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png.content))), np.asarray(mask))


@pytest.mark.parametrize("text", ["", "  \n "])
def test_empty_text_is_422(client: TestClient, text: str) -> None:
    response = _segment(client, encode(lesion_image(height=50, width=70)), text=text)
    assert response.status_code == 422
    assert "empty" in response.json()["error"]


def test_lvseg_serve_loads_the_real_checkpoint(checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    from lvseg.cli.main import app

    calls: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app_, **kwargs: calls.update(kwargs, app=app_))
    result = CliRunner().invoke(app, ["serve", "--checkpoint", str(checkpoint), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    with TestClient(calls["app"], base_url="http://localhost") as served:
        assert served.get("/api/model").json()["model"] == "lvit"
        # without an API key, only the server's own names are accepted as Host (DNS rebinding)
        assert served.get("/api/model", headers={"host": "evil.example"}).status_code == 400


def _radiograph_values() -> np.ndarray:
    """12-bit values (max 4095, as many radiographs): dim noise and a bright square, 48 x 40."""
    rng = np.random.default_rng(12)
    values = rng.integers(0, 1200, size=(48, 40)).astype(np.uint16)
    values[10:30, 12:32] = 4095
    return values


def _write_case(kind: str, folder: Path) -> tuple[Path, tuple[int, int]]:
    """An image file of ``kind`` and the (height, width) it is viewed at."""
    values = _radiograph_values()
    if kind == "png16":
        path = folder / "radiograph.png"
        Image.fromarray(values).save(path)
        assert Image.open(path).mode == "I;16"
        return path, values.shape
    if kind == "dicom":
        from serving_support import dicom_bytes

        path = folder / "radiograph.dcm"
        path.write_bytes(dicom_bytes(values, center=[2048], width=[4096]))
        return path, values.shape
    eight_bit = (values >> 4).astype(np.uint8)
    if kind == "bmp":
        path = folder / "radiograph.bmp"
        Image.fromarray(eight_bit).convert("RGB").save(path)
        return path, values.shape
    path = folder / "rotated.jpg"  # stored sideways, EXIF orientation 6: viewed upright as 40 x 48 -> 48 x 40
    picture = Image.fromarray(np.ascontiguousarray(np.rot90(eight_bit, 1)))
    exif = picture.getexif()
    exif[0x0112] = 6
    picture.save(path, quality=95, exif=exif.tobytes())
    return path, values.shape


@pytest.mark.parametrize("kind", ["png16", "dicom", "bmp", "jpeg-exif"])
def test_every_format_gives_the_same_mask_through_the_app_and_lvseg_predict(
    checkpoint: Path, tmp_path: Path, kind: str
) -> None:
    """The app and ``lvseg predict`` decode with the same reader: same formats (DICOM, BMP), same orientation
    (EXIF), same values (a 16-bit PNG not 16x brighter in one of them), so the same mask."""
    from lvseg.cli.main import app as cli
    from lvseg.data.images import read_image
    from lvseg.inference import load_model

    image_path, shape = _write_case(kind, tmp_path)
    segmenter = load_model(checkpoint, device="cpu")
    # A threshold at the median probability of what training and `lvseg predict` feed the model gives a
    # mask with about half the pixels: any change of the input's brightness moves many of them.
    reference = segmenter.predict(np.transpose(read_image(image_path, channels=None), (1, 2, 0)), REPORT)
    threshold = float(np.median(reference.probability))
    assert 0.0 < threshold < 1.0

    out = tmp_path / "cli-mask.png"
    result = CliRunner().invoke(
        cli,
        [
            "predict",
            "-c",
            str(checkpoint),
            "-i",
            str(image_path),
            "-t",
            REPORT,
            "-o",
            str(out),
            "--threshold",
            repr(threshold),
            "--device",
            "cpu",
            "--backend",
            "eager",
        ],
    )  # the same arithmetic as the app's segmenter
    assert result.exit_code == 0, result.output
    cli_mask = np.asarray(Image.open(out))

    with TestClient(create_app(segmenter, threshold=threshold, allowed_hosts=TESTCLIENT_HOSTS)) as client:
        response = _segment(client, image_path.read_bytes(), query="?format=png")
    assert response.status_code == 200, response.text
    app_mask = np.asarray(Image.open(io.BytesIO(response.content)))

    assert cli_mask.shape == app_mask.shape == shape
    assert 0 < int((cli_mask > 0).sum()) < cli_mask.size  # a real mask, neither empty nor full
    assert np.array_equal(app_mask, cli_mask)
    assert np.array_equal(cli_mask > 0, reference.probability > threshold)


def _fields(**values: str) -> dict[str, tuple[None, str]]:
    """Plain form fields sent as multipart/form-data (the API's only request format)."""
    return {name: (None, value) for name, value in values.items()}


def _pdf_text(content: bytes) -> str:
    pypdf = pytest.importorskip("pypdf", reason="pypdf is needed to read the PDF's text")
    return " ".join(" ".join(page.extract_text() for page in pypdf.PdfReader(io.BytesIO(content)).pages).split())


def test_words_outside_the_vocabulary_are_reported_not_silently_ignored(client: TestClient) -> None:
    image = encode(lesion_image(height=50, width=70))
    known = _segment(client, image).json()
    assert known["text_warnings"] == [] and known["unknown_words"] == [] and known["report_text"] == REPORT
    unknown = _segment(client, image, text="Left lower lobe consolidation.").json()
    assert unknown["unknown_words"] == ["lobe", "consolidation"]
    assert "2 of 4 words are not in this model's vocabulary" in unknown["text_warnings"][0]
    mostly = _segment(client, image, text="Right middle lobe consolidation with effusion.").json()
    assert any("most of the report is unknown" in warning for warning in mostly["text_warnings"])
    assert mostly["report_parsed"] is None  # a learned vocabulary has no grammar


def test_the_pdf_of_a_result_id_shows_that_result(client: TestClient) -> None:
    """The page's sequence: segment image A with report A, then B; the PDF asked for A shows A."""
    first = _segment(client, encode(lesion_image(height=50, width=70)), text=REPORT).json()
    other_text = "Unilateral pulmonary infection, one infected area, lower left lung."
    second = _segment(client, encode(lesion_image(height=40, width=40)), text=other_text).json()
    assert first["result_id"] != second["result_id"]
    response = client.post(f"/api/results/{first['result_id']}/report", files=_fields(study_id="A-1"))
    assert response.status_code == 200, response.text
    text = _pdf_text(response.content)
    assert REPORT.split(",")[0] in text and other_text not in text
    assert f"{first['area_px']} px" in text and "70 x 50 px" in text and "A-1" in text

    assert client.post("/api/results/nopenopenopenopenope/report", files=_fields(notes="x")).status_code == 404
    assert client.post("/api/results/bad id!/report", files=_fields(notes="x")).status_code == 422
    extra = client.post(f"/api/results/{first['result_id']}/report", files=_fields(text=other_text))
    assert extra.status_code == 422 and "unknown field" in extra.json()["error"]  # a result is reported as it was


def test_a_report_outside_c2fvl_grammar_is_flagged(tmp_path: Path) -> None:
    from lvseg.checkpoint import save_inference_checkpoint
    from lvseg.inference import load_model
    from lvseg.models import create_model

    net = create_model("c2fvl", img_size=32, base_channels=8, unparsable_reports="zero")
    save_inference_checkpoint(tmp_path / "c2fvl.ckpt", net)
    served_app = create_app(load_model(tmp_path / "c2fvl.ckpt", device="cpu"), allowed_hosts=TESTCLIENT_HOSTS)
    with TestClient(served_app) as c2fvl:
        image = encode(lesion_image(height=40, width=40))
        parsed = _segment(c2fvl, image).json()
        assert parsed["report_parsed"] is True and parsed["text_warnings"] == []
        result = _segment(c2fvl, image, text="Left lower lobe consolidation.").json()
        assert result["report_parsed"] is False
        assert "does not follow the report grammar" in result["text_warnings"][0]
        pdf = c2fvl.post(f"/api/results/{result['result_id']}/report", files=_fields(study_id=""))
        assert "does not follow the report grammar" in _pdf_text(pdf.content)
