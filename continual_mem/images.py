"""One image, from a file or from bytes, as the (3, H, W) tensor the model takes, with limits.

Every way an image enters the project to be answered (`cmem predict`, the server) goes through
`decode_image`, so a bad image is refused with the same one-line reason everywhere, before it is
decoded in full: too many pixels (a decompression bomb), empty, not an image, truncated, animated,
or in a pixel format that a conversion to RGB would silently distort (CMYK, 16-bit, float).
Images are then resized one by one to the backbone's side (`to_side`), never to the largest
image of a batch.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import ContinualMemError

MAX_PIXELS = 40_000_000
"""Default pixel limit (about 6,300 x 6,300): a decoded RGB image of that size takes 480 MB in float32."""

SUPPORTED_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX")


class ImageError(ContinualMemError):
    """An image that cannot be answered; the message names it and says why."""


class ImageTooLargeError(ImageError):
    """An image over the pixel limit (refused from its header, before decoding)."""


class UnsupportedImageError(ImageError):
    """A real image in a form the model does not take as it is: animated, CMYK, 16-bit, float."""


def decode_image(source: bytes | Path, name: str | None = None, max_pixels: int = MAX_PIXELS) -> Tensor:
    """Decode one still image into (3, H, W) float32 in [0, 1]; grayscale and alpha become RGB.

    The header is checked (size, mode, frames) before the pixels are decoded.
    """
    from PIL import Image, UnidentifiedImageError

    label = name or (str(source) if isinstance(source, Path) else "image")
    if isinstance(source, bytes) and not source:
        raise ImageError(f"cannot read image {label}: it is empty")
    try:
        stream = io.BytesIO(source) if isinstance(source, bytes) else source
        with warnings.catch_warnings():
            # `max_pixels` decides (checked below, before decoding); PIL's own warning would
            # overrule a limit the user raised. Its hard error (twice its limit) still applies.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(stream) as img:
                _check_header(img, label, max_pixels)
                img.load()
                array = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"{label} is too large to decode ({exc})") from None
    except UnidentifiedImageError:
        raise ImageError(f"cannot read image {label}: not an image format PIL knows") from None
    except FileNotFoundError:
        raise ImageError(f"cannot read image {label}: it does not exist") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageError(f"cannot read image {label}: truncated or corrupt ({' '.join(str(exc).split())})") from None
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def _check_header(img: object, label: str, max_pixels: int) -> None:
    width, height = img.size  # type: ignore[attr-defined]
    if width < 1 or height < 1:
        raise ImageError(f"{label} has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"{label} is {width}x{height} = {width * height / 1e6:.1f} megapixels, over the limit of "
            f"{max_pixels / 1e6:.1f} (resize it first)"
        )
    frames = int(getattr(img, "n_frames", 1))
    if frames > 1:
        raise UnsupportedImageError(f"{label} is animated ({frames} frames); send one still frame")
    mode = img.mode  # type: ignore[attr-defined]
    if mode not in SUPPORTED_MODES:
        raise UnsupportedImageError(
            f"{label} has pixel mode {mode} ({_mode_words(mode)}); convert it to 8-bit RGB or grayscale"
        )


def _mode_words(mode: str) -> str:
    if mode == "CMYK":
        return "a print colour space"
    if mode.startswith("I") or mode.startswith("F"):
        return "16/32-bit or floating-point pixels"
    return "not 8-bit RGB or grayscale"


def to_side(image: Tensor, side: int) -> Tensor:
    """(3, H, W) -> (3, side, side), bilinear; shrinking is antialiased."""
    if image.shape[-2:] == (side, side):
        return image
    return F.interpolate(image.unsqueeze(0), size=(side, side), mode="bilinear", align_corners=False, antialias=True)[0]


def batch_at_side(images: Sequence[Tensor], side: int) -> Tensor:
    """Images of any sizes as one (N, 3, side, side) batch, each resized on its own."""
    return torch.stack([to_side(image, side) for image in images])
