"""PooledTextNet: the image tower's features scaled and shifted by the masked mean of the report's tokens.

Everything lvseg needs is declared here: the recipe (with the tower at 0.1x the learning rate through a
parameter group), the text pooling, tiny test options, the decision threshold, example reports and the
importer of the family's "official" checkpoints (keys ``backbone.*`` / ``classifier.*``).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lvseg.checkpoint import save_inference_checkpoint
from lvseg.importers import ImporterOption, ImportResult, OfficialImporter
from lvseg.models import ModelOutput, SegmentationModel
from lvseg.models.base import ParameterGroup, PretrainedFolders
from lvseg_example_plugin.tower import TinyTower


class PooledTextNet(SegmentationModel):
    requires_text = True
    default_text_encoder = "learned"
    recipe = {"batch_size": 4, "lr": 2e-3, "lr_scales": {"tower": 0.1}}
    decision_threshold = 0.4
    example_reports = ("Lesion on the left.", "Two lesions, one on the left and a larger one on the right.")
    importer = "lvseg_example_plugin.model:ExampleImporter"

    def __init__(
        self,
        *,
        in_channels: int = 3,
        img_size: int = 64,
        width: int = 8,
        text_encoder: Any = None,
        text_len: int | None = None,
        texts: Sequence[str] | None = None,
    ) -> None:
        super().__init__(text_encoder=text_encoder, text_len=text_len, texts=texts)
        self.in_channels, self.img_size = in_channels, img_size
        self.text_len, self.text_dim = self.token_input_shape(text_len, None, default=(8, 16))
        self.tower = TinyTower(in_channels, width)
        self.film = nn.Linear(self.text_dim, 4 * width)
        self.head = nn.Conv2d(2 * width, 1, 1)

    @classmethod
    def tiny_options(cls, pretrained: PretrainedFolders) -> dict[str, Any]:
        return {"width": 4}

    def parameter_groups(self) -> list[ParameterGroup]:
        tower = list(self.tower.parameters())
        rest = [p for name, p in self.named_parameters() if p.requires_grad and not name.startswith("tower.")]
        return [ParameterGroup("tower", tower, 0.1), ParameterGroup("head", rest)]

    def encode_text(self, texts: Sequence[str]) -> Any:
        features = self.text_encoder(list(texts))
        return features.tokens.to(self.device), features.mask.to(self.device).float()

    def example_text_input(self, batch_size: int, device: torch.device | str = "cpu") -> Any:
        return (
            torch.zeros(batch_size, self.text_len, self.text_dim, device=device),
            torch.ones(batch_size, self.text_len, device=device),
        )

    def forward(self, images: torch.Tensor, text_input: Any = None) -> torch.Tensor | ModelOutput:
        self.check_images(images, self.in_channels, self.img_size)
        tokens, mask = text_input
        pooled = (tokens * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1.0)
        scale, shift = self.film(pooled)[:, :, None, None].chunk(2, dim=1)
        logits = self.head(self.tower(images) * (1 + scale) + shift)
        logits = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return ModelOutput(logits, {}) if self.training else logits


class ExampleImporter(OfficialImporter):
    family = "pooled-text-net"
    model_name = "pooled-text-net"
    source_description = "official PooledTextNet checkpoint"
    example_key = "backbone.stem.weight"
    summary = "Convert an official PooledTextNet checkpoint (backbone.* -> tower.*, classifier.* -> head.*)."
    options = (
        ImporterOption("width", "Tower width the official model was built with.", default=4, type=int, minimum=1),
    )

    def recognises(self, keys: Collection[str]) -> bool:
        return "backbone.stem.weight" in keys and any(key.startswith("classifier.") for key in keys)

    def convert(self, source: Path, out: Path, **options: Any) -> ImportResult:
        official = self.read(source)
        renamed = {
            key.replace("backbone.", "tower.", 1).replace("classifier.", "head.", 1): value
            for key, value in official.items()
            if not key.startswith("aux.")
        }
        model = PooledTextNet(img_size=32, width=options["width"], text_encoder="learned", texts=["lesion"])
        model.load_weights({**model.state_dict(), **renamed}, source=str(source))
        save_inference_checkpoint(out, model)
        dropped = [key for key in official if key.startswith("aux.")]
        return ImportResult(
            source=source,
            output=out,
            model_options=model.config,
            dropped={"auxiliary": dropped},
            n_parameters=model.parameter_counts()["inference"],
        )
