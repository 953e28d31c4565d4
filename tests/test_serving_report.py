"""Lesion measurements, colour-coded overlays and the PDF report."""

from __future__ import annotations

import io
import shutil

import numpy as np
import pytest

from lvseg.rendering import label_lesions, lesion_color, overlay_lesions
from lvseg.serving.rendering import measure
from lvseg.serving.report_pdf import DISCLAIMER, ReportContent, build_report_pdf, find_validation_dice


def test_lesions_are_eight_connected_and_measured() -> None:
    mask = np.zeros((10, 10), dtype=np.uint8)
    mask[1, 1] = mask[2, 2] = 1  # diagonal neighbours: one lesion
    mask[6:9, 6:9] = 1
    labels, count = label_lesions(mask)
    probability = np.where(mask > 0, 0.8, 0.1).astype(np.float32)
    result = measure(mask, probability, labels, count)
    assert count == 2 and result.lesions == 2
    assert result.area_px == 11 and result.area_percent == pytest.approx(11.0)
    assert result.confidence == pytest.approx(0.8)
    assert [lesion.area_px for lesion in result.lesion_list] == [9, 2]
    assert result.lesion_list[0].bbox == (6, 6, 3, 3)


def test_an_empty_mask_says_no_lesion_found_with_the_highest_probability() -> None:
    mask = np.zeros((4, 4), dtype=np.uint8)
    labels, count = label_lesions(mask)
    probability = np.zeros((4, 4), np.float32)
    probability[1, 2] = 0.31
    result = measure(mask, probability, labels, count)
    assert result.finding == "no lesion found" and result.max_probability == pytest.approx(0.31)
    assert result.confidence_text() == "no lesion found (highest probability 0.310)"


def test_lesion_colours_are_distinct() -> None:
    colours = [lesion_color(index) for index in range(40)]
    assert len(set(colours)) == 40


def test_overlay_colours_each_lesion_and_keeps_background() -> None:
    pixels = np.full((12, 12, 3), 50, dtype=np.uint8)
    mask = np.zeros((12, 12), dtype=np.uint8)
    mask[1:5, 1:5] = 1
    mask[7:11, 7:11] = 1
    labels, count = label_lesions(mask)
    overlay = overlay_lesions(pixels, labels, count)
    assert overlay.shape == pixels.shape and overlay.dtype == np.uint8
    assert np.array_equal(overlay[0, 11], [50, 50, 50])
    assert np.array_equal(overlay[1, 1], lesion_color(0))  # outline in full colour
    assert np.array_equal(overlay[7, 7], lesion_color(1))
    assert not np.array_equal(overlay[2, 2], overlay[8, 8])  # blended interiors differ too


def test_legend_colours_match_the_overlay() -> None:
    pixels = np.full((20, 20, 3), 40, dtype=np.uint8)
    mask = np.zeros((20, 20), dtype=np.uint8)
    mask[2:6, 2:6] = 1
    mask[10:17, 11:18] = 1
    labels, count = label_lesions(mask)
    overlay = overlay_lesions(pixels, labels, count)
    lesions = measure(mask, mask.astype(np.float32), labels, count).lesion_list
    assert len(lesions) == 2
    for lesion in lesions:
        x, y, _, _ = lesion.bbox  # the box's corner is on the lesion's outline, drawn in full colour
        assert lesion.colour == "#{:02x}{:02x}{:02x}".format(*overlay[y, x].tolist())


def test_find_validation_dice() -> None:
    assert find_validation_dice({"val_dice": 0.81, "val_loss": 0.3}) == 0.81
    assert find_validation_dice({"val/dice": 0.7}) == 0.7
    assert find_validation_dice({"best_val_dice_epoch": 0.6}) == 0.6
    assert find_validation_dice({"val_loss": 0.3}) is None
    assert find_validation_dice(None) is None


