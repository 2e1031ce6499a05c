"""ImageNet top-1 accuracy of each feature extractor, for Figure 3 (detector vs classifier).

Offline metadata only, nothing is downloaded: torchvision ships the published accuracy of
its ImageNet weights in ``Weights.meta``; for the paper's extractors torchvision does not
have (MobileNet v1, Inception v2, Inception-ResNet v2), Huang et al. 2017 Table 2 gives the
top-1 of the checkpoints they used. timm's ``pretrained_cfg`` carries no accuracy, so timm
adapters are looked up under their torchvision name.

The number describes the extractor's architecture with its ImageNet weights. A sweep that
trains from scratch (``extractor.pretrained=false``, the offline default) does not use those
weights, which the report says next to the figure.
"""

from __future__ import annotations

from functools import cache

# Huang et al. 2017, Table 2 ("Properties of the 6 feature extractors that we use").
PAPER_TOP1 = {
    "vgg16": 71.0,
    "mobilenet_v1": 71.1,
    "inception_v2": 73.9,
    "resnet101": 76.4,
    "inception_v3": 78.0,
    "inception_resnet_v2": 80.4,
}
# timm model names (the adapters' ``model_name``) -> torchvision builder names.
_TIMM_TO_TORCHVISION = {
    "mobilenetv2_100": "mobilenet_v2",
    "mobilenetv3_small_100": "mobilenet_v3_small",
    "mobilenetv3_large_100": "mobilenet_v3_large",
    "mobilenetv1_100": "mobilenet_v1",
}


@cache
def _torchvision_top1(name: str) -> float | None:
    """Top-1 of torchvision's first (original, ``IMAGENET1K_V1``) weights for ``name``."""
    from torchvision.models import get_model_weights

    try:
        weights = list(get_model_weights(name))
    except (ValueError, KeyError):
        return None
    for w in weights:
        metrics = w.meta.get("_metrics", {}).get("ImageNet-1K", {})
        if "acc@1" in metrics:
            return float(metrics["acc@1"])
    return None


def _candidates(extractor: str, model_name: str | None) -> list[str]:
    names = [extractor, extractor.split("_refinedet")[0]]
    if model_name:
        names += [_TIMM_TO_TORCHVISION.get(model_name, model_name)]
    return list(dict.fromkeys(n for n in names if n))


def imagenet_top1(extractor: str, model_name: str | None = None) -> tuple[float | None, str | None]:
    """ImageNet top-1 (%) of an extractor and where the number comes from.

    Args:
        extractor: the extractor option (``resnet101``, ``mobilenet_v1``...).
        model_name: the timm model name of the adapter, when it has one.

    Returns:
        ``(top1, source)``: source is ``"torchvision"`` or ``"Huang et al. 2017 Table 2"``;
        ``(None, None)`` when unknown.
    """
    for name in _candidates(str(extractor), model_name):
        top1 = _torchvision_top1(name)
        if top1 is not None:
            return top1, "torchvision"
    for name in _candidates(str(extractor), model_name):
        if name in PAPER_TOP1:
            return PAPER_TOP1[name], "Huang et al. 2017 Table 2"
    return None, None
