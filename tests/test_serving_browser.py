"""End to end in a real headless Chromium: upload, type the report, Segment, overlay, PDF download.

Needs Debian's ``chromium`` at /usr/bin/chromium (``.ci/run`` installs it) and the Playwright
Python package; nothing is downloaded. Skips with the reason when either is missing.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from serving_support import REPORT, png_bytes, running_server

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # the fixture skips with the reason
    expect = sync_playwright = None

from lvseg.serving.app import create_app
from lvseg.serving.fake import FakeSegmenter

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
]

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not CHROMIUM.exists():
        pytest.skip(f"Debian's chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    if sync_playwright is None:
        pytest.skip("the playwright Python package is not installed")
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield instance
        finally:
            instance.close()


@pytest.fixture
def base_url() -> Iterator[str]:
    with running_server(create_app(FakeSegmenter())) as url:
        yield url


def test_segment_and_download_pdf_in_the_browser(browser: object, base_url: str, tmp_path: Path) -> None:
    image_path = tmp_path / "chest.png"
    image_path.write_bytes(png_bytes())
    context = browser.new_context(accept_downloads=True)  # type: ignore[attr-defined]
    page = context.new_page()
    console_errors: list[str] = []
    page.on("console", lambda message: console_errors.append(message.text) if message.type == "error" else None)
    try:
        page.goto(base_url + "/")
        expect(page.locator("#model-info")).to_contain_text("validation Dice 0.500")
        page.get_by_label("Image (PNG, JPEG, TIFF, BMP or DICOM").set_input_files(str(image_path))
        page.get_by_label("Report text").fill(REPORT)
        page.get_by_role("button", name="Segment").click()

        overlay = page.locator("#overlay-image")
        overlay.wait_for(state="visible", timeout=15000)
        expect(overlay).to_have_attribute("src", re.compile(r"^blob:"))
        expect(overlay).to_have_js_property("naturalWidth", 96)  # decoded at the original resolution
        expect(page.locator("#m-lesions")).to_have_text("2")
        assert page.locator("#lesion-legend li").count() == 2
        assert page.locator("#error").is_hidden()

        page.locator("#opacity").fill("40")
        expect(overlay).to_have_css("opacity", "0.4")

        with page.expect_download(timeout=15000) as download_info:
            page.get_by_role("button", name="Download PDF report").click()
        pdf_path = tmp_path / "report.pdf"
        download_info.value.save_as(pdf_path)
        data = pdf_path.read_bytes()
        assert data.startswith(b"%PDF")
        pypdf = pytest.importorskip("pypdf", reason="pypdf is needed to read the PDF's text")
        text = " ".join(" ".join(p.extract_text() for p in pypdf.PdfReader(io.BytesIO(data)).pages).split())
        assert REPORT in text
        assert console_errors == []  # e.g. no Content-Security-Policy violations
    finally:
        context.close()


def _pdf_text(data: bytes) -> str:
    pypdf = pytest.importorskip("pypdf", reason="pypdf is needed to read the PDF's text")
    return " ".join(" ".join(p.extract_text() for p in pypdf.PdfReader(io.BytesIO(data)).pages).split())


def test_the_pdf_always_describes_the_result_on_screen(browser: object, base_url: str, tmp_path: Path) -> None:
    """Segment A; choose B and change the report: A's result leaves the screen (no PDF of a mixture can be
    asked for); segment B: the PDF shows B's image size and report; an error clears the success message."""
    first, second = tmp_path / "a.png", tmp_path / "b.png"
    first.write_bytes(png_bytes())  # 96 x 64, two lesions
    wide = np.full((40, 120), 30, dtype=np.uint8)
    wide[10:30, 20:50] = 220
    second.write_bytes(png_bytes(wide))  # 120 x 40, one lesion
    other_report = "Unilateral pulmonary infection, one infected area, lower left lung."
    context = browser.new_context(accept_downloads=True)  # type: ignore[attr-defined]
    page = context.new_page()
    image_input = page.get_by_label("Image (PNG, JPEG, TIFF, BMP or DICOM")
    try:
        page.goto(base_url + "/")
        image_input.set_input_files(str(first))
        page.get_by_label("Report text").fill(REPORT)
        page.get_by_role("button", name="Segment").click()
        expect(page.locator("#m-lesions")).to_have_text("2")
        expect(page.locator("#m-report")).to_have_text(REPORT)

        image_input.set_input_files(str(second))  # a new file: A's result must not stay on screen
        expect(page.locator("#results")).to_be_hidden()
        expect(page.locator("#status")).to_contain_text("press Segment")
        page.get_by_label("Report text").fill(other_report)
        page.get_by_role("button", name="Segment").click()
        expect(page.locator("#m-lesions")).to_have_text("1")
        with page.expect_download(timeout=15000) as download_info:
            page.get_by_role("button", name="Download PDF report").click()
        download_info.value.save_as(tmp_path / "b.pdf")
        text = _pdf_text((tmp_path / "b.pdf").read_bytes())
        assert other_report in text and REPORT not in text and "120 x 40 px" in text
        expect(page.locator("#status")).to_have_text("PDF report downloaded.")

        page.get_by_label("Report text").fill(REPORT + " Edited.")  # editing the report clears the result too
        expect(page.locator("#results")).to_be_hidden()
        page.get_by_label("Report text").fill("")
        page.get_by_role("button", name="Segment").click()  # an error: no success message may remain
        expect(page.get_by_role("alert")).to_contain_text("Type the report text")
        expect(page.locator("#status")).to_have_text("")
    finally:
        context.close()


