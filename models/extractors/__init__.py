"""Feature extractors: the contract (``base``), a timm adapter, torchvision's MobileNetV3 (as
SSDLite taps it) and SSD's reduced VGG-16."""

from models.extractors.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    FeatureExtractor,
    FeatureInfo,
    LastStage,
)
from models.extractors.sequential import SequentialExtractor
from models.extractors.timm_extractor import TimmExtractor
from models.extractors.torchvision_mobilenet import TorchvisionMobileNetV3
from models.extractors.vgg16_reduced import L2Norm, VGG16Reduced, VGGBoxHead

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "FeatureExtractor",
    "FeatureInfo",
    "L2Norm",
    "LastStage",
    "SequentialExtractor",
    "TimmExtractor",
    "TorchvisionMobileNetV3",
    "VGG16Reduced",
    "VGGBoxHead",
]
