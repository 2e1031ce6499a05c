"""The torch Dataset over parsed records, the collate function and the DataLoader factory."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision import tv_tensors

from benchmark.data.images import load_rgb
from benchmark.data.records import ImageRecord


class DetectionDataset(Dataset):
    """Images and boxes of one split, transformed on access.

    Item ``i`` is ``(image, target)``:

    * ``image``: ``tv_tensors.Image`` float32 ``[3, H, W]`` in [0, 1], already resized.
    * ``target["boxes"]``: ``tv_tensors.BoundingBoxes`` float32 ``[N, 4]``, XYXY absolute
      pixels of the resized image (``[0, 4]`` for a negative image).
    * ``target["labels"]``: int64 ``[N]``, contiguous ``0..C-1`` (no background class).
    * ``target["image_id"]``: int, the image's id in the split's COCO ground truth.
    * ``target["orig_size"]``: ``(h, w)`` of the original image, to scale detections back.
    * ``target["size"]``: ``(h, w)`` after the transforms.

    Args:
        records: Parsed images (see :class:`benchmark.data.records.ImageRecord`).
        transforms: A v2 pipeline ``(PIL image, target) -> (image, target)``.
    """

    def __init__(self, records: Sequence[ImageRecord], transforms: Callable):
        self.records = list(records)
        self.transforms = transforms

    def __len__(self) -> int:
        return len(self.records)

    def load_image(self, index: int) -> Image.Image:
        """The original image of item ``index`` as 8-bit RGB, checked against its record.

        :func:`benchmark.data.build_data` checked every file already; this checks again
        because a file may change (or break) while a job runs.

        Raises:
            DatasetError: The file cannot be decoded, its size differs from the annotation,
                or its mode is not supported (:func:`benchmark.data.images.to_rgb`).
        """
        rec = self.records[index]
        return load_rgb(rec.path, rec.width, rec.height)

    def __getitem__(self, index: int) -> tuple[tv_tensors.Image, dict]:
        rec = self.records[index]
        image = self.load_image(index)
        target = {
            "boxes": tv_tensors.BoundingBoxes(
                torch.from_numpy(rec.boxes).reshape(-1, 4),
                format=tv_tensors.BoundingBoxFormat.XYXY,
                canvas_size=(rec.height, rec.width),
            ),
            "labels": torch.from_numpy(rec.labels),
            "image_id": rec.image_id,
            "orig_size": (rec.height, rec.width),
        }
        image, target = self.transforms(image, target)
        target["size"] = tuple(image.shape[-2:])
        return image, target


def collate(batch: Sequence[tuple]) -> tuple[list[torch.Tensor], list[dict]]:
    """Batch as lists: images differ in size under ``shorter_side``, targets in box count.

    Returns:
        ``(images, targets)``: list of ``[3, H_i, W_i]`` tensors and list of target dicts.
    """
    images, targets = zip(*batch, strict=True) if batch else ((), ())
    return list(images), list(targets)


def build_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    shuffle: bool,
    num_workers: int = 0,
    seed: int = 0,
    sampler: Sampler | None = None,
    drop_last: bool = False,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader using :func:`collate`, deterministic given ``seed``.

    The seeded ``torch.Generator`` fixes the shuffling order and the per-worker base
    seeds (torchvision's random transforms draw from torch's RNG, which DataLoader seeds
    per worker from it). With ``num_workers=0`` the transforms draw from the global torch
    RNG instead, so the caller seeds that (``torch.manual_seed``) for repeatable
    augmentation.

    Speed note: with ``num_workers=0`` the per-image tensor ops (the float conversion)
    run with the trainer's intra-op thread count. On a loaded CPU each such tiny
    parallel op can wait a scheduler slice (measured: ~2 ms/image with 1 thread vs
    ~25 ms with 2 on the shared 2-core box). Workers run single-threaded, so prefer
    ``num_workers >= 1`` or ``torch.set_num_threads(1)`` for small models there.

    Args:
        dataset: Usually ``DetectionData.train`` or ``.val``.
        batch_size: Images per batch.
        shuffle: Reshuffle every epoch. Ignored when ``sampler`` is given (e.g. a
            DistributedSampler, which shuffles itself).
        num_workers: Loader processes (0: load in the main process).
        seed: Seed of the loader's generator.
        sampler: Optional sampler replacing the default one.
        drop_last: Drop the last incomplete batch.
        pin_memory: Pin the batches' host memory; pass :attr:`benchmark.device.Device.pin_memory`
            of the device the batches go to (true on CUDA only).
    """
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else False,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        drop_last=drop_last,
        generator=generator,
        persistent_workers=num_workers > 0,
    )
