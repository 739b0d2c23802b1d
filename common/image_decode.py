"""One strict image decoder: a file's bytes to an upright RGB Pillow image, or an `ImageReadError`
that names the file and says why.

Every reader of the project decodes here (through `common.cache` or `common.views`), so mode
conversion and corruption handling are decided once:

- Files are decoded completely with Pillow's default ``LOAD_TRUNCATED_IMAGES = False``, and
  JPEGs must also end with the EOI marker (``FF D9``), because libjpeg silently pads a file
  that lost only its last bytes.
- Transparent images (``RGBA``, ``LA``, ``P`` with transparency) are composited on **white**:
  a cut-out face then looks like a studio shot, the dominant background in FACECOM's
  ``NNN_frontal`` identities, whereas black would merge with dark hair.
- 16-bit greyscale (``I;16*``, ``I``) is scaled to 8 bits as ``value * 255 / 65535``;
  ``L``, ``P``, ``CMYK``, ``YCbCr`` and other modes go through Pillow's own RGB conversion.
- The EXIF orientation tag is applied, so arrays look the way image viewers show the file.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["ImageReadError", "read_file", "decode_image", "to_rgb"]

_JPEG_EOI = b"\xff\xd9"
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class ImageReadError(OSError):
    """An image file cannot be decoded; ``path`` and ``reason`` say which and why."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(
            f"Cannot read image {self.path}: {reason}. Replace or delete the file "
            "(common.data.validate_dataset lists every unreadable file of a FACECOM root, and "
            "report.filter(df) drops them).")

    def __reduce__(self):  # rebuilt from both fields when it crosses from a worker process
        return type(self), (self.path, self.reason)


def read_file(path: str | os.PathLike) -> bytes:
    """The bytes of one file, or an `ImageReadError` saying why they cannot be read."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ImageReadError(path, f"cannot open file ({exc.strerror or exc})") from exc


def decode_image(path: str | os.PathLike, data: bytes,
                 draft_size: int | None = None) -> Image.Image:
    """Fully decode one image from its bytes, raising `ImageReadError` for anything unusable.

    Args:
        path: the file, named in errors.
        data: its bytes.
        draft_size: let libjpeg decode at 1/2, 1/4 or 1/8 scale while both sides stay
            >= this; makes 1024-3072 px JPEGs several times cheaper to decode.
    """
    if not data:
        raise ImageReadError(path, "zero-byte file")
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise ImageReadError(path, "not an image (format not recognised)") from exc
    except Image.DecompressionBombError as exc:
        raise ImageReadError(path, _bomb_reason(exc)) from exc
    except (OSError, ValueError, SyntaxError) as exc:
        reason = "truncated" if "truncated" in str(exc).lower() else f"corrupt header ({exc})"
        raise ImageReadError(path, reason) from exc
    if draft_size is not None and image.format == "JPEG":
        image.draft(None, (draft_size, draft_size))
    try:
        image.load()
    except Image.DecompressionBombError as exc:  # some formats learn their size only here
        raise ImageReadError(path, _bomb_reason(exc)) from exc
    except OSError as exc:
        reason = "truncated" if "truncated" in str(exc).lower() else f"corrupt data ({exc})"
        raise ImageReadError(path, reason) from exc
    except (ValueError, SyntaxError, EOFError) as exc:
        raise ImageReadError(path, f"corrupt data ({exc})") from exc
    # libjpeg pads a file missing only its end marker without complaint.
    if image.format == "JPEG" and _JPEG_EOI not in data[-1024:]:
        raise ImageReadError(path, "truncated (JPEG end marker missing)")
    return image


def _bomb_reason(error: Exception) -> str:
    """Pillow refuses images above twice ``Image.MAX_IMAGE_PIXELS`` (a decompression bomb
    could fill the memory); its error is not an `OSError`, so it is turned into a reason."""
    return (f"too many pixels for Pillow's decompression-bomb limit ({error}); downscale the "
            "image, or raise PIL.Image.MAX_IMAGE_PIXELS if you trust the file")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow image as RGB, upright: the choices stated in the module docstring (EXIF
    orientation, white behind transparency, 16-bit scaled by 255 / 65535). Every decoder of the
    project goes through it, so one file gives the same pixels everywhere."""
    image = ImageOps.exif_transpose(image)
    if image.mode == "RGB":
        return image
    if image.mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image, dtype=np.float64)
        scaled = np.clip(np.round(values * 255.0 / 65535.0), 0, 255).astype(np.uint8)
        return Image.fromarray(scaled, mode="L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
