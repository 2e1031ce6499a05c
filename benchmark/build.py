"""Build a detector from the Hydra config: one function, ``instantiate`` and ``_target_``;
and the architecture facts of a built detector that result.json records."""

from __future__ import annotations

from typing import Any

from hydra.utils import get_class
from omegaconf import DictConfig

from benchmark.spec import ModelRecipe
from models.errors import IncompatibleConfigError
from models.meta_arch.base import DetectionModel


def build_detector(cfg: DictConfig, num_classes: int) -> DetectionModel:
    """Instantiate ``cfg.extractor`` and hand it to ``cfg.meta_arch``.

    Necks and heads in the meta-architecture config are ``_partial_`` factories: their
    channel counts come from the extractor's ``feature_info`` inside the detector. The same
    path as :meth:`benchmark.spec.ModelRecipe.build`, which the job and its fresh memory
    process use.

    Raises:
        IncompatibleConfigError: a ``neck=`` choice on a detector that takes no context
            module (its class says ``takes_neck = False``): the job is recorded as skipped.
    """
    check_neck(cfg.meta_arch, _neck_choice(cfg))
    return ModelRecipe.from_cfg(cfg, num_classes).build()


def check_neck(meta_arch: DictConfig, choice: str | None = None) -> None:
    """Reject a context module (``top_down``, set by every option of the ``neck`` group) on a
    detector class whose metadata says it takes none."""
    cls = get_class(meta_arch._target_)
    if "top_down" in meta_arch and not getattr(cls, "takes_neck", True):
        neck = f"neck={choice}" if choice else "a neck (meta_arch.top_down)"
        raise IncompatibleConfigError(
            f"{neck} does not apply to {getattr(cls, 'display_name', cls.__name__)}: it takes "
            "no single-shot context module; drop the neck override for it"
        )


def _neck_choice(cfg: DictConfig) -> str | None:
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get().runtime.choices.get("neck")
    except ValueError:  # not under Hydra (plain compose in tests)
        return None


def architecture_keys(model: DetectionModel) -> dict[str, Any]:
    """``output_stride`` (the deepest extractor map's stride: 16 or 8 for the two-stage models
    in Huang et al.'s sense) and ``crop_size`` (the per-RoI crop side of a two-stage model,
    14 / 17, or R-FCN's bins x samples; None for single-shot ones), read from the module."""
    return {
        "output_stride": getattr(model, "output_stride", None),
        "crop_size": getattr(model, "crop_size", None),
    }