def test_pdf_holds_images_text_measurements_notes_and_disclaimer() -> None:
    pypdf = pytest.importorskip("pypdf", reason="pypdf is needed to read the PDF's text")
    pixels = np.zeros((300, 400, 3), dtype=np.uint8)
    mask = np.zeros((300, 400), dtype=np.uint8)
    mask[50:100, 50:150] = 1
    labels, count = label_lesions(mask)
    measurements = measure(mask, mask.astype(np.float32) * 0.9, labels, count)
    long_text = "Ground-glass opacity <right> & lower lobe. " * 40  # wraps over lines, markup escaped
    content = ReportContent(
        report_text=long_text,
        measurements=measurements,
        model_name="lvit",
        validation_dice=0.8123,
        image_size=(400, 300),
        image_format="dicom",
        inference_ms=12.3,
        study_id="A-1",
        notes="Patient stable.",
        recommendations="",
    )
    pdf = build_report_pdf(pixels, overlay_lesions(pixels, labels, count), content)
    assert pdf.startswith(b"%PDF")
    reader = pypdf.PdfReader(io.BytesIO(pdf))
    text = " ".join(" ".join(page.extract_text() for page in reader.pages).split())
    for expected in (
        "Ground-glass opacity <right> & lower lobe.",
        "lvit",
        "0.812",
        "5000 px",
        "A-1",
        "Patient stable.",
        DISCLAIMER,
        "DICOM, 400 x 300 px",
    ):
        assert expected in text, expected
    assert "Recommendations" not in text  # empty sections are left out
    assert sum(len(page.images) for page in reader.pages) == 2


def _embedded_fonts(pdf: bytes) -> dict[str, bool]:
    """{base font name: embedded} over every page's fonts (Type0 fonts through their descendants)."""
    import pypdf

    found: dict[str, bool] = {}
    for page in pypdf.PdfReader(io.BytesIO(pdf)).pages:
        for font in page["/Resources"]["/Font"].values():
            font = font.get_object()
            descriptor_owner = font["/DescendantFonts"][0].get_object() if "/DescendantFonts" in font else font
            descriptor = descriptor_owner.get("/FontDescriptor")
            descriptor = descriptor.get_object() if descriptor is not None else {}
            embedded = any(key in descriptor for key in ("/FontFile", "/FontFile2", "/FontFile3"))
            found[str(font["/BaseFont"])] = embedded
    return found


def _report(text: str, **fields: str) -> bytes:
    pixels = np.zeros((60, 80, 3), dtype=np.uint8)
    mask = np.zeros((60, 80), dtype=np.uint8)
    labels, count = label_lesions(mask)
    content = ReportContent(
        report_text=text,
        measurements=measure(mask, mask.astype(np.float32), labels, count),
        model_name="lvit",
        validation_dice=0.8,
        image_size=(80, 60),
        image_format="png",
        inference_ms=1.0,
        **fields,
    )
    return build_report_pdf(pixels, pixels, content)


@pytest.mark.parametrize(
    "text,language",
    [
        ("双侧肺部感染，两个感染区域。", "zh"),
        ("両側の肺に感染があります。", "ja"),
        ("양쪽 폐 감염, 두 개의 감염 부위.", "ko"),
    ],
)
def test_cjk_report_text_is_set_in_an_embedded_font_of_its_language(text: str, language: str) -> None:
    pytest.importorskip("pypdf", reason="pypdf is needed to read the PDF's fonts")
    from lvseg.serving.report_pdf import cjk_font, text_language

    assert text_language(text) == language
    name, embedded = cjk_font(language)
    if not embedded:
        pytest.skip("no TrueType CJK font on this machine (CI installs fonts-droid-fallback and the ja/ko fonts)")
    from reportlab.pdfbase import pdfmetrics

    face = pdfmetrics.getFont(name).face.name  # the PostScript name the PDF gives the font
    face = face.decode() if isinstance(face, bytes) else str(face)
    fonts = _embedded_fonts(_report(text))
    cjk = [font for font in fonts if font.endswith(face)]
    assert cjk and all(fonts[font] for font in cjk), fonts  # a subset of the font travels in the file
    assert not any("STSong" in font or "HeiseiMin" in font or "HYSMyeongJo" in font for font in fonts)
    if shutil.which("pdffonts"):  # poppler's view of the same file: the CJK font is embedded ("emb yes")
        import subprocess
        import tempfile

        with tempfile.NamedTemporaryFile(suffix=".pdf") as handle:
            handle.write(_report(text))
            handle.flush()
            listing = subprocess.run(["pdffonts", handle.name], capture_output=True, text=True, check=True).stdout
        row = next(line for line in listing.splitlines() if face in line)
        assert " yes " in row, listing


def test_empty_identifying_fields_read_alike_and_the_sign_off_stays_with_the_content() -> None:
    pypdf = pytest.importorskip("pypdf", reason="pypdf is needed to read the PDF's text")
    reader = pypdf.PdfReader(io.BytesIO(_report("Bilateral pulmonary infection.", notes="Stable. " * 150)))
    pages = [" ".join(page.extract_text().split()) for page in reader.pages]
    text = " ".join(pages)
    for label in ("Study ID not given", "Patient ID not given", "Referring clinician not given"):
        assert label in text
    last = pages[-1]
    assert "Signature and date" in last and "Stable." in last  # the sign-off never stands alone on a page
