"""What the app reads of a model: the interface of ``lvseg.inference.Segmenter``, which test fakes provide too."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from lvseg.data.classes import ClassInfo
    from lvseg.inference.multiclass import ClassPrediction


class ReadingLike(Protocol):
    """How a model read one report (``lvseg.text.base.TextReading``)."""

    @property
    def unknown_words(self) -> Sequence[str]: ...

    @property
    def parsed(self) -> bool | None: ...

    def warnings(self) -> list[str]: ...


class WarningLike(Protocol):
    """One consistency warning (``lvseg.inference.consistency.ConsistencyWarning``)."""

    @property
    def code(self) -> str: ...

    @property
    def message(self) -> str: ...


class PredictionLike(Protocol):
    """One result of :meth:`SegmenterLike.predict` (``lvseg.inference.Prediction``): arrays at the input's size."""

    @property
    def mask(self) -> Any: ...

    @property
    def probability(self) -> Any: ...

    @property
    def reading(self) -> ReadingLike | None: ...

    @property
    def consistency(self) -> Sequence[WarningLike]: ...


class SegmenterLike(Protocol):
    """Everything the app reads of a model (``lvseg.inference.Segmenter`` or ``lvseg.serving.fake.FakeSegmenter``).

    ``hparams`` may name the ``validation_data`` the metrics were measured on; ``device`` is shown as text;
    ``decision_threshold`` is the model's declared threshold, the app's default. ``class_table``: the classes
    of a multi-class checkpoint ([] for a binary one), which :meth:`segment_classes` segments into a label map;
    ``output_classes``: 1, or K for a model with one output channel per class (it needs a class choice).
    """

    model_name: str
    img_size: int
    requires_text: bool
    device: Any
    metrics: dict[str, Any]
    hparams: dict[str, Any]
    decision_threshold: float
    class_table: list[ClassInfo]
    output_classes: int

    @property
    def text_encoder(self) -> Any: ...

    @property
    def example_reports(self) -> Sequence[str]: ...

    def keep_text_cache_in_memory(self) -> None: ...

    def predict(
        self, image: Any, text: str, threshold: float | None = None, row_direction: str | None = None
    ) -> PredictionLike: ...

    def class_prompts(
        self, classes: Sequence[ClassInfo], prompts: Mapping[str, str] | None = None, modality: str | None = None
    ) -> list[str]: ...

    def segment_classes(
        self,
        image: Any,
        classes: str | Sequence[str] = "all",
        threshold: float | None = None,
        prompts: Mapping[str, str] | None = None,
        modality: str | None = None,
        pixel_spacing_mm: tuple[float, float] | None = None,
    ) -> ClassPrediction: ...
