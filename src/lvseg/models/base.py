"""The contract every lvseg segmentation model follows: :class:`SegmentationModel`.

A model owns everything between "an image and a report" and "logits":

* **its text input**: a text encoder chosen as a model option (``text_encoder="learned"``,
  ``"hf:<id or path>"``, a config dict from a checkpoint, or a built :class:`~lvseg.text.TextEncoder`),
  built inside the model and registered as the submodule ``text_encoder``; :meth:`encode_text` turns
  a list of reports into whatever :meth:`forward` reads (image-only models: ``None``);
* **its outputs**: ``forward(images, text_input)`` returns logits (B, 1, H, W) in eval mode and a
  :class:`ModelOutput` (logits plus named auxiliary outputs, e.g. side outputs) in training mode;
* **its losses**: :meth:`compute_losses` returns a dict of named, already weighted loss terms
  (default: ``{"dice": 0.5 * soft Dice, "bce": 0.5 * class-balanced BCE}``), which training sums and
  logs as ``train_<name>``;
* **one prediction path**: :meth:`predict_logits` / :meth:`predict_proba` (validation, evaluation, the
  EMA teacher, ``lvseg.load_model().predict``, folder prediction and the web app all call it);
* **its config**: the keyword arguments of the constructor are captured automatically into
  ``model.config`` (JSON-able; ``create_model(name, **model.config)`` rebuilds the model);
* **what a checkpoint keeps**: :meth:`inference_state_dict` drops the modules named in
  ``training_only_modules``; frozen pretrained sub-models reloadable by id or path
  (:meth:`pretrained_sources`) never enter ``state_dict()``.

Segmentation is binary (one lesion class per prompt): logits have one channel. An image-only model may
declare ``multi_channel_classes = True`` and take the option ``n_classes`` (:data:`CLASS_CHANNELS_OPTION`):
built with ``n_classes=K`` its logits are (B, K, H, W), channel k the k-th class of the training set's class
table (``hparams["class_table"]``), and :attr:`SegmentationModel.output_classes` is K. Trained on a multi-class
set it sees one sample per image with a (K, S, S) target (:mod:`lvseg.data.class_channels`).
"""

from __future__ import annotations

import difflib
import functools
import inspect
import json
import types
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import torch
from torch import nn

from lvseg.data.reports import EXAMPLE_REPORTS
from lvseg.errors import LvsegError
from lvseg.recipes import DEFAULT_RECIPE, recipe_problems

if TYPE_CHECKING:
    from lvseg.text.base import TextEncoder, TextReading

#: The constructor option that sets the number of output channels of a model declaring
#: ``multi_channel_classes`` (one channel per class of a multi-class set).
CLASS_CHANNELS_OPTION = "n_classes"

#: Weights of the default loss terms (the LViT paper's 0.5 Dice + 0.5 class-balanced BCE).
DEFAULT_LOSS_WEIGHTS: Mapping[str, float] = types.MappingProxyType({"dice": 0.5, "bce": 0.5})


class ModelOutput(NamedTuple):
    """What ``forward`` returns in training mode.

    logits: (B, 1, H, W) main segmentation logits ((B, K, H, W) for a model with K output classes).
    aux:    named auxiliary outputs, each batch-first (B, ...), e.g. side-output logits; empty for
            models without any.
    """

    logits: torch.Tensor
    aux: dict[str, torch.Tensor]

    def select(self, rows: torch.Tensor) -> ModelOutput:
        """The output of a subset of the batch (``rows``: (B,) bool mask or index tensor)."""
        return ModelOutput(self.logits[rows], {name: value[rows] for name, value in self.aux.items()})


@dataclass(frozen=True)
class ParameterGroup:
    """Parameters the optimiser treats alike: ``lr_scale`` times the run's learning rate (a recipe's
    ``lr_scales`` entry for ``name`` overrides it)."""

    name: str
    parameters: list[nn.Parameter]
    lr_scale: float = 1.0


