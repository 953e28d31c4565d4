"""Prompts from masks: a report for every image of a dataset that has masks but no text.

For data without clinicians' reports (polyp, skin-lesion, ultrasound sets), the medvlsm study (Poudel et
al., MIDL 2024) prompts vision-language models with attributes of the target read off its mask, in a
ladder of growing detail. lvseg writes them into the text table the loader reads, so ``lvseg train``
takes such a folder like any other. The attributes derivable from a mask, per connected region (8-
connectivity):

* **count** of regions, in words (``one`` ... ``twelve``, digits above);
* **size** by area fraction of the image: ``tiny`` < 1 %, ``small`` < 5 %, ``medium`` < 20 %, ``large``
  otherwise (distinct sizes comma-joined, largest last as in "small, large polyps");
* **location** of the region's centroid on a 3 x 3 grid of the image: ``top``/``bottom`` and
  ``left``/``right`` thirds, ``center`` in the middle third ("top left", "center", "bottom", ...); distinct
  locations are listed in one fixed order (:data:`LOCATIONS`: the grid read row by row), whatever the order
  of the regions, so two images with lesions in the same places get the same words.

The class name takes its plural by English rules and the irregular plurals of medical Latin and Greek
("nucleus" -> "nuclei", "metastasis" -> "metastases", "diverticulum" -> "diverticula"; the last word of a
compound: "cell nucleus" -> "cell nuclei"), and the modality its article by sound ("an H&E image", "an MRI
slice", "a CT slice", "an endoscopy image", "a US image").

Styles (:data:`STYLES`; the study's shape and colour come from a VQA model, not from the mask, and are left out):

* ``p1``: class only -- "polyp";
* ``p2``: count + class -- "two polyps";
* ``p3``: size + class -- "small, large polyps";
* ``p4``: count + size + class -- "two small, large polyps";
* ``p5``: ``p4`` in the modality -- "two small, large polyps in an endoscopy image";
* ``p6``: ``p5`` + location -- "two small, large polyps in an endoscopy image, located in the top left and
  bottom right of the image";
* ``random``: one of ``p1`` ... ``p6`` per image, fixed by the seed and the image's name.

An empty mask gives "no <class>" (``p5``/``p6``: "no <class> in <modality>"). Everything is deterministic.

**Per-class prompts** (:func:`class_prompt`, :func:`class_prompts`): for a label map with several
structures, the VLSM study (Poudel et al., "Exploring Transfer Learning in Medical Image Segmentation using
Vision-Language Models", MIDL 2024) prompts once per structure. The prompt of one class is the ladder above
computed on that class's regions alone ("two small kidneys in a CT slice, located in the left and right of
the image"); ``p0`` is the empty prompt, as in the study. A class absent from the image (a negative sample)
is asked for by its name (``p1``-``p4``) or name and modality (``p5``/``p6``) alone, never "no <class>",
which would give the empty answer away.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from lvseg.data.images import read_mask
from lvseg.data.layout import (
    IMAGE_COLUMN,
    IMAGE_DIR,
    MASK_DIR,
    MASK_PREFIX,
    SPLIT_FOLDERS,
    TEXT_COLUMN,
    image_mask_problems,
    list_image_files,
    text_file_candidates,
)
from lvseg.errors import DataValidationError, LvsegError
from lvseg.files import atomic_write_text

STYLES: tuple[str, ...] = ("p1", "p2", "p3", "p4", "p5", "p6", "random")
SIZE_THRESHOLDS: tuple[tuple[float, str], ...] = ((0.01, "tiny"), (0.05, "small"), (0.20, "medium"))
SIZE_WORDS: tuple[str, ...] = ("tiny", "small", "medium", "large")
#: Every location phrase, in the order prompts list them (the 3 x 3 grid read row by row).
LOCATIONS: tuple[str, ...] = (
    "top left",
    "top",
    "top right",
    "left",
    "center",
    "right",
    "bottom left",
    "bottom",
    "bottom right",
)
#: Plurals that the English suffix rules get wrong: the Latin and Greek nouns of pathology and anatomy.
IRREGULAR_PLURALS: dict[str, str] = {
    "nucleus": "nuclei",
    "nucleolus": "nucleoli",
    "calculus": "calculi",
    "thrombus": "thrombi",
    "embolus": "emboli",
    "bacillus": "bacilli",
    "coccus": "cocci",
    "fungus": "fungi",
    "villus": "villi",
    "bronchus": "bronchi",
    "glomerulus": "glomeruli",
    "meniscus": "menisci",
    "focus": "foci",
    "diverticulum": "diverticula",
    "bacterium": "bacteria",
    "septum": "septa",
    "ganglion": "ganglia",
    "mitochondrion": "mitochondria",
    "vertebra": "vertebrae",
    "alveolus": "alveoli",
    "lamina": "laminae",
    "apex": "apices",
    "cortex": "cortices",
    "index": "indices",
    "matrix": "matrices",
    "appendix": "appendices",
    "tooth": "teeth",
    "ovum": "ova",
}
#: Letters whose names begin with a vowel sound ("an H&E image", "an MRI"), for abbreviations read letter by letter.
_VOWEL_SOUND_LETTERS = frozenset("AEFHILMNORSX")
#: Word beginnings whose first vowel letter sounds like a consonant ("a unilateral", "a European", "a one-...")
#: or whose consonant is silent ("an hour").
_CONSONANT_SOUND_STARTS = ("uni", "use", "usu", "uro", "ure", "uti", "eu", "one", "once", "ewe")
_SILENT_H_STARTS = ("hour", "honest", "honor", "honour", "heir")
_NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve")


@dataclass(frozen=True)
class Region:
    """One connected region of a mask: its size word and location phrase."""

    size: str
    location: str


def _size_word(fraction: float) -> str:
    return next((word for limit, word in SIZE_THRESHOLDS if fraction < limit), "large")


def _location(row: float, column: float, height: int, width: int) -> str:
    vertical = "top" if row < height / 3 else "bottom" if row >= 2 * height / 3 else "center"
    horizontal = "left" if column < width / 3 else "right" if column >= 2 * width / 3 else "center"
    if vertical == horizontal == "center":
        return "center"
    if horizontal == "center":
        return vertical
    if vertical == "center":
        return horizontal
    return f"{vertical} {horizontal}"


def mask_regions(mask: np.ndarray) -> list[Region]:
    """The connected regions (8-connectivity) of a binary mask (H, W), top to bottom then left to right."""
    from scipy import ndimage

    binary = np.asarray(mask) > 0
    labels, count = ndimage.label(binary, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return []
    height, width = binary.shape
    indices = range(1, count + 1)
    areas = ndimage.sum(binary, labels, indices)
    centroids = ndimage.center_of_mass(binary, labels, indices)
    order = sorted(range(count), key=lambda i: (round(centroids[i][0], 6), round(centroids[i][1], 6)))
    return [
        Region(
            _size_word(float(areas[i]) / (height * width)), _location(centroids[i][0], centroids[i][1], height, width)
        )
        for i in order
    ]


def _count_word(count: int) -> str:
    return _NUMBERS[count] if count < len(_NUMBERS) else str(count)


def plural(noun: str) -> str:
    """The plural of ``noun`` (see the module docstring); a compound takes it on its last word."""
    head, space, last = noun.rpartition(" ")
    lower = last.lower()
    if lower in IRREGULAR_PLURALS:
        plural_word = IRREGULAR_PLURALS[lower]
        plural_word = plural_word.upper() if last.isupper() else last[:1] + plural_word[1:]
    elif lower in IRREGULAR_PLURALS.values() or not lower.isalpha():
        plural_word = last  # already plural, or an abbreviation with digits or signs
    elif lower.endswith("sis"):
        plural_word = last[:-2] + "es"  # metastasis -> metastases
    elif lower.endswith("y") and lower[-2:-1] not in ("", *"aeiou"):
        plural_word = last[:-1] + "ies"  # opacity -> opacities
    elif lower.endswith(("s", "x", "z", "ch", "sh")):
        plural_word = last + "es"
    else:
        plural_word = last + "s"
    return f"{head}{space}{plural_word}"


def _join(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def article(phrase: str) -> str:
    """``phrase`` with "a" or "an" by the sound of its first word: an abbreviation (up to three capitals, or
    with signs: "H&E", "MRI", "CT", "US") by the name of its first letter, a word by its first letter except
    the known exceptions ("a unilateral", "an hour")."""
    word = phrase.split(" ", 1)[0].split("-", 1)[0]
    letters = "".join(ch for ch in word if ch.isalpha())
    if not letters:
        vowel = word.startswith("8") or word in ("11", "18")  # "an 8-bit image", "an 11 ..."
    elif word.isupper() and (len(letters) <= 3 or len(letters) != len(word)):
        vowel = letters[0] in _VOWEL_SOUND_LETTERS  # read letter by letter
    else:
        lower = word.lower()
        vowel = lower.startswith(_SILENT_H_STARTS) or (
            lower[0] in "aeiou" and not lower.startswith(_CONSONANT_SOUND_STARTS)
        )
    return ("an " if vowel else "a ") + phrase


def make_prompt(mask: np.ndarray, class_name: str, modality: str, style: str = "p6") -> str:
    """The prompt of ``style`` (see the module docstring) for ``mask`` (H, W), non-zero = target."""
    if style not in STYLES or style == "random":
        raise LvsegError(f"prompt style {style!r} is not one of {', '.join(s for s in STYLES if s != 'random')}")
    regions = mask_regions(mask)
    in_modality = f" in {article(modality)}" if style in ("p5", "p6") else ""
    if not regions:
        return f"no {class_name}{in_modality}"
    count = len(regions)
    noun = class_name if count == 1 else plural(class_name)
    sizes = ", ".join(word for word in SIZE_WORDS if word in {region.size for region in regions})
    phrase = {
        "p1": class_name,
        "p2": f"{_count_word(count)} {noun}",
        "p3": f"{sizes} {noun}",
    }.get(style, f"{_count_word(count)} {sizes} {noun}")
    if style == "p6":
        found = {region.location for region in regions}
        locations = [location for location in LOCATIONS if location in found]
        return f"{phrase}{in_modality}, located in the {_join(locations)} of the image"
    return phrase + in_modality


#: The prompt types of one class of a label map: ``p0`` (empty, as in the VLSM study) and :data:`STYLES`.
CLASS_PROMPT_STYLES: tuple[str, ...] = ("p0", *STYLES)


def class_prompt(mask: np.ndarray, class_name: str, modality: str, style: str = "p6") -> str:
    """The prompt asking for one class, ``mask`` (H, W) being that class's pixels (non-zero) of a label map.

    ``p0`` gives ""; a class with regions gets :func:`make_prompt`'s ladder computed on them; an empty
    ``mask`` (the class is absent: a negative sample) gives ``class_name`` (``p1``-``p4``) or
    "<class_name> in <modality>" (``p5``/``p6``), never "no <class>" (see the module docstring).
    """
    if style == "p0":
        return ""
    if style not in STYLES or style == "random":
        raise LvsegError(f"prompt style {style!r} is not one of {', '.join(CLASS_PROMPT_STYLES[:-1])}")
    if not np.any(np.asarray(mask)):
        return f"{class_name} in {article(modality)}" if style in ("p5", "p6") else class_name
    return make_prompt(mask, class_name, modality, style)


def class_prompts(
    label_map: np.ndarray, classes: Mapping[int, str], modality: str, style: str = "p6"
) -> dict[int, str]:
    """{class value: :func:`class_prompt` of that class} for a label map (H, W) of class values."""
    array = np.asarray(label_map)
    return {value: class_prompt(array == value, name, modality, style) for value, name in classes.items()}


def style_for(name: str, style: str, seed: int = 0) -> str:
    """``style``, or for ``random`` one of p1 ... p6 fixed by ``seed`` and the image ``name``."""
    if style != "random":
        return style
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return STYLES[digest[0] % 6]


def _mask_for(image: Path, masks: dict[str, Path]) -> Path | None:
    return masks.get(image.stem) or masks.get(MASK_PREFIX + image.stem)


def write_prompts(
    root: str | Path, class_name: str, modality: str, style: str = "p6", seed: int = 0, overwrite: bool = False
) -> dict[str, int]:
    """Write ``<Split>_text.csv`` (``Image`` = mask file name, ``Description`` = prompt) into every split
    folder of ``root`` that has ``img/`` and ``labelcol/``; returns {split: number of images}.

    Raises :class:`LvsegError` when a split already has a text table (unless ``overwrite``), and
    :class:`DataValidationError` listing every image without a mask, an unreadable image or mask and a mask whose
    size differs from its image's (the rules of ``lvseg data check``, :func:`lvseg.data.layout.image_mask_problems`),
    before anything is written.
    """
    if style not in STYLES:
        raise LvsegError(f"--style {style!r} is not one of {', '.join(STYLES)}")
    if not class_name.strip() or not modality.strip():
        raise LvsegError("--class-name and --modality must not be empty")
    root = Path(root)
    splits = {split: root / folder for split, folder in SPLIT_FOLDERS.items() if (root / folder / IMAGE_DIR).is_dir()}
    if not splits:
        raise LvsegError(f"no split folder with an '{IMAGE_DIR}/' folder under '{root}' (expected Train_Folder, ...)")
    problems, plans = [], {}
    for split, folder in splits.items():
        existing = sorted(folder.glob("*_text.*"))
        if existing and not overwrite:
            problems.append(f"'{existing[0]}' exists; pass --overwrite to replace it")
            continue
        masks = (
            {path.stem: path for path in list_image_files(folder / MASK_DIR)} if (folder / MASK_DIR).is_dir() else {}
        )
        pairs = []
        for image in list_image_files(folder / IMAGE_DIR):
            mask = _mask_for(image, masks)
            if mask is None:
                problems.append(f"image '{image}' has no mask in '{folder / MASK_DIR}'")
                continue
            pair_problems = image_mask_problems(image, mask)  # the rules of `lvseg data check`
            problems += pair_problems
            if not pair_problems:
                pairs.append((image, mask))
        plans[split] = (folder, existing, pairs)
    if problems:
        raise DataValidationError(problems, where=str(root))
    counts = {}
    for split, (folder, existing, pairs) in plans.items():
        rows = [
            (mask.name, make_prompt(read_mask(mask), class_name, modality, style_for(image.stem, style, seed)))
            for image, mask in pairs
        ]
        buffer = io.StringIO()
        pd.DataFrame(rows, columns=[IMAGE_COLUMN, TEXT_COLUMN]).to_csv(buffer, index=False)
        table = next(path for path in text_file_candidates(folder) if path.suffix == ".csv")
        atomic_write_text(table, buffer.getvalue())
        for stale in existing:
            if stale != table:
                stale.unlink()
        counts[split] = len(rows)
    return counts
