"""The PDF report: original and colour-coded overlay side by side, report text, measurements, notes."""

from __future__ import annotations

import functools
import io
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING
from xml.sax.saxutils import escape

import numpy as np
from PIL import Image as PILImage

from lvseg.data.images import png_bytes
from lvseg.serving.rendering import ClassMeasurement, Measurements

if TYPE_CHECKING:
    from reportlab.pdfgen.canvas import Canvas
    from reportlab.platypus import Flowable, Table
    from reportlab.platypus.doctemplate import BaseDocTemplate

logger = logging.getLogger(__name__)

DISCLAIMER = "Research use only \u2014 not a diagnostic device."
NOT_GIVEN = "not given"
PDF_IMAGE_SIDE = 1024  # images are downscaled to this many pixels per side inside the PDF
_DEJAVU = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
_DEJAVU_BOLD = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf")


@dataclass
class ReportContent:
    """Everything the report shows besides the two images. ``classes``: with classes chosen, one row per
    class (the per-class table); ``measurements`` then describe all of them together."""

    report_text: str
    measurements: Measurements
    model_name: str
    validation_dice: float | None
    image_size: tuple[int, int]
    image_format: str
    inference_ms: float
    analysed_size: tuple[int, int] | None = None
    text_warnings: list[str] = field(default_factory=list)
    consistency_warnings: list[str] = field(default_factory=list)
    validation_data: str | None = None
    training_data: str | None = None
    study_id: str = ""
    patient_id: str = ""
    referrer: str = ""
    notes: str = ""
    recommendations: str = ""
    classes: list[ClassMeasurement] | None = None
    created: datetime = field(default_factory=lambda: datetime.now(timezone.utc))


def find_validation_dice(metrics: Mapping[str, object] | None) -> float | None:
    """The validation Dice stored in a checkpoint's metrics, under any of the usual key spellings."""
    if not metrics:
        return None
    candidates = ["val_dice", "val/dice", "validation_dice", "best_val_dice", "dice"]
    candidates += sorted(key for key in metrics if "dice" in key.lower() and "val" in key.lower())
    for key in candidates:
        value = metrics.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


@functools.lru_cache(maxsize=1)
def _fonts() -> tuple[str, str]:
    """(regular, bold) font names: DejaVu Sans where installed (wider Unicode), else Helvetica."""
    if _DEJAVU.is_file() and _DEJAVU_BOLD.is_file():
        try:
            from reportlab.pdfbase import pdfmetrics
            from reportlab.pdfbase.ttfonts import TTFont

            pdfmetrics.registerFont(TTFont("DejaVuSans", str(_DEJAVU)))
            pdfmetrics.registerFont(TTFont("DejaVuSans-Bold", str(_DEJAVU_BOLD)))
            return "DejaVuSans", "DejaVuSans-Bold"
        except Exception:  # a broken font file must not break reports
            logger.warning("could not register DejaVu Sans; using Helvetica in PDF reports")
    return "Helvetica", "Helvetica-Bold"


#: Runs of Chinese, Japanese or Korean characters, which DejaVu Sans has no glyphs for.
_CJK_RUN = re.compile(
    r"[\u1100-\u11ff\u3130-\u318f\uac00-\ud7af"  # Hangul
    r"\u3040-\u30ff\u31f0-\u31ff\uff66-\uff9f"  # Hiragana, Katakana
    r"\u2e80-\u2fdf\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uff65]+"  # Han, punctuation
)
_HANGUL = re.compile(r"[\u1100-\u11ff\u3130-\u318f\uac00-\ud7af]")
_KANA = re.compile(r"[\u3040-\u30ff\u31f0-\u31ff\uff66-\uff9f]")