#: ``pretrained(layout)`` -> a folder holding a tiny random model in a published file layout ("clip-text": a
#: CLIP text tower and tokenizer as ``save_pretrained`` writes them, "clipseg": a CLIPSeg, "biomedclip": an
#: open_clip BiomedCLIP), for :meth:`SegmentationModel.tiny_options`.
PretrainedFolders = Callable[[str], Path]


def as_output(output: ModelOutput | torch.Tensor) -> ModelOutput:
    """``forward``'s result in either mode as a :class:`ModelOutput` (eval mode: no auxiliary outputs)."""
    return output if isinstance(output, ModelOutput) else ModelOutput(output, {})


def _json_able(value: Any) -> Any:
    """Plain JSON types (a checkpoint must load with ``weights_only=True``): paths become strings,
    numpy scalars Python numbers; anything else that JSON cannot hold is an error."""
    if isinstance(value, Mapping):
        return {str(key): _json_able(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_able(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", None) == 0:
        return value.item()
    return value


def _check_json(model: str, config: dict[str, Any]) -> None:
    try:
        json.dumps(config)
    except (TypeError, ValueError) as error:
        raise LvsegError(
            f"model {model!r}: its options must be JSON values (numbers, strings, lists, dicts): {error}"
        ) from None


class SegmentationModel(nn.Module):
    """Base class of every registered model (see the module docstring for the contract).

    Subclasses take keyword-only options, call ``super().__init__(text_encoder=..., text_len=...,
    texts=...)`` (image-only models: ``super().__init__()``) and implement :meth:`forward`.
    ``texts`` (the training reports, used to build a ``learned`` vocabulary) is never part of the config.
    """

    #: Registry name, set by :func:`lvseg.models.register_model`.
    model_name: ClassVar[str] = ""
    #: Whether the model reads the report (False: image-only, ``encode_text`` gives None).
    requires_text: ClassVar[bool] = False
    #: The text encoder ``lvseg train`` builds when ``--text-encoder`` is not given (text models).
    default_text_encoder: ClassVar[str | None] = None
    #: Names of submodules used only by training losses; dropped from inference checkpoints.
    training_only_modules: ClassVar[tuple[str, ...]] = ()
    #: Whether ``forward`` runs the model's own text tower (from token ids), so FLOP counts include it; an lvseg
    #: text encoder given as the ``text_encoder`` option replaces that tower and runs outside ``forward``.
    text_tower_in_forward: ClassVar[bool] = False
    #: Named loss terms and their weights; subclasses with auxiliary losses extend it.
    loss_weights: ClassVar[Mapping[str, float]] = DEFAULT_LOSS_WEIGHTS
    #: Training recipe: a preset name of :data:`lvseg.recipes.RECIPES` or a mapping overriding the
    #: ``lvit`` preset (checked when the class is defined).
    recipe: ClassVar[str | Mapping[str, Any]] = DEFAULT_RECIPE
    #: The input size S the model is built at when none is given: its constructor's ``img_size`` default
    #: (set when the class is defined; 224 for a constructor without one).
    default_img_size: ClassVar[int] = 224
    #: Reports the model's text front end reads (warm-up, export, shape probes, the web page's examples);
    #: the first is short, the last long.
    example_reports: ClassVar[tuple[str, ...]] = EXAMPLE_REPORTS
    #: Probability above which a pixel is lesion, unless the user says otherwise.
    decision_threshold: ClassVar[float] = 0.5
    #: The importer of the official code's checkpoints, as ``"package.module:ClassName"`` (a subclass of
    #: :class:`lvseg.importers.OfficialImporter`), or None. Named, not imported: importers sit above models.
    importer: ClassVar[str | None] = None
    #: Whether the model can give one output channel per class (image-only models): it then takes the option
    #: ``n_classes`` (:data:`CLASS_CHANNELS_OPTION`, default 1), and training on a multi-class set gives it one
    #: sample per image with a (K, S, S) target instead of one (image, prompt, binary mask) sample per class.
    multi_channel_classes: ClassVar[bool] = False

    config: dict[str, Any]
    text_encoder: TextEncoder | None

    #: The class attributes above, which a subclass sets to declare its facts (a near-miss spelling is refused).
    DECLARED_FACTS: ClassVar[tuple[str, ...]] = (
        "requires_text",
        "default_text_encoder",
        "training_only_modules",
        "text_tower_in_forward",
        "loss_weights",
        "recipe",
        "default_img_size",
        "example_reports",
        "decision_threshold",
        "importer",
        "accepts_unreadable_reports",
        "multi_channel_classes",
    )

    def __init_subclass__(cls, abstract: bool = False, **kwargs: Any) -> None:
        """``abstract=True``: a shared base of several models, with no options of its own (never built)."""
        super().__init_subclass__(**kwargs)
        _check_declared_facts(cls)
        if abstract:
            return
        init = cls.__dict__.get("__init__")
        if init is None:
            if cls.__init__ is SegmentationModel.__init__:
                raise TypeError(f"{cls.__name__} must define __init__ with its keyword-only options")
            return
        signature = inspect.signature(init)
        variadic = [
            name
            for name, parameter in signature.parameters.items()
            if parameter.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        ]
        if variadic:
            raise TypeError(
                f"{cls.__name__}.__init__ must name every option (no *args/**kwargs): its config is "
                f"captured from them; found {', '.join(variadic)}"
            )
        size = signature.parameters.get("img_size")
        if size is not None and isinstance(size.default, int) and not isinstance(size.default, bool):
            cls.default_img_size = size.default

        @functools.wraps(init)
        def capturing_init(self: SegmentationModel, *args: Any, **options: Any) -> None:
            init(self, *args, **options)
            if type(self).__init__ is capturing_init:  # the most derived constructor records the config
                bound = signature.bind(self, *args, **options)
                bound.apply_defaults()
                config = {name: value for name, value in bound.arguments.items() if name not in ("self", "texts")}
                self.config = self._finalize_config(config)
                _check_json(self.model_name or type(self).__name__, self.config)

        cls.__init__ = capturing_init  # type: ignore[method-assign]  # wraps each model's constructor

    def __init__(
        self,
        *,
        text_encoder: Any = None,
        text_len: int | None = None,
        texts: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        self.text_encoder = None
        if text_encoder is not None:
            if not self.requires_text:
                raise LvsegError(f"model {self.model_name!r} does not read reports; it takes no text encoder")
            from lvseg.text import build_text_encoder

            self.text_encoder = build_text_encoder(text_encoder, texts=texts, max_length=text_len)

    def _finalize_config(self, config: dict[str, Any]) -> dict[str, Any]:
        """The captured options, with a built text encoder recorded as its rebuildable config and the token
        input's effective ``text_len``/``text_dim`` (see :meth:`token_input_shape`)."""
        if self.text_encoder is not None and "text_encoder" in config:
            config["text_encoder"] = self.text_encoder.config()
        elif "text_encoder" in config:
            config["text_encoder"] = None
        for name in ("text_len", "text_dim"):
            if name in config and hasattr(self, name):
                config[name] = getattr(self, name)
        return _json_able(config)

    def token_input_shape(
        self, text_len: int | None, text_dim: int | None, default: tuple[int, int]
    ) -> tuple[int, int]:
        """(text_len, text_dim) of per-token text features: the encoder's when there is one (given values
        must agree), else the given ones or ``default`` (the paper's), for models reading (B, L, D) tokens."""
        if self.text_encoder is not None:
            encoder_dim = self.text_encoder.feature_dim
            if text_dim is not None and text_dim != encoder_dim:
                raise LvsegError(
                    f"{self.model_name}: text_dim {text_dim} contradicts the text encoder's feature size {encoder_dim}"
                )
            return self.text_encoder.max_length, encoder_dim
        return (default[0] if text_len is None else text_len), (default[1] if text_dim is None else text_dim)

    # ------------------------------------------------------------------------------------------ text

    def encode_text(self, texts: Sequence[str]) -> Any:
        """B reports -> this model's text input for :meth:`forward`, on the model's device (None: image-only).

        Text models with an encoder return its per-token features (B, L, D); models with other
        text front ends override this.
        """
        if not self.requires_text:
            return None
        if self.text_encoder is None:
            raise LvsegError(
                f"model {self.model_name!r} was built without a text encoder; build it with "
                "text_encoder='learned' or 'hf:<id or path>', or call forward() with text features"
            )
        return self.text_encoder(list(texts)).tokens.to(self.device)

    def read_report(self, text: str) -> TextReading:
        """How this model's text front end understands ``text`` (unknown words, whether it parsed), so a report
        that was mostly not read is said so instead of silently giving "no lesion"."""
        from lvseg.text.base import TextReading

        reader = getattr(self.text_encoder, "read", None)
        return reader(text) if self.requires_text and callable(reader) else TextReading()

    def report_problems(self, texts: Sequence[str]) -> dict[int, str]:
        """Reports this model's text front end cannot read: {position in ``texts``: what is wrong}.

        Training and ``lvseg data check --model`` list them with the image names before any work starts.
        Default: none (free-text encoders read anything)."""
        return {}

    @property
    def output_classes(self) -> int:
        """Output channels of the logits: 1 (binary: one structure, chosen by the prompt), or K for a model
        declaring ``multi_channel_classes`` built with ``n_classes=K`` (channel k: the k-th class of its table)."""
        if not self.multi_channel_classes:
            return 1
        return int(getattr(self, "config", {}).get(CLASS_CHANNELS_OPTION, getattr(self, CLASS_CHANNELS_OPTION, 1)))

    @property
    def has_text_front_end(self) -> bool:
        """Whether :meth:`encode_text` can read reports (a text model built without an encoder cannot)."""
        return self.text_encoder is not None

    #: Whether unreadable reports are accepted (read as an empty input) instead of being an error.
    accepts_unreadable_reports: bool = True

    def example_text_input(self, batch_size: int, device: torch.device | str = "cpu") -> Any:
        """A text input of the right shape for :meth:`forward` without running the text front end
        (shape checks, FLOP counts, export); image-only models: None."""
        return None

    @classmethod
    def tiny_options(cls, pretrained: PretrainedFolders) -> dict[str, Any]:
        """Small options for tests at ``img_size=32`` (the contract test builds every registered model with
        them); ``pretrained(layout)`` gives a folder holding a tiny random model in a published layout (see
        :data:`PretrainedFolders`) for models that read one. Default: none."""
        return {}

    def parameter_groups(self) -> list[ParameterGroup]:
        """The trainable parameters in the groups the optimiser treats alike (default: one group, ``all``).
        A model with pretrained towers declares them apart, e.g. ``ParameterGroup("towers", ..., 0.1)``."""
        return [ParameterGroup("all", [p for p in self.parameters() if p.requires_grad])]

    def check_images(self, images: torch.Tensor, channels: int, size: int) -> None:
        """Raise a :class:`LvsegError` unless ``images`` is (B, channels, size, size)."""
        if images.ndim != 4 or tuple(images.shape[1:]) != (channels, size, size):
            raise LvsegError(
                f"{self.model_name} expects images of shape (B, {channels}, {size}, {size}), got {tuple(images.shape)}"
            )

    @property
    def device(self) -> torch.device:
        for tensor in self.parameters():
            return tensor.device
        return torch.device("cpu")

    # ----------------------------------------------------------------------------------- prediction

    def forward(self, images: torch.Tensor, text_input: Any = None) -> torch.Tensor | ModelOutput:
        """images (B, C, H, W) in [0, 1], text_input from :meth:`encode_text` -> logits (B, 1, H, W)
        in eval mode, :class:`ModelOutput` in training mode."""
        raise NotImplementedError

    def predict_logits(self, images: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        """Encode ``texts`` and run the network: images (B, C, S, S) -> logits (B, 1, S, S).

        The main logits whatever the mode; call it in eval mode (under ``torch.no_grad()`` unless a
        gradient is wanted).
        """
        # The text front end runs in full precision even under an autocast context (only the network is
        # meant to run in bf16/fp16).
        with torch.autocast(images.device.type, enabled=False):
            text_input = self.encode_text(texts)
        return as_output(self(images, text_input)).logits

    @torch.no_grad()
    def predict_proba(self, images: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        """images (B, C, S, S), B reports -> lesion probabilities (B, 1, S, S) float32 (no gradient)."""
        return torch.sigmoid(self.predict_logits(images, texts).float())

    # ------------------------------------------------------------------------------------------ loss

    def compute_losses(
        self, output: ModelOutput | torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Named, weighted loss terms (scalars) whose sum is the training loss.

        output: ``forward``'s result (ModelOutput or logits (B, 1, H, W)); target (B, 1, H, W) in [0, 1];
        weight: optional (B,) per-image or (B, 1, H, W) per-pixel weights in [0, 1]
        (:func:`lvseg.models.losses.split_weight`; terms computed per image use the per-image part,
        :func:`~lvseg.models.losses.image_weight`). Auxiliary terms are only computed when ``output`` holds
        auxiliary outputs (training mode), so validation losses are the main terms only.

        K output channels (logits and target (B, K, H, W)): each term is computed per channel, as for a binary
        mask, and averaged over the channels (:func:`lvseg.models.losses.per_channel_mean`).
        """
        from lvseg.models.losses import class_balanced_bce_with_logits, per_channel_mean, soft_dice_loss

        logits = as_output(output).logits
        weights = self.loss_weights
        return {
            "dice": weights["dice"] * per_channel_mean(soft_dice_loss, logits, target, weight),
            "bce": weights["bce"] * per_channel_mean(class_balanced_bce_with_logits, logits, target, weight),
        }

    # ----------------------------------------------------------------------------------- checkpoints

    def pretrained_sources(self) -> dict[str, str]:
        """Frozen sub-models whose weights are reloaded by id or path, not stored: {module name: id or path}."""
        sources: dict[str, str] = {}
        for name, module in self.named_modules():
            source = getattr(module, "pretrained_source", None)
            if source:
                sources[name] = str(source)
        return sources

    def frozen_modules(self) -> list[nn.Module]:
        """The frozen pretrained parts (text encoders with ``trainable = False``, frozen
        :class:`~lvseg.models.pretrained.PretrainedTower` s), which an EMA teacher shares instead of copying:
        they never change."""
        from lvseg.models.pretrained import PretrainedTower
        from lvseg.text.base import TextEncoder

        return [
            module
            for module in self.modules()
            if (isinstance(module, TextEncoder) and not module.trainable)
            or (isinstance(module, PretrainedTower) and module.frozen)
        ]

    def inference_state_dict(self) -> dict[str, torch.Tensor]:
        """``state_dict()`` without the training-only modules (frozen pretrained weights are never in it)."""
        prefixes = tuple(f"{name}." for name in self.training_only_modules)
        return {key: value for key, value in self.state_dict().items() if not key.startswith(prefixes)}

    def strip_training_modules(self) -> SegmentationModel:
        """Remove the training-only modules (after loading, for inference); forward in eval mode never uses them."""
        for name in self.training_only_modules:
            if name in self._modules:
                del self._modules[name]
                object.__setattr__(self, name, None)
        return self

    def load_weights(self, state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
        """Load a full or inference state dict; anything else missing or unexpected is a :class:`LvsegError`."""
        prefixes = tuple(f"{name}." for name in self.training_only_modules)
        result = self.load_state_dict(dict(state_dict), strict=False)
        missing = [key for key in result.missing_keys if not key.startswith(prefixes)]
        if missing or result.unexpected_keys:
            parts = []
            if missing:
                parts.append(f"missing {len(missing)} key(s) such as {', '.join(missing[:3])}")
            if result.unexpected_keys:
                parts.append(
                    f"{len(result.unexpected_keys)} unexpected key(s) such as {', '.join(result.unexpected_keys[:3])}"
                )
            raise LvsegError(
                f"the weights in {source} do not fit model {self.model_name!r} "
                f"with options {self.config_summary()}: {'; '.join(parts)}"
            )

    def config_summary(self) -> dict[str, Any]:
        """The config with a learned vocabulary shortened, for messages."""
        summary = dict(self.config)
        encoder = summary.get("text_encoder")
        if isinstance(encoder, dict) and "vocab" in encoder:
            summary["text_encoder"] = {**encoder, "vocab": f"<{len(encoder['vocab'])} words>"}
        return summary

    def parameter_counts(self) -> dict[str, int]:
        """total, trainable, frozen (pretrained, not trained) and inference (without training-only modules)."""
        total = sum(p.numel() for p in self.parameters())
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        training_only = sum(
            p.numel()
            for name in self.training_only_modules
            if name in self._modules
            for p in self.get_submodule(name).parameters()
        )
        return {
            "total": total,
            "trainable": trainable,
            "frozen": total - trainable,
            "training_only": training_only,
            "inference": total - training_only,
        }


def _check_declared_facts(cls: type[SegmentationModel]) -> None:
    """Refuse, when a model class is defined, a fact with a wrong value or a near-miss of a fact's name (a
    misspelt ``recipie`` would otherwise leave the default recipe in force without a word)."""
    problems = [f"recipe: {problem}" for problem in recipe_problems(cls.recipe)]
    facts = SegmentationModel.DECLARED_FACTS
    for name in cls.__dict__:
        if name.startswith("_") or name in facts or callable(cls.__dict__[name]):
            continue
        close = difflib.get_close_matches(name, facts, n=1, cutoff=0.85)
        if close:
            problems.append(f"class attribute {name!r} looks like a misspelt {close[0]!r}")
    if not cls.example_reports or not all(isinstance(text, str) and text.strip() for text in cls.example_reports):
        problems.append("example_reports must be a non-empty tuple of non-empty reports")
    if not 0.0 < float(cls.decision_threshold) < 1.0:
        problems.append(f"decision_threshold must lie in (0, 1), got {cls.decision_threshold!r}")
    if cls.importer is not None and (not isinstance(cls.importer, str) or ":" not in cls.importer):
        problems.append(f"importer must be 'package.module:ClassName', got {cls.importer!r}")
    if cls.multi_channel_classes:
        if cls.requires_text:
            problems.append(
                "multi_channel_classes is for image-only models (a text model is asked for one class per prompt)"
            )
        init = cls.__dict__.get("__init__")
        if init is not None and CLASS_CHANNELS_OPTION not in inspect.signature(init).parameters:
            problems.append(f"multi_channel_classes needs the constructor option {CLASS_CHANNELS_OPTION!r}")
    if problems:
        raise TypeError(f"{cls.__name__}: " + "; ".join(problems))


def check_positive(model: str, **values: int) -> None:
    """Raise a :class:`LvsegError` naming each option of ``model`` that is not a positive integer."""
    bad = [
        f"{name} must be a positive integer, got {value!r}"
        for name, value in values.items()
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0
    ]
    if bad:
        raise LvsegError(f"{model}: " + "; ".join(bad))


def check_choices(model: str, **values: tuple[Any, Collection[Any]]) -> None:
    """Raise a :class:`LvsegError` naming each option of ``model`` (``name=(value, choices)``) whose value is
    not one of its choices."""
    bad = [
        f"{name} {value!r} is not one of {', '.join(map(str, choices))}"
        for name, (value, choices) in values.items()
        if value not in choices
    ]
    if bad:
        raise LvsegError(f"{model}: " + "; ".join(bad))


def check_img_size(model: str, img_size: int) -> None:
    if isinstance(img_size, bool) or not isinstance(img_size, int) or img_size <= 0 or img_size % 32:
        raise LvsegError(f"{model}: img_size must be a positive multiple of 32, got {img_size!r}")