class _SlowFake(FakeSegmenter):
    def predict(self, image, text, threshold=0.5, **options):
        import time

        time.sleep(1.0)
        return super().predict(image, text, threshold, **options)


def test_an_answer_for_a_changed_form_is_not_shown(browser: object, tmp_path: Path) -> None:
    """Segment A, then choose B while A is still being segmented: A's answer must not appear as current."""
    first, second = tmp_path / "a.png", tmp_path / "b.png"
    first.write_bytes(png_bytes())
    second.write_bytes(png_bytes(np.full((40, 120), 30, dtype=np.uint8)))
    with running_server(create_app(_SlowFake())) as url:
        page = browser.new_page()  # type: ignore[attr-defined]
        try:
            page.goto(url + "/")
            image_input = page.get_by_label("Image (PNG, JPEG, TIFF, BMP or DICOM")
            image_input.set_input_files(str(first))
            page.get_by_label("Report text").fill(REPORT)
            page.get_by_role("button", name="Segment").click()
            image_input.set_input_files(str(second))  # while A is still on the server
            expect(page.locator("#status")).to_contain_text("changed while segmenting", timeout=10000)
            assert page.locator("#results").is_hidden()
        finally:
            page.close()


def test_an_image_only_model_says_the_report_is_not_used(browser: object) -> None:
    with running_server(create_app(FakeSegmenter(requires_text=False))) as url:
        page = browser.new_page()  # type: ignore[attr-defined]
        try:
            page.goto(url + "/")
            expect(page.locator("#no-report-note")).to_be_visible()
            expect(page.locator("#report-box")).to_be_hidden()
        finally:
            page.close()


def test_errors_are_shown_inline_in_plain_words(browser: object, base_url: str, tmp_path: Path) -> None:
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("this is not an image")
    page = browser.new_page()  # type: ignore[attr-defined]
    try:
        page.goto(base_url + "/")
        page.get_by_role("button", name="Segment").click()
        expect(page.get_by_role("alert")).to_contain_text("Choose an image")

        page.get_by_label("Image (PNG, JPEG, TIFF, BMP or DICOM").set_input_files(str(not_an_image))
        page.get_by_label("Report text").fill(REPORT)
        page.get_by_role("button", name="Segment").click()
        expect(page.get_by_role("alert")).to_contain_text("not a supported image")
        assert page.locator("#results").is_hidden()
    finally:
        page.close()


def test_api_docs_render_offline(browser: object, base_url: str) -> None:
    """/docs renders its operations with every request to another host blocked (an offline hospital)."""
    pytest.importorskip("swagger_ui", reason="swagger-ui-py (the serve extra) provides the /docs assets")
    context = browser.new_context()  # type: ignore[attr-defined]
    blocked: list[str] = []

    def only_local(route: object) -> None:
        url = route.request.url  # type: ignore[attr-defined]
        if url.startswith((base_url + "/", "data:", "blob:")):
            route.continue_()  # type: ignore[attr-defined]
        else:
            blocked.append(url)
            route.abort()  # type: ignore[attr-defined]

    context.route("**/*", only_local)
    page = context.new_page()
    console_errors: list[str] = []
    page.on("console", lambda message: console_errors.append(message.text) if message.type == "error" else None)
    try:
        page.goto(base_url + "/docs")
        expect(page.locator(".opblock-summary-path", has_text="/api/segment")).to_be_visible(timeout=15000)
        expect(page.locator(".opblock-summary-path", has_text="/api/report")).to_be_visible()
        expect(page.locator(".opblock-summary-path", has_text="/healthz")).to_be_visible()
        expect(page.locator(".info .title")).to_contain_text("lvseg")
        assert blocked == []
        assert console_errors == []
    finally:
        context.close()