#: TrueType fonts (glyf outlines: reportlab embeds a subset of them) with the glyphs of each language, best
#: first; "any" fonts cover all three. ``LVSEG_PDF_CJK_FONT`` (a .ttf, or .ttc[:index]) comes before all.
#: Debian/Ubuntu packages: fonts-ipafont-gothic (ja), fonts-nanum (ko), fonts-wqy-microhei (zh),
#: fonts-droid-fallback (any).
CJK_FONT_FILES: dict[str, tuple[str, ...]] = {
    "ja": ("/usr/share/fonts/opentype/ipafont-gothic/ipag.ttf", "/usr/share/fonts/truetype/fonts-japanese-gothic.ttf"),
    "ko": ("/usr/share/fonts/truetype/nanum/NanumGothic.ttf",),
    "zh": ("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc", "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc"),
    "any": (
        "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
        "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    ),
}
#: reportlab's Adobe CID fonts, the last resort: named in the PDF but not embedded (viewers need them).
_CID_FONTS = {"ko": "HYSMyeongJo-Medium", "ja": "HeiseiMin-W3", "zh": "STSong-Light"}


def text_language(text: str) -> str:
    """The language whose glyphs a text's CJK characters need: "ko" with Hangul, "ja" with kana, else "zh"
    (Han characters alone: Chinese glyph shapes)."""
    return "ko" if _HANGUL.search(text) else "ja" if _KANA.search(text) else "zh"


def run_language(run: str, text: str) -> str:
    """The language of one CJK run of ``text``: its own script when it has Hangul or kana; a run of Han
    characters only takes the language of the whole text when that text is in one CJK language, else Chinese
    (e.g. the Chinese sentence of a report that also quotes Japanese and Korean)."""
    if _HANGUL.search(run) or _KANA.search(run):
        return text_language(run)
    mixed = bool(_HANGUL.search(text)) and bool(_KANA.search(text))
    return "zh" if mixed else text_language(text)


def _register_ttf(path: str) -> tuple[str, frozenset[int]] | None:
    """Register a TrueType font file (``file.ttc:N`` for the N-th font of a collection): (its name, the code
    points it has glyphs for), or None."""
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.ttfonts import TTFont

    file, separator, index = path.rpartition(":")
    if not (separator and index.isdigit() and file.lower().endswith(".ttc")):
        file, index = path, ""
    if not Path(file).is_file():
        return None
    name = "lvseg-cjk-" + re.sub(r"[^A-Za-z0-9]+", "-", Path(file).stem) + (f"-{index}" if index else "")
    try:
        font = TTFont(name, file, subfontIndex=int(index or 0))
        pdfmetrics.registerFont(font)
    except Exception as error:  # CFF outlines, a broken file: try the next font
        logger.debug("cannot use %s for CJK text in PDF reports: %s", file, error)
        return None
    return name, frozenset(font.face.charToGlyph)


@functools.cache
def _cjk_fonts(language: str) -> tuple[tuple[str, frozenset[int]], ...]:
    """The usable TrueType fonts for ``language``, best first (``LVSEG_PDF_CJK_FONT``, then
    :data:`CJK_FONT_FILES`)."""
    configured = os.environ.get("LVSEG_PDF_CJK_FONT", "").strip()
    paths = ((configured,) if configured else ()) + CJK_FONT_FILES[language] + CJK_FONT_FILES["any"]
    return tuple(font for font in map(_register_ttf, dict.fromkeys(paths)) if font is not None)


def cjk_font(language: str, characters: str = "") -> tuple[str, bool]:
    """(font name, embedded) for CJK ``characters`` of ``language`` ("ja", "ko", "zh"): the first TrueType
    font of :func:`_cjk_fonts` with a glyph for every character (else the first one), embedded as a subset;
    without any, reportlab's CID font (not embedded: logged)."""
    fonts = _cjk_fonts(language)
    if fonts:
        needed = {ord(character) for character in characters}
        return next((name for name, glyphs in fonts if needed <= glyphs), fonts[0][0]), True
    return _cid_font(language), False


@functools.cache
def _cid_font(language: str) -> str:
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.cidfonts import UnicodeCIDFont

    logger.warning(
        "no TrueType CJK font found (install fonts-droid-fallback, or set LVSEG_PDF_CJK_FONT to a .ttf): PDF "
        "reports name the %s font, which viewers without it show as empty boxes",
        _CID_FONTS[language],
    )
    pdfmetrics.registerFont(UnicodeCIDFont(_CID_FONTS[language]))
    return _CID_FONTS[language]


def _paragraph_text(text: str) -> str:
    """``text`` as reportlab paragraph markup: escaped, line breaks kept, and runs of Chinese, Japanese or
    Korean characters set in a font of their language with their glyphs (:func:`run_language`,
    :func:`cjk_font`), so that the Han characters of a Japanese report take Japanese shapes."""
    parts, position = [], 0
    for match in _CJK_RUN.finditer(text):
        font = cjk_font(run_language(match.group(), text), match.group())[0]
        parts.append(escape(text[position : match.start()]))
        parts.append(f'<font name="{font}">{escape(match.group())}</font>')
        position = match.end()
    parts.append(escape(text[position:]))
    return "".join(parts).replace("\n", "<br/>")


def _pdf_image(pixels: np.ndarray, max_width: float, max_height: float) -> object:
    from reportlab.platypus import Image

    picture = PILImage.fromarray(pixels)
    picture.thumbnail((PDF_IMAGE_SIDE, PDF_IMAGE_SIDE))
    buffer = io.BytesIO(png_bytes(np.asarray(picture)))
    scale = min(max_width / picture.width, max_height / picture.height)
    return Image(buffer, width=picture.width * scale, height=picture.height * scale)


def build_report_pdf(original: np.ndarray, overlay: np.ndarray, content: ReportContent) -> bytes:
    """Render the report as PDF bytes (A4) from the original and overlay RGB arrays."""
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
    from reportlab.lib.units import cm
    from reportlab.platypus import KeepTogether, Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

    regular, bold = _fonts()
    styles = getSampleStyleSheet()
    body = ParagraphStyle("lvseg-body", parent=styles["BodyText"], fontName=regular, fontSize=10, leading=13)
    heading = ParagraphStyle("lvseg-h2", parent=styles["Heading2"], fontName=bold, fontSize=12, spaceBefore=8)
    title = ParagraphStyle("lvseg-title", parent=styles["Title"], fontName=bold, fontSize=16)
    small = ParagraphStyle("lvseg-small", parent=body, fontSize=8, textColor=colors.grey)
    caption = ParagraphStyle("lvseg-caption", parent=small, alignment=1)
    warning = ParagraphStyle("lvseg-warning", parent=body, fontName=bold, textColor=colors.HexColor("#a00000"))

    buffer = io.BytesIO()
    document = SimpleDocTemplate(
        buffer,
        pagesize=A4,
        leftMargin=1.8 * cm,
        rightMargin=1.8 * cm,
        topMargin=1.6 * cm,
        bottomMargin=1.6 * cm,
        title="lvseg segmentation report",
        author="lvseg",
        creator="lvseg",
    )
    half = (document.width - 0.6 * cm) / 2
    m = content.measurements
    dice = "not recorded" if content.validation_dice is None else f"{content.validation_dice:.3f}"
    story: list[Flowable] = [
        Paragraph("Lesion segmentation report", title),
        Paragraph(_paragraph_text(DISCLAIMER), warning),
        Spacer(1, 0.2 * cm),
    ]
    facts = [
        # Every identifying row is shown, "not given" when empty: a missing row reads as forgotten by the report.
        ["Study ID", content.study_id or NOT_GIVEN],
        ["Patient ID", content.patient_id or NOT_GIVEN],
        ["Referring clinician", content.referrer or NOT_GIVEN],
        ["Created", content.created.strftime("%Y-%m-%d %H:%M UTC")],
        [
            "Image",
            f"{content.image_format.upper()}, {content.image_size[0]} x {content.image_size[1]} px"
            + (
                f" (analysed at {content.analysed_size[0]} x {content.analysed_size[1]} px; areas in those pixels)"
                if content.analysed_size and content.analysed_size != content.image_size
                else ""
            ),
        ],
        ["Model", content.model_name + (f", trained on {content.training_data}" if content.training_data else "")],
        ["Validation Dice", dice + (f" on {content.validation_data}" if content.validation_data else "")],
    ]
    story.append(_table(facts, regular, bold, document.width))
    images = Table(
        [
            [_pdf_image(original, half, 9 * cm), _pdf_image(overlay, half, 9 * cm)],
            [
                Paragraph("Original", caption),
                Paragraph(f"Overlay (one colour per {'class' if content.classes is not None else 'lesion'})", caption),
            ],
        ],
        colWidths=[half + 0.3 * cm, half + 0.3 * cm],
    )
    images.setStyle(TableStyle([("ALIGN", (0, 0), (-1, -1), "CENTER"), ("VALIGN", (0, 0), (-1, -1), "MIDDLE")]))
    story += [Spacer(1, 0.3 * cm), images]
    story += [Paragraph("Report text", heading), Paragraph(_paragraph_text(content.report_text) or "\u2014", body)]
    for text_warning in content.text_warnings:  # how the model read the report, as the page showed it
        story.append(
            Paragraph(_paragraph_text("Warning: " + text_warning[:1].upper() + text_warning[1:] + "."), warning)
        )
    if content.consistency_warnings:  # the result against its report and the training images
        story.append(Paragraph("Checks of this result", heading))
        story += [Paragraph(_paragraph_text("Warning: " + text), warning) for text in content.consistency_warnings]
    if content.classes is not None:
        found = [row.name for row in content.classes if row.found]
        measures = [
            ["Classes", ", ".join(row.name for row in content.classes)],
            ["Found", ", ".join(found) if found else "none of the classes"],
            ["Labelled area (all classes)", m.area_text()],
            ["Inference time", f"{content.inference_ms:.0f} ms"],
        ]
    else:
        measures = [
            ["Finding", m.finding[:1].upper() + m.finding[1:]],
            ["Lesion area", m.area_text()],
            ["Connected lesions", str(m.lesions)],
            ["Mean lesion probability", m.confidence_text()],
            ["Inference time", f"{content.inference_ms:.0f} ms"],
        ]
    story += [Paragraph("Measurements", heading), _table(measures, regular, bold, document.width)]
    if content.classes is not None:
        story += [Spacer(1, 0.2 * cm), _class_table(content.classes, regular, bold, m.pixel_area_mm2 is not None)]
        story.append(
            Paragraph(
                _paragraph_text(
                    "Each class was asked for with its own prompt; where classes overlap, the pixel goes to the most "
                    "probable one. Probabilities are the model's, not diagnostic confidences."
                ),
                small,
            )
        )
    if m.lesion_list:
        rows = [["Lesion", "Colour", "Area (px)" + (" / mm\u00b2" if m.pixel_area_mm2 else ""), "Box x, y, w, h"]]
        rows += [
            [
                str(lesion.label),
                "",  # the cell's background is the lesion's colour, as on the overlay
                str(lesion.area_px) + (f" / {lesion.area_mm2:.1f}" if lesion.area_mm2 is not None else ""),
                ", ".join(map(str, lesion.bbox)),
            ]
            for lesion in m.lesion_list[:20]
        ]
        lesions = Table(rows, colWidths=[2.5 * cm, 3 * cm, 3 * cm, 5 * cm], hAlign="LEFT")
        style = TableStyle(
            [
                ("FONTNAME", (0, 0), (-1, -1), regular),
                ("FONTNAME", (0, 0), (-1, 0), bold),
                ("FONTSIZE", (0, 0), (-1, -1), 8),
                ("LINEBELOW", (0, 0), (-1, 0), 0.5, colors.grey),
            ]
        )
        for row, lesion in enumerate(m.lesion_list[:20], start=1):
            style.add("BACKGROUND", (1, row), (1, row), colors.HexColor(lesion.colour))
        lesions.setStyle(style)
        story += [Spacer(1, 0.2 * cm), lesions]
        if m.lesions > 20:
            story.append(Paragraph(f"The 20 largest of {m.lesions} lesions are listed.", small))
    for label, text in (("Clinician notes", content.notes), ("Recommendations", content.recommendations)):
        if text.strip():
            story += [Paragraph(label, heading), Paragraph(_paragraph_text(text), body)]
    # The sign-off stays with the content before it: never alone at the top of an otherwise empty page.
    last = story.pop()
    story.append(
        KeepTogether(
            [
                last,
                Spacer(1, 0.8 * cm),
                _table([["Reviewed by", " "], ["Signature and date", " "]], regular, bold, document.width),
                Spacer(1, 0.5 * cm),
                Paragraph(_paragraph_text(DISCLAIMER), warning),
            ]
        )
    )

    def footer(canvas: Canvas, doc: BaseDocTemplate) -> None:
        canvas.saveState()
        canvas.setFont(regular, 7)
        canvas.setFillColor(colors.grey)
        canvas.drawString(document.leftMargin, 1 * cm, f"lvseg \u2014 {DISCLAIMER}")
        canvas.drawRightString(A4[0] - document.rightMargin, 1 * cm, f"page {doc.page}")
        canvas.restoreState()

    document.build(story, onFirstPage=footer, onLaterPages=footer)
    return buffer.getvalue()


def _class_table(rows: list[ClassMeasurement], regular: str, bold: str, with_mm2: bool) -> Table:
    """The per-class table: class, colour (the cell's background, as on the overlay), finding, area, regions,
    highest probability and the prompt the class was asked with."""
    from reportlab.lib import colors
    from reportlab.lib.styles import ParagraphStyle
    from reportlab.lib.units import cm
    from reportlab.platypus import Paragraph, Table, TableStyle

    cell = ParagraphStyle("lvseg-class-cell", fontName=regular, fontSize=8, leading=10)
    header = ["Class", "Colour", "Finding", "Area px (% of image" + (", mm²)" if with_mm2 else ")"), "Regions"]
    header += ["Highest probability", "Asked as"]
    heading = ParagraphStyle("lvseg-class-head", parent=cell, fontName=bold)
    data: list[list[object]] = [[Paragraph(escape(text), heading) for text in header]]
    for row in rows:
        area = f"{row.area_px} ({row.area_percent:.2f} %" + (
            f", {row.area_mm2:.1f})" if row.area_mm2 is not None else ")"
        )
        data.append(
            [
                Paragraph(_paragraph_text(row.name), cell),
                "",
                Paragraph(_paragraph_text("Found" if row.found else "Not found"), cell),
                area,
                str(row.regions),
                f"{row.max_probability:.3f}",
                Paragraph(_paragraph_text(row.prompt or "\u2014"), cell),
            ]
        )
    table = Table(data, colWidths=[2.3 * cm, 1.6 * cm, 1.8 * cm, 3.2 * cm, 1.8 * cm, 2.2 * cm, 4.4 * cm], hAlign="LEFT")
    style = TableStyle(
        [
            ("FONTNAME", (0, 0), (-1, -1), regular),
            ("FONTNAME", (0, 0), (-1, 0), bold),
            ("FONTSIZE", (0, 0), (-1, -1), 8),
            ("VALIGN", (0, 0), (-1, -1), "TOP"),
            ("LINEBELOW", (0, 0), (-1, 0), 0.5, colors.grey),
            ("LINEBELOW", (0, 1), (-1, -1), 0.25, colors.lightgrey),
        ]
    )
    for number, row in enumerate(rows, start=1):
        style.add("BACKGROUND", (1, number), (1, number), colors.HexColor(row.colour))
    table.setStyle(style)
    return table


def _table(rows: list[list[str]], regular: str, bold: str, width: float) -> Table:
    """A two-column key/value table whose cells wrap long values."""
    from reportlab.lib import colors
    from reportlab.lib.styles import ParagraphStyle
    from reportlab.platypus import Paragraph, Table, TableStyle

    cell = ParagraphStyle("lvseg-cell", fontName=regular, fontSize=9, leading=11)
    key_cell = ParagraphStyle("lvseg-key", parent=cell, fontName=bold)
    data = [[Paragraph(escape(key), key_cell), Paragraph(_paragraph_text(value), cell)] for key, value in rows]
    table = Table(data, colWidths=[0.35 * width, 0.65 * width], hAlign="LEFT")
    table.setStyle(
        TableStyle(
            [
                ("LINEBELOW", (0, 0), (-1, -1), 0.25, colors.lightgrey),
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
            ]
        )
    )
    return table
