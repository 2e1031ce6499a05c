"""Decoding image files into 8-bit RGB, the one pixel format the transforms and models take.

Pillow opens files in many modes; ``Image.convert("RGB")`` is right for most of them but
silently wrong for some (a 16-bit PNG, mode ``I;16``, is clipped at 255 and comes out all
white). So every mode is either converted by a rule stated here or rejected by name:

* ``RGB``, ``L``, ``1``, ``P``, ``CMYK``, ``YCbCr``: Pillow's conversion (a palette is looked
  up, grey is replicated, CMYK uses Pillow's formula without a colour profile).
* ``I;16`` (and ``I;16L``, ``I;16B``, ``I;16N``): 16-bit grey, scaled to 8 bits over the full
  16-bit range (``round(v * 255 / 65535)``), then replicated. 16-bit *colour* PNGs are
  already reduced to 8 bits per channel by Pillow when it opens them (mode ``RGB``/``RGBA``).
* With transparency (``RGBA``, ``LA``, ``PA``, or ``P``/``L``/``RGB`` with a ``transparency``
  entry): alpha-composited over the ImageNet mean colour, the fill the SSD zoom-out uses for
  "nothing" (:data:`benchmark.data.transforms.MEAN_FILL_255`). Dropping the alpha channel
  instead would show whatever colour the encoder left under transparent pixels.
* Rejected: ``I`` (32-bit integers) and ``F`` (32-bit floats) have no fixed range to map onto
  8 bits, and ``LAB``, ``HSV``, ``I;16S``, ... have no conversion we can vouch for. The error
  names the file, the mode and the supported modes.
"""

from __future__ import annotations

import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from benchmark.data.errors import DatasetError
from benchmark.data.transforms import MEAN_FILL_255

_CONVERTED = ("RGB", "L", "1", "P", "CMYK", "YCbCr")
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_ALPHA = ("RGBA", "LA", "PA")
SUPPORTED_MODES = (*_CONVERTED, *_SIXTEEN_BIT, *_ALPHA)
_WHY_NOT = {
    "I": "32-bit integer pixels have no fixed range to scale to 8 bits",
    "F": "32-bit float pixels have no fixed range to scale to 8 bits",
}


def mode_problem(mode: str) -> str | None:
    """Why images of ``mode`` cannot be used, or None when :func:`to_rgb` converts them."""
    if mode in SUPPORTED_MODES:
        return None
    why = _WHY_NOT.get(mode, "no conversion to 8-bit RGB is defined for it")
    return (
        f"unsupported image mode {mode} ({why}); save it as 8-bit or 16-bit grey, RGB, RGBA "
        f"or palette (supported modes: {', '.join(SUPPORTED_MODES)})"
    )


def to_rgb(image: Image.Image, path: str) -> Image.Image:
    """``image`` as 8-bit ``RGB`` by the rules of the module docstring.

    Args:
        image: A decoded Pillow image of any mode.
        path: The file it came from (named in the error).

    Returns:
        A new ``RGB`` image of the same size (``image`` itself if it already is RGB without
        transparency).

    Raises:
        DatasetError: The mode is not supported.
    """
    if (problem := mode_problem(image.mode)) is not None:
        raise DatasetError(f"{path}: {problem}")
    if image.mode in _SIXTEEN_BIT:
        grey16 = np.asarray(image).astype(np.uint32)  # native, little or big endian -> uint32
        grey8 = ((grey16 * 255 + 32767) // 65535).astype(np.uint8)
        return Image.fromarray(grey8, "L").convert("RGB")
    if image.mode in _ALPHA or "transparency" in image.info:
        rgba = image.convert("RGBA")  # a palette's or a colour key's transparency -> alpha
        background = Image.new("RGBA", image.size, (*MEAN_FILL_255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def decode(path: str) -> Image.Image:
    """Open ``path`` and decode every pixel (Pillow opens lazily; ``load`` forces the decode).

    Returns:
        The decoded image in its file's mode.

    Raises:
        DatasetError: Missing, unreadable, truncated or not an image, or a decompression bomb.
    """
    try:
        with warnings.catch_warnings():
            # Pillow warns (rather than raises) below twice its pixel limit; a detection
            # dataset with such images is broken, so both limits raise.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()
                return im
    except FileNotFoundError as e:
        raise DatasetError(f"{path}: image file is missing") from e
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        raise DatasetError(f"{path}: unreadable image: {e}") from e
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DatasetError(f"{path}: image too large to decode safely: {e}") from e


def load_rgb(path: str, width: int, height: int) -> Image.Image:
    """Decode ``path``, check its size against the annotation and convert it to RGB.

    Args:
        path: Image file.
        width: Annotated width in pixels (boxes are in this frame).
        height: Annotated height.

    Raises:
        DatasetError: Unreadable, another size than annotated, or an unsupported mode.
    """
    image = decode(path)
    if image.size != (width, height):
        # Boxes are in the annotated frame: a different size would silently misplace them.
        raise DatasetError(size_problem(path, image.size, (width, height)))
    return to_rgb(image, path)


def size_problem(path: str, actual: tuple[int, int], annotated: tuple[int, int]) -> str:
    """The message for an image whose size differs from its annotation."""
    return (
        f"{path}: image is {actual[0]}x{actual[1]} but annotated as {annotated[0]}x{annotated[1]}"
    )
