"""Prediction API: ``lvseg.load_model(checkpoint).predict(image, text)``."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from lvseg.data.input_statistics import InputStatistics
from lvseg.data.report_text import BLANK_REPORT, is_blank_report
from lvseg.errors import LvsegError
from lvseg.inference.consistency import ConsistencyWarning, check_consistency, image_warnings
from lvseg.inference.multiclass import (
    ALL_CLASSES,
    ClassPrediction,
    build_class_prediction,
    class_prompts,
    class_table_of,
    select_classes,
    table_colours,
)
from lvseg.inference.threshold import check_threshold, threshold_or_default
from lvseg.text.base import TextReading

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from lvseg.backend_record import BackendRecord
    from lvseg.data.classes import ClassInfo
    from lvseg.models.base import SegmentationModel

logger = logging.getLogger(__name__)


@dataclass
class Prediction:
    """mask: (H, W) uint8 {0, 1}; probability: (H, W) float32 in [0, 1]; both at the input's resolution.

    reading: how the model understood the report (unknown words, whether it parsed); ``warnings`` says it in
    plain sentences, and whether the mask is empty ("no lesion found", with the highest probability seen).
    consistency: where the result contradicts its report, or the image is unlike the training images
    (:mod:`lvseg.inference.consistency`).
    """

    mask: np.ndarray
    probability: np.ndarray
    reading: TextReading = field(default_factory=TextReading)
    consistency: list[ConsistencyWarning] = field(default_factory=list)

    @property
    def lesion_found(self) -> bool:
        return bool(self.mask.any())

    @property
    def max_probability(self) -> float:
        return float(self.probability.max()) if self.probability.size else 0.0

    @property
    def warnings(self) -> list[str]:
        return self.reading.warnings()


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise LvsegError(f"device {device!r} is not a valid torch device (use 'cpu', 'cuda' or 'cuda:1')") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise LvsegError(f"device {device!r} was requested but CUDA is not available on this machine")
    return resolved


def upsample_probability(probability: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(1, S, S) probability -> (H, W) float32 at ``size`` (bilinear), clamped to [0, 1]."""
    return upsample_probabilities(probability, size)[0]


