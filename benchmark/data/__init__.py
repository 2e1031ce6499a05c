"""Data pipeline: datasets (synthetic, COCO format, Pascal VOC), transforms and loaders.

Public API (other packages code against exactly these names):
:class:`DatasetError`, :class:`DetectionData`, :func:`build_data`, :func:`collate`,
:func:`build_loader`.
"""

from benchmark.data.build import DetectionData, build_data
from benchmark.data.dataset import build_loader, collate
from benchmark.data.errors import DatasetError

__all__ = ["DatasetError", "DetectionData", "build_data", "build_loader", "collate"]
