"""Pictures of segmentations: a mask blended over its image, lesions in colour, labelled grids.

Generic helpers shared by ``lvseg evaluate`` / ``lvseg predict``, the demo report and the web service.
Every function takes numpy arrays and returns uint8 RGB arrays ``(H, W, 3)`` (or a PIL image for grids).
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

Color = tuple[int, int, int]

#: 8-connectivity: lesions that touch diagonally are one lesion.
_CONNECTIVITY = np.ones((3, 3), dtype=bool)
# Distinct colours for the first lesions (Sasha Trubetskoy's palette), then golden-ratio hues.
_PALETTE: tuple[Color, ...] = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (220, 190, 255),
    (170, 110, 40),
    (255, 250, 200),
    (128, 0, 0),
)
_BACKGROUND = (255, 255, 255)
_TEXT_COLOR = (0, 0, 0)


def to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Any displayable image -> uint8 RGB ``(H, W, 3)``.

    Accepts ``(H, W)``, ``(H, W, 1|3|4)`` or channel-first ``(1|3, H, W)`` (as returned by
    :func:`lvseg.data.images.read_image`); uint8 is kept, bool maps to {0, 255}, other integer types are
    scaled by their maximum value, floats are taken as [0, 1] (values outside are clipped).
    """
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3, 4):
        array = np.transpose(array, (1, 2, 0))
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected an image of shape (H, W), (H, W, C) or (C, H, W), got {array.shape}")
    array = array[:, :, :3]
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    elif array.dtype != np.uint8:
        if np.issubdtype(array.dtype, np.integer):
            high = float(array.max()) if array.size else 0.0
            scale = 255.0 if high <= 255 else 65535.0 if high <= 65535 else max(high, 1.0)
            array = array.astype(np.float64) / scale
        array = np.nan_to_num(array.astype(np.float64), nan=0.0)
        array = np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8)
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    return np.ascontiguousarray(array)