def upsample_probabilities(probabilities: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(K, S, S) probabilities -> (K, H, W) float32 at ``size`` (bilinear), clamped to [0, 1]."""
    full = F.interpolate(probabilities[None].float(), size=size, mode="bilinear", align_corners=False)[0]
    return full.clamp(0, 1)


class Segmenter:
    """A trained model (a :class:`~lvseg.models.SegmentationModel`, text front end included), ready to
    segment images described by reports.

    Thread-safe: one lock serialises forward passes so concurrent callers get identical results.

    ``backend`` says how the network runs (:mod:`lvseg.inference.backends`); ``auto`` falls back to ``eager``,
    with a warning, for a model that cannot be exported, and is ``eager`` when ``expected_images`` is 1 (exporting
    costs more than it saves for one image). ``graph`` (with ``input_names``): an exported network
    (``lvseg export``) to run instead of ``model``'s own; ``model`` then provides the text front end only.
    ``backend_record``: the checkpoint's backend record (:mod:`lvseg.backend_record`): ``auto`` picks
    the fastest backend that passed its accuracy guard, and the tuned backends run as it says.
    ``decision_threshold``: the probability above which :meth:`predict` marks lesion when not given one (default:
    the model's declared ``decision_threshold``; an export folder passes the one its manifest records).
    """

    def __init__(
        self,
        model: SegmentationModel,
        hparams: dict[str, Any] | None = None,
        metrics: dict[str, float] | None = None,
        device: str | torch.device | None = None,
        backend: str = "eager",
        graph: Path | None = None,
        input_names: list[str] | None = None,
        expected_images: int | None = None,
        decision_threshold: float | None = None,
        backend_record: BackendRecord | None = None,
    ) -> None:
        from lvseg.inference.backend_choice import backend_spec
        from lvseg.inference.backends import make_runner, resolve_backend

        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.hparams = dict(hparams or {"model_name": model.model_name, "model_config": model.config})
        self.metrics = dict(metrics or {})
        #: The training images' statistics recorded in the checkpoint (None for older checkpoints: no image check).
        self.input_statistics = InputStatistics.from_dict(self.hparams.get("input_statistics"))
        self.model_name: str = model.model_name
        self.img_size: int = int(model.config.get("img_size", 224))
        self.in_channels: int = int(model.config.get("in_channels", 3))
        self.requires_text: bool = bool(model.requires_text)
        #: Output channels of the network: 1 (one structure per prompt), or K (one channel per class of
        #: :attr:`class_table`, in its order).
        self.output_classes: int = int(getattr(model, "output_classes", 1) or 1)
        #: The classes the checkpoint records ([] for a binary one); :meth:`segment_classes` chooses among them.
        self.class_table: list[ClassInfo] = class_table_of(self.hparams)
        if self.output_classes > 1 and len(self.class_table) != self.output_classes:
            raise LvsegError(
                f"model '{self.model_name}' has {self.output_classes} output channels but its checkpoint lists "
                f"{len(self.class_table)} classes (hparams 'class_table'); expected one class per channel"
            )
        #: The probability above which :meth:`predict` marks lesion unless given a threshold.
        self.decision_threshold: float = threshold_or_default(
            decision_threshold, float(model.decision_threshold), "decision_threshold"
        )
        self._lock = threading.Lock()
        #: The checkpoint's own accuracy guard of its backends (None: never tuned), which ``auto`` follows.
        self.backend_record = backend_record
        self.backend = resolve_backend(
            backend, self.device, expected_images if graph is None else None, backend_record, graph is not None
        )
        try:
            example = None
            if backend_spec(self.backend).exports and graph is None:
                from lvseg.inference.backends import example_reports

                with torch.no_grad():
                    example = (
                        torch.rand(1, self.in_channels, self.img_size, self.img_size),
                        self.model.encode_text(example_reports(self.model, 1)) if self.requires_text else None,
                    )
            self._runner = make_runner(
                self.backend, self.model, self.device, example, graph, input_names, backend_record
            )
        except LvsegError as error:
            if backend != "auto" or graph is not None:
                raise
            logger.warning("backend auto: %s; running the model with eager instead", error)
            self.backend = "eager"
            self._runner = make_runner("eager", self.model, self.device)

    @property
    def net(self) -> torch.nn.Module:
        """The model (``torch.nn.Module``); same object as :attr:`model`."""
        return self.model

    @property
    def text_encoder(self) -> torch.nn.Module | None:
        return getattr(self.model, "text_encoder", None)

    @property
    def example_reports(self) -> tuple[str, ...]:
        """Reports in the wording the model reads (the model's declared examples)."""
        return tuple(self.model.example_reports)

    def keep_text_cache_in_memory(self, max_items: int = 4096) -> None:
        """Frozen text encoders keep their features in memory only (at most ``max_items`` reports), for servers."""
        for module in self.model.modules():
            keep = getattr(module, "keep_cache_in_memory", None)
            if callable(keep):
                keep(max_items)

    @torch.inference_mode()
    def probabilities(self, images: torch.Tensor, texts: list[str], allow_empty_text: bool = False) -> torch.Tensor:
        """Probabilities at model resolution: images (B, C, S, S) in [0, 1] -> (B, 1, S, S) float32 on the CPU.

        Empty reports are refused for text models unless ``allow_empty_text`` (the "empty" ablation).
        """
        if self.requires_text and not allow_empty_text and any(is_blank_report(str(text)) for text in texts):
            raise LvsegError(
                f"model '{self.model_name}' reads the report: the text must not be empty (a report {BLANK_REPORT})"
            )
        images = images.to(self.device)
        with self._lock:
            text_input = self.model.encode_text([str(text) for text in texts])  # the text front end: eager fp32
            logits = self._runner(images, text_input)
        return torch.sigmoid(logits.float()).cpu()

    def warm_up(self) -> None:
        """One prediction on a blank image, so the first real request does not pay for lazy initialisation
        (compilation, allocator warm-up)."""
        images = torch.zeros(1, self.in_channels, self.img_size, self.img_size)
        # The model's own example report: a report-grammar front end (C2FVL) refuses arbitrary text.
        self.probabilities(
            images, [self.model.example_reports[0]] if self.requires_text else [""], allow_empty_text=True
        )

    def predict_batch(
        self,
        images: list[Any],
        texts: list[str],
        threshold: float | None = None,
        row_directions: list[str | None] | None = None,
    ) -> list[Prediction]:
        """Segment several images at once; each result is at its own image's resolution. ``threshold``: the
        probability above which a pixel is lesion, in (0, 1) (default: :attr:`decision_threshold`).
        ``row_directions``: per image, the patient direction its rows run toward (DICOM PatientOrientation's
        first value) for the side check of :mod:`lvseg.inference.consistency`; None: the radiological
        convention."""
        from lvseg.data.images import read_image, resize_image

        cut = self.decision_threshold if threshold is None else check_threshold(threshold)
        if self.output_classes > 1:
            raise LvsegError(
                f"model '{self.model_name}' segments {self.output_classes} classes at once "
                f"({', '.join(info.name for info in self.class_table)}): choose them with segment_classes "
                f"(lvseg predict --classes NAME,... or --classes {ALL_CLASSES})"
            )
        if len(images) != len(texts):
            raise LvsegError(f"got {len(images)} images but {len(texts)} texts; give one report per image")
        directions = row_directions if row_directions is not None else [None] * len(images)
        if len(directions) != len(images):
            raise LvsegError(f"got {len(images)} images but {len(directions)} row directions")
        arrays = [read_image(image, channels=self.in_channels) for image in images]
        inputs = torch.stack([resize_image(array, self.img_size) for array in arrays])
        probabilities = self.probabilities(inputs, texts)
        results = []
        for probability, array, model_input, text, direction in zip(probabilities, arrays, inputs, texts, directions):
            full = upsample_probability(probability, tuple(array.shape[-2:])).numpy()
            mask = (full > cut).astype(np.uint8)
            warnings = check_consistency(mask, full, text, model_input, self.input_statistics, direction)
            results.append(
                Prediction(mask=mask, probability=full, reading=self.model.read_report(text), consistency=warnings)
            )
        return results

    def predict(
        self, image: Any, text: str = "", threshold: float | None = None, row_direction: str | None = None
    ) -> Prediction:
        """Segment one image (path, bytes, PIL image or array) described by ``text``; mask (H, W) and probability
        (H, W) at the image's resolution. ``threshold``: default :attr:`decision_threshold`; ``row_direction``:
        see :meth:`predict_batch`."""
        return self.predict_batch([image], [text], threshold=threshold, row_directions=[row_direction])[0]

    # ------------------------------------------------------------------------------------- several classes

    def select_classes(self, choice: str | Sequence[str] = ALL_CLASSES) -> list[ClassInfo]:
        """The classes of :attr:`class_table` that ``choice`` names (``"all"``, ``"liver,kidney"``, a list),
        in table order; :class:`~lvseg.inference.multiclass.ClassSelectionError` names unknown ones."""
        return select_classes(self.class_table, choice)

    def class_prompts(
        self,
        classes: Sequence[ClassInfo],
        prompts: Mapping[str, str] | None = None,
        modality: str | None = None,
    ) -> list[str]:
        """The prompt each class is asked with (:func:`lvseg.inference.multiclass.class_prompts`: the caller's
        text, the class's template, else its name, with the modality when known); "" for a model with one
        output channel per class. ``modality`` defaults to the one training recorded."""
        if not self.requires_text:
            return [""] * len(classes)
        from lvseg.data.formats import recorded_data_options

        # How training worded its per-class prompts. A VLSM-layout set's prompts came written in its records: its
        # recorded --modality was not said in them.
        recorded = recorded_data_options(self.hparams)
        trained_modality = recorded.get("modality") if recorded.get("layout") != "vlsm" else None
        return class_prompts(classes, prompts, modality or trained_modality, recorded.get("prompt_type"))

    def segment_classes_batch(
        self,
        images: list[Any],
        classes: str | Sequence[str] = ALL_CLASSES,
        threshold: float | None = None,
        prompts: list[Mapping[str, str] | None] | None = None,
        modality: str | None = None,
        pixel_spacings: list[tuple[float, float] | None] | None = None,
        batch_size: int = 16,
    ) -> list[ClassPrediction]:
        """Segment several classes of each image into a label map (:mod:`lvseg.inference.multiclass` says how
        each class is asked for and how overlaps are settled); each result is at its image's resolution.

        ``classes``: names, ``"all"`` or a comma-separated string (:meth:`select_classes`). ``prompts``: per
        image, {class name: text} replacing that class's own prompt (None: the classes' prompts).
        ``modality``: e.g. "CT slice", said in the classes' prompts (default: the one training recorded).
        ``pixel_spacings``: per image, (row, column) pixel size in mm, for areas in mm². ``batch_size``: rows
        per forward pass (a text model runs each image once per class: B images x K classes rows).
        """
        from lvseg.data.images import read_image, resize_image

        cut = self.decision_threshold if threshold is None else check_threshold(threshold)
        chosen = self.select_classes(classes)
        problems = [
            f"got {len(images)} images but {len(given)} {label}"
            for label, given in (("prompt mappings", prompts), ("pixel spacings", pixel_spacings))
            if given is not None and len(given) != len(images)
        ]
        if self.output_classes == 1 and not self.requires_text:
            problems.append(
                f"model '{self.model_name}' is image-only with one output: it cannot be asked for a class "
                "(it segments the same structure whatever the class); predict without classes"
            )
        if self.output_classes > 1 and self.requires_text:
            problems.append(
                f"model '{self.model_name}' reads text and has {self.output_classes} output channels; lvseg "
                "segments classes with a text model of one output or an image-only model of one channel per class"
            )
        if problems:
            raise LvsegError("; ".join(problems))
        per_image = [self.class_prompts(chosen, given, modality) for given in (prompts or [None] * len(images))]
        arrays = [read_image(image, channels=self.in_channels) for image in images]
        inputs = torch.stack([resize_image(array, self.img_size) for array in arrays])
        if self.output_classes > 1:  # one forward per image; channel k is the k-th class of the table
            position = {info.value: index for index, info in enumerate(self.class_table)}
            channels = [position[info.value] for info in chosen]
            parts = [
                self.probabilities(part, [""] * len(part), allow_empty_text=True)
                for part in torch.split(inputs, batch_size)
            ]
            probabilities = torch.cat(parts)[:, channels]
        else:  # one forward per (image, class): each image repeated K times, with each class's prompt
            rows = [(i, k) for i in range(len(images)) for k in range(len(chosen))]
            parts = []
            for start in range(0, len(rows), batch_size):
                batch = rows[start : start + batch_size]
                texts = [per_image[i][k] for i, k in batch]
                parts.append(self.probabilities(inputs[[i for i, _ in batch]], texts, allow_empty_text=True))
            probabilities = torch.cat(parts)[:, 0].reshape(len(images), len(chosen), *inputs.shape[-2:])
        colours = table_colours(self.class_table)
        readings = (
            {text: self.model.read_report(text) for texts in per_image for text in texts} if self.requires_text else {}
        )
        results = []
        for i, (array, model_input) in enumerate(zip(arrays, inputs)):
            full = upsample_probabilities(probabilities[i], tuple(array.shape[-2:])).numpy()
            results.append(
                build_class_prediction(
                    full,
                    chosen,
                    colours,
                    cut,
                    prompts=per_image[i],
                    readings=[readings[text] for text in per_image[i]] if self.requires_text else None,
                    consistency=image_warnings(model_input, self.input_statistics),
                    pixel_spacing_mm=pixel_spacings[i] if pixel_spacings is not None else None,
                )
            )
        return results

    def segment_classes(
        self,
        image: Any,
        classes: str | Sequence[str] = ALL_CLASSES,
        threshold: float | None = None,
        prompts: Mapping[str, str] | None = None,
        modality: str | None = None,
        pixel_spacing_mm: tuple[float, float] | None = None,
    ) -> ClassPrediction:
        """Segment ``classes`` of one image (path, bytes, PIL image or array) into a label map (H, W) with
        per-class masks, probabilities and areas; see :meth:`segment_classes_batch`."""
        return self.segment_classes_batch(
            [image],
            classes,
            threshold=threshold,
            prompts=[prompts],
            modality=modality,
            pixel_spacings=[pixel_spacing_mm],
        )[0]
