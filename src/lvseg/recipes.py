"""Training recipes as data: the presets a model's ``recipe`` names, and the check that a recipe is whole.

A recipe gives the training options whose default is "the recipe's": batch size, optimiser, learning rate,
weight decay, learning-rate schedule, gradient clipping, early-stopping patience, and optionally
``lr_scales`` (a learning-rate factor per parameter group the model declares, see
:meth:`lvseg.models.SegmentationModel.parameter_groups`) and ``lr_milestones`` (the epochs after which the
``multistep`` schedule divides the learning rate by 10). A model declares ``recipe`` as a preset name or as
a mapping overriding the ``lvit`` preset; the options a user gives always win.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from typing import Any

from lvseg.errors import LvsegError

#: The recipe fields every preset sets (``lr_scales`` is optional and defaults to 1 for every group;
#: ``lr_milestones``, the epochs of the ``multistep`` schedule, is optional).
RECIPE_FIELDS: tuple[str, ...] = (
    "batch_size",
    "optimizer",
    "lr",
    "weight_decay",
    "lr_schedule",
    "grad_clip",
    "patience",
)
OPTIONAL_RECIPE_FIELDS: tuple[str, ...] = ("lr_scales", "lr_milestones")

#: ``lvit``: the LViT paper's (Li et al., IEEE TMI 2023; lvseg's default). ``vlsm``: the medvlsm study's
#: (Poudel et al., MIDL 2024) for fine-tuning CLIPSeg-style models.
RECIPES: Mapping[str, Mapping[str, Any]] = types.MappingProxyType(
    {
        "lvit": types.MappingProxyType(
            {
                "batch_size": 2,
                "optimizer": "adam",
                "lr": 1e-3,
                "weight_decay": 0.0,
                "lr_schedule": "cosine",
                "grad_clip": 0.0,
                "patience": 50,
            }
        ),
        "vlsm": types.MappingProxyType(
            {
                "batch_size": 128,
                "optimizer": "adamw",
                "lr": 2e-3,
                "weight_decay": 1e-3,
                "lr_schedule": "plateau",
                "grad_clip": 0.5,
                "patience": 20,
            }
        ),
        # CRIS's official RefCOCO recipe (Wang et al., CVPR 2022; config/refcoco/cris_r50.yaml): Adam, 1e-4 for the
        # head and 1e-5 for the CLIP towers from the first epoch, x0.1 after epoch 35 of 50 (multistep, milestone
        # 35; --max-epochs 50).
        "cris-official": types.MappingProxyType(
            {
                "batch_size": 64,
                "optimizer": "adam",
                "lr": 1e-4,
                "weight_decay": 0.0,
                "lr_schedule": "multistep",
                "lr_milestones": (35,),
                "grad_clip": 0.0,
                "patience": 50,
                "lr_scales": types.MappingProxyType({"towers": 0.1}),
            }
        ),
    }
)
DEFAULT_RECIPE = "lvit"


def recipe_problems(recipe: object) -> list[str]:
    """What is wrong with a declared recipe (a preset name or a mapping of recipe fields); empty when fine."""
    if isinstance(recipe, str):
        return [] if recipe in RECIPES else [f"unknown preset {recipe!r} (presets: {', '.join(RECIPES)})"]
    if not isinstance(recipe, Mapping):
        return [f"expected a preset name or a mapping of recipe fields, got {type(recipe).__name__}"]
    allowed = RECIPE_FIELDS + OPTIONAL_RECIPE_FIELDS
    problems = [f"unknown field {name!r} (fields: {', '.join(allowed)})" for name in recipe if name not in allowed]
    scales = recipe.get("lr_scales", {})
    if not isinstance(scales, Mapping) or not all(isinstance(v, (int, float)) and v >= 0 for v in scales.values()):
        problems.append("lr_scales must map parameter-group names to non-negative numbers")
    milestones = recipe.get("lr_milestones", ())
    if not isinstance(milestones, (list, tuple)) or not all(
        isinstance(epoch, int) and not isinstance(epoch, bool) and epoch >= 1 for epoch in milestones
    ):
        problems.append("lr_milestones must be a list of epochs >= 1")
    return problems


def resolve_recipe(recipe: str | Mapping[str, Any]) -> dict[str, Any]:
    """A declared recipe as a full one: a preset's fields, or the ``lvit`` preset overridden by a mapping."""
    problems = recipe_problems(recipe)
    if problems:
        raise LvsegError("recipe: " + "; ".join(problems))
    if isinstance(recipe, str):
        return dict(RECIPES[recipe])
    return dict(RECIPES[DEFAULT_RECIPE]) | dict(recipe)


def describe_recipe(recipe: Mapping[str, Any]) -> str:
    """A recipe in a few words, e.g. 'adam 0.001, weight decay 0, cosine, batch 2, clip 0, patience 50'."""
    schedule = recipe["lr_schedule"]
    if schedule == "multistep" and recipe.get("lr_milestones"):
        schedule += " at epoch " + "/".join(str(epoch) for epoch in recipe["lr_milestones"])
    return (
        f"{recipe['optimizer']} {recipe['lr']:g}, weight decay {recipe['weight_decay']:g}, {schedule}, "
        f"batch {recipe['batch_size']}, gradient clipping {recipe['grad_clip']:g}, patience {recipe['patience']}"
    )