def test_the_page_shows_the_wording_the_model_reads_and_flags_a_contradicting_result(
    browser: object, base_url: str, tmp_path: Path
) -> None:
    blank = tmp_path / "blank.png"
    blank.write_bytes(png_bytes(np.zeros((40, 60), dtype=np.uint8)))
    page = browser.new_page()  # type: ignore[attr-defined]
    try:
        page.goto(base_url + "/")
        page.locator("#wording-box summary").click()
        examples = page.locator("#example-reports button")
        expect(examples.first).to_be_visible()
        chosen = examples.first.text_content()
        examples.first.click()  # an example fills the report box
        expect(page.get_by_label("Report text")).to_have_value(chosen)
        page.get_by_label("Image (PNG, JPEG, TIFF, BMP or DICOM").set_input_files(str(blank))
        page.get_by_role("button", name="Segment").click()
        box = page.locator("#consistency-box")
        expect(box).to_be_visible(timeout=15000)
        expect(box).to_contain_text("but the model found no lesion")
        expect(page.locator("#measurements")).to_contain_text("Mean lesion probability (not a diagnostic confidence)")
        # a result that agrees with its report carries no such warning
        page.get_by_label("Report text").fill("No pulmonary infection.")
        page.get_by_role("button", name="Segment").click()
        expect(box).to_be_hidden(timeout=15000)
    finally:
        page.close()


def test_a_multi_class_checkpoint_has_a_class_picker_and_a_legend(
    browser: object, base_url: str, tmp_path: Path
) -> None:
    """A binary checkpoint's page has no picker; a multi-class one lists its classes, and a result of two of
    them shows one colour per class in the legend, a row per class and the PDF's per-class table."""
    from lvseg.data.classes import ClassInfo

    page = browser.new_page()  # type: ignore[attr-defined]
    try:
        page.goto(base_url + "/")
        expect(page.locator("#model-info")).to_contain_text("validation Dice 0.500")
        expect(page.locator("#class-box")).to_be_hidden()
    finally:
        page.close()

    image_path = tmp_path / "two.png"
    image_path.write_bytes(png_bytes())  # a bright rectangle in each half: disc's band and ring's band
    table = [ClassInfo(1, "disc"), ClassInfo(2, "ring"), ClassInfo(3, "bar")]
    with running_server(create_app(FakeSegmenter(class_table=table))) as url:
        context = browser.new_context(accept_downloads=True)  # type: ignore[attr-defined]
        page = context.new_page()
        console_errors: list[str] = []
        page.on("console", lambda message: console_errors.append(message.text) if message.type == "error" else None)
        try:
            page.goto(url + "/")
            picker = page.locator("#class-box")
            expect(picker).to_be_visible()
            expect(page.locator("#class-choices input")).to_have_count(3)
            page.get_by_label("Image (PNG, JPEG, TIFF, BMP or DICOM").set_input_files(str(image_path))
            page.get_by_role("checkbox", name="disc", exact=True).check()
            page.get_by_role(
                "checkbox", name="bar", exact=True
            ).check()  # no report typed: each class has its own prompt
            page.get_by_role("button", name="Segment").click()

            legend = page.locator("#class-legend li")
            expect(legend).to_have_count(2, timeout=15000)
            expect(legend.nth(0)).to_have_text("disc")
            expect(legend.nth(1)).to_have_text("bar")
            colours = [
                legend.nth(index).locator(".swatch").evaluate("node => getComputedStyle(node).backgroundColor")
                for index in range(2)
            ]
            assert colours == ["rgb(230, 25, 75)", "rgb(255, 225, 25)"]  # the table's colours 0 and 2
            rows = page.locator("#class-results tbody tr")
            expect(rows).to_have_count(2)
            expect(rows.nth(0)).to_contain_text("Disc found")
            expect(rows.nth(0)).to_contain_text("240 px")
            expect(page.locator("#lesion-legend")).to_be_hidden()
            expect(page.locator("#m-finding")).to_have_text("Found: disc, bar")
            expect(page.locator("#download-mask")).to_have_text("Download label map PNG")

            page.get_by_role(
                "checkbox", name="ring", exact=True
            ).check()  # changing the classes clears the result on screen
            expect(page.locator("#results")).to_be_hidden()
            page.get_by_role("checkbox", name="ring", exact=True).uncheck()
            page.get_by_role("button", name="Segment").click()
            expect(legend).to_have_count(2, timeout=15000)
            with page.expect_download(timeout=15000) as download_info:
                page.get_by_role("button", name="Download PDF report").click()
            download_info.value.save_as(tmp_path / "classes.pdf")
            text = _pdf_text((tmp_path / "classes.pdf").read_bytes())
            assert "Class Colour Finding" in text and "disc Found 240" in text and "bar Found" in text
            assert not re.search(r"\bring\b", text)  # the class unticked before the second Segment
            assert console_errors == []
        finally:
            context.close()