def _as_binary(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    binary = np.asarray(mask)
    if binary.ndim == 3 and binary.shape[0] == 1:
        binary = binary[0]
    if binary.shape != shape:
        raise ValueError(f"mask of shape {binary.shape} does not match the image's {shape}")
    return binary > 0


def mask_outline(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels of a binary mask ``(H, W)`` -> bool ``(H, W)`` (pixels of the mask next to background)."""
    binary = np.asarray(mask) > 0
    if not binary.any():
        return binary
    interior = ndimage.binary_erosion(binary, structure=_CONNECTIVITY, border_value=0)
    return binary & ~interior


def overlay_mask(
    image: np.ndarray,
    mask: np.ndarray,
    color: Color = (255, 0, 0),
    alpha: float = 0.45,
    outline: bool = True,
) -> np.ndarray:
    """Blend ``mask`` (H, W) over ``image`` in ``color`` and draw the mask's outline at full opacity.

    Args:
        image: (H, W) or (H, W, 3) uint8 or float in [0, 1] (channel-first (C, H, W) works too).
        mask: (H, W) where non-zero is foreground.
        color: RGB colour of the mask.
        alpha: opacity of the fill, 0 (outline only) .. 1 (solid).
    Returns:
        uint8 RGB (H, W, 3).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    rgb = to_rgb_uint8(image)
    binary = _as_binary(mask, rgb.shape[:2])
    out = rgb.astype(np.float32)
    paint = np.asarray(color, dtype=np.float32)
    out[binary] = out[binary] * (1.0 - alpha) + paint * alpha
    if outline:
        out[mask_outline(binary)] = paint
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def lesion_color(index: int) -> Color:
    """The colour of lesion ``index`` (0-based): distinct for neighbours, the same on every call.

    The first 15 come from Sasha Trubetskoy's palette of distinct colours, then golden-ratio hue steps.
    The web app's overlay, its legend and the PDF report all use these colours.
    """
    if index < 0:
        raise ValueError(f"lesion index must be 0 or more, got {index}")
    if index < len(_PALETTE):
        return _PALETTE[index]
    hue = (index * 0.618033988749895) % 1.0
    red, green, blue = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return int(red * 255), int(green * 255), int(blue * 255)


def lesion_colors(n: int) -> np.ndarray:
    """The colours of lesions ``0 .. n-1`` (see :func:`lesion_color`) -> uint8 (n, 3)."""
    return np.asarray([lesion_color(i) for i in range(n)], dtype=np.uint8).reshape(n, 3)


def hex_color(rgb: Color) -> str:
    """``(r, g, b)`` -> ``'#rrggbb'`` (as CSS and the web app's legend take it)."""
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def label_lesions(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected lesions (8-connectivity) of a binary mask (H, W) -> (labels int32 (H, W), count), numbered
    by size: lesion 1 is the largest (ties: the one found first, scanning rows from the top)."""
    labels, count = ndimage.label(np.asarray(mask) > 0, structure=_CONNECTIVITY)
    labels = labels.astype(np.int32, copy=False)
    if count > 1:
        areas = np.bincount(labels.ravel(), minlength=count + 1)[1:]
        order = np.argsort(-areas, kind="stable")  # component index (0-based) of lesion 1, 2, ...
        renumber = np.zeros(count + 1, dtype=np.int32)
        renumber[order + 1] = np.arange(1, count + 1, dtype=np.int32)
        labels = renumber[labels]
    return labels, int(count)


def draw_lesion_numbers(rgb: np.ndarray, labels: np.ndarray, count: int, max_numbered: int = 20) -> np.ndarray:
    """``rgb`` (H, W, 3) uint8 with the numbers of lesions ``1 .. min(count, max_numbered)`` of ``labels``
    (from :func:`label_lesions`) written at each lesion's centre of mass, white on a dark outline."""
    shown = min(count, max_numbered)
    if shown == 0:
        return rgb
    picture = Image.fromarray(np.ascontiguousarray(rgb))
    draw = ImageDraw.Draw(picture)
    size = max(10, min(picture.size) // 24)
    font = _font(size)
    centres = ndimage.center_of_mass(labels > 0, labels, np.arange(1, shown + 1))
    for number, (row, column) in enumerate(centres, start=1):
        text = str(number)
        box = draw.textbbox((0, 0), text, font=font)
        width, height = box[2] - box[0], box[3] - box[1]
        x = int(np.clip(column - width / 2, 0, max(picture.width - width, 0)))
        y = int(np.clip(row - height / 2, 0, max(picture.height - height, 0)))
        draw.text((x, y), text, font=font, fill=(255, 255, 255), stroke_width=max(1, size // 8), stroke_fill=(0, 0, 0))
    return np.asarray(picture)


def colorize_lesions(mask: np.ndarray, background: Color = (0, 0, 0)) -> np.ndarray:
    """One distinct colour per connected lesion of ``mask`` (H, W) -> uint8 RGB (H, W, 3)."""
    labels, count = label_lesions(mask)
    palette = np.concatenate([np.asarray([background], dtype=np.uint8), lesion_colors(count)])
    return palette[labels]


def overlay_lesions(image: np.ndarray, labels: np.ndarray, count: int, alpha: float = 0.45) -> np.ndarray:
    """Each lesion blended over ``image`` in its own colour, with its outline at full opacity.

    Args:
        image: anything :func:`to_rgb_uint8` accepts (the web app passes uint8 RGB (H, W, 3)).
        labels: int (H, W) lesion labels ``0 .. count`` from :func:`label_lesions` (0 = background);
            lesion ``k`` is drawn in ``lesion_color(k - 1)``.
        count: the number of lesions (the largest label).
        alpha: opacity of the fill, 0 (outline only) .. 1 (solid).
    Returns:
        uint8 RGB (H, W, 3), a new array (``image`` is not modified).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    rgb = to_rgb_uint8(image)
    labels = np.asarray(labels)
    if labels.shape != rgb.shape[:2]:
        raise ValueError(f"labels of shape {labels.shape} do not match the image's {rgb.shape[:2]}")
    overlay = rgb.copy()
    if count == 0:
        return overlay
    lut = np.zeros((count + 1, 3), dtype=np.float32)
    lut[1:] = lesion_colors(count)
    inside = labels > 0
    colours = lut[labels[inside]]
    blended = (1.0 - alpha) * rgb[inside].astype(np.float32) + alpha * colours
    overlay[inside] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    outline = mask_outline(inside)
    overlay[outline] = lut[labels[outline]].astype(np.uint8)
    return overlay


def overlay_classes(
    image: np.ndarray, label_map: np.ndarray, colours: dict[int, Color], alpha: float = 0.45
) -> np.ndarray:
    """Each class of a label map blended over ``image`` in its own colour, its outline at full opacity.

    Args:
        image: anything :func:`to_rgb_uint8` accepts.
        label_map: int (H, W) class values, 0 = background.
        colours: {class value: RGB}; every non-zero value of ``label_map`` needs one.
        alpha: opacity of the fill, 0 (outline only) .. 1 (solid).
    Returns:
        uint8 RGB (H, W, 3), a new array.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    rgb = to_rgb_uint8(image)
    labels = np.asarray(label_map)
    if labels.shape != rgb.shape[:2]:
        raise ValueError(f"label map of shape {labels.shape} does not match the image's {rgb.shape[:2]}")
    missing = sorted(int(value) for value in np.unique(labels) if value and int(value) not in colours)
    if missing:
        raise ValueError(f"no colour for class value(s) {', '.join(map(str, missing))}")
    out = rgb.astype(np.float32)
    for value, colour in colours.items():
        inside = labels == value
        if not inside.any():
            continue
        paint = np.asarray(colour, dtype=np.float32)
        out[inside] = out[inside] * (1.0 - alpha) + paint * alpha
        out[mask_outline(inside)] = paint
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def legend_band(width: int, entries: Sequence[tuple[str, Color]], font_size: int = 12) -> np.ndarray:
    """A white band at least ``width`` pixels wide (wider when one entry needs it) holding a colour swatch and a
    name per entry, wrapped onto as many lines as needed -> uint8 RGB (h, w, 3) (stack it under an overlay)."""
    font = _font(font_size)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line = int(probe.textbbox((0, 0), "Ag", font=font)[3]) + 6
    swatch, gap, margin = line - 6, 4, 4
    widest = max((swatch + gap + int(probe.textlength(name, font=font)) for name, _ in entries), default=0)
    width = max(width, widest + 2 * margin)
    placed: list[tuple[int, int, str, Color]] = []
    x, y = margin, margin
    for name, colour in entries:
        text_width = int(probe.textlength(name, font=font))
        item = swatch + gap + text_width
        if x > margin and x + item > width - margin:
            x, y = margin, y + line
        placed.append((x, y, name, colour))
        x += item + 3 * gap
    height = y + line + margin if entries else 0
    band = Image.new("RGB", (max(width, 1), height), _BACKGROUND)
    draw = ImageDraw.Draw(band)
    for x, y, name, colour in placed:
        draw.rectangle((x, y + 2, x + swatch, y + 2 + swatch), fill=colour, outline=_TEXT_COLOR)
        draw.text((x + swatch + gap, y + 1), name, fill=_TEXT_COLOR, font=font)
    return np.asarray(band)


def with_legend(rgb: np.ndarray, entries: Sequence[tuple[str, Color]]) -> np.ndarray:
    """``rgb`` (H, W, 3) uint8 with :func:`legend_band` of ``entries`` below it -> uint8 (H + h, W', 3), W' = W
    unless a name is wider than the image (``entries`` empty: ``rgb`` itself)."""
    if not entries:
        return rgb
    band = legend_band(rgb.shape[1], entries, max(10, min(16, rgb.shape[1] // 24)))
    if band.shape[1] > rgb.shape[1]:  # a narrow image: widened with white on the right, to fit the names
        padding = np.full((rgb.shape[0], band.shape[1] - rgb.shape[1], 3), _BACKGROUND, dtype=np.uint8)
        rgb = np.concatenate([rgb, padding], axis=1)
    return np.concatenate([rgb, band], axis=0)


#: Colour stops of the probability heat-map (0, 0.25, 0.5, 0.75, 1): dark blue through green to yellow,
#: perceptually ordered like viridis and readable by people with red-green colour blindness.
_HEAT_STOPS = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float32)


def probability_heatmap(probability: np.ndarray) -> np.ndarray:
    """Lesion probabilities (H, W) in [0, 1] -> uint8 RGB (H, W, 3), 0 dark blue ... 1 yellow."""
    values = np.clip(np.asarray(probability, dtype=np.float32), 0.0, 1.0) * (len(_HEAT_STOPS) - 1)
    low = np.minimum(values.astype(np.int32), len(_HEAT_STOPS) - 2)
    weight = (values - low)[..., None]
    rgb = _HEAT_STOPS[low] * (1.0 - weight) + _HEAT_STOPS[low + 1] * weight
    return np.rint(rgb).astype(np.uint8)


_OPPOSITE_SIDE = {"L": "R", "R": "L", "A": "P", "P": "A", "H": "F", "F": "H"}


def side_markers(row_direction: str) -> tuple[str, str] | None:
    """(left-edge, right-edge) labels of an image whose rows run toward ``row_direction`` (the first value of
    DICOM PatientOrientation, e.g. "L": column index grows toward the patient's left, so the image's left
    edge is the patient's right, "R"). None for an unknown direction."""
    direction = "".join(letter for letter in row_direction.upper() if letter in _OPPOSITE_SIDE)
    if not direction:
        return None
    return "".join(_OPPOSITE_SIDE[letter] for letter in direction), direction


def draw_side_markers(rgb: np.ndarray, markers: tuple[str, str]) -> np.ndarray:
    """``rgb`` (H, W, 3) uint8 with the two labels written at the middle of its left and right edges."""
    picture = Image.fromarray(np.ascontiguousarray(rgb))
    draw = ImageDraw.Draw(picture)
    size = max(12, min(picture.size) // 12)
    font = _font(size)
    margin = max(2, size // 4)
    for label, left in ((markers[0], True), (markers[1], False)):
        box = draw.textbbox((0, 0), label, font=font)
        width, height = box[2] - box[0], box[3] - box[1]
        x = margin if left else picture.width - width - margin
        y = (picture.height - height) // 2
        draw.text(
            (x, y), label, font=font, fill=(255, 255, 255), stroke_width=max(1, size // 10), stroke_fill=(0, 0, 0)
        )
    return np.asarray(picture)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed bitmap font
        return ImageFont.load_default()


def _fit(cell: np.ndarray, cell_size: int | None) -> Image.Image:
    picture = Image.fromarray(to_rgb_uint8(cell))
    if cell_size is not None and max(picture.size) != cell_size:
        scale = cell_size / max(picture.size)
        size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
        picture = picture.resize(size, Image.Resampling.BILINEAR if scale < 1 else Image.Resampling.NEAREST)
    return picture


def overlay_grid(
    rows: Sequence[Sequence[np.ndarray]],
    titles: Sequence[str],
    row_labels: Sequence[str] | None = None,
    cell_size: int | None = 256,
    padding: int = 4,
) -> Image.Image:
    """A labelled grid of pictures, e.g. columns ``image | truth | U-Net | LViT`` and one row per case.

    Args:
        rows: rows of cells; every row has ``len(titles)`` cells, each an image accepted by
            :func:`to_rgb_uint8` (masks (H, W) in {0, 1} should be overlaid or scaled to 255 first).
        titles: one column title each, drawn above the first row.
        row_labels: optional caption above each row (e.g. the image name and its Dice).
        cell_size: every cell is scaled to fit a ``cell_size`` square (None keeps the pixel sizes).
        padding: white space between cells, in pixels.
    Returns:
        an RGB PIL image.
    """
    if not rows:
        raise ValueError("overlay_grid needs at least one row")
    n_columns = len(titles)
    for index, row in enumerate(rows):
        if len(row) != n_columns:
            raise ValueError(f"row {index} has {len(row)} cells but there are {n_columns} titles")
    if row_labels is not None and len(row_labels) != len(rows):
        raise ValueError(f"got {len(row_labels)} row labels for {len(rows)} rows")

    cells = [[_fit(cell, cell_size) for cell in row] for row in rows]
    column_widths = [max(row[c].width for row in cells) for c in range(n_columns)]
    row_heights = [max(cell.height for cell in row) for row in cells]
    font = _font(max(10, min(16, (cell_size or 256) // 14)))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_height = int(probe.textbbox((0, 0), "Ag", font=font)[3]) + 2 * padding
    caption_height = line_height if row_labels is not None else 0

    width = sum(column_widths) + padding * (n_columns + 1)
    height = line_height + sum(row_heights) + len(rows) * (caption_height + padding) + padding
    canvas = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)

    x = padding
    for title, column_width in zip(titles, column_widths):
        draw.text((x, padding), str(title), fill=_TEXT_COLOR, font=font)
        x += column_width + padding
    y = line_height
    for index, (cell_row, row_height) in enumerate(zip(cells, row_heights)):
        if row_labels is not None:
            draw.text((padding, y + padding), str(row_labels[index]), fill=_TEXT_COLOR, font=font)
            y += caption_height
        x = padding
        for cell, column_width in zip(cell_row, column_widths):
            canvas.paste(cell, (x, y))
            x += column_width + padding
        y += row_height + padding
    return canvas
