"""Images sent to the page: size and pixel limits, and decoding that fails as one clear line.

The header is read first (Pillow opens lazily), so an image claiming billions of pixels is
refused before a byte of it is decoded."""

from __future__ import annotations

import io
import warnings

from cnnlab.errors import UserError

MAX_BYTES = 4 * 1024 * 1024  # a phone photo fits; the canvas sends a few kilobytes
MAX_PIXELS = 4096 * 4096
FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP")


class UploadError(UserError):
    """An upload the page refuses; `status` is the HTTP code to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def check_size(length: int) -> None:
    if length > MAX_BYTES:
        raise UploadError(
            f"the image is {length:,} bytes; send one of at most {MAX_BYTES:,} bytes "
            "(shrink or crop it first)",
            413,
        )
    if length == 0:
        raise UploadError("the request holds no image: send PNG or JPEG bytes as the body")


def decode_image(data: bytes):
    """A decoded, upright Pillow image from uploaded bytes, or UploadError naming the problem."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    check_size(len(data))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=list(FORMATS))
            _check_pixels(image.size)
            image.load()
            return ImageOps.exif_transpose(image)
    except UploadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UploadError(
            f"the image has too many pixels; send one of at most {MAX_PIXELS:,} pixels", 413
        ) from None
    except UnidentifiedImageError:
        raise UploadError(f"not a {', '.join(FORMATS[:-1])} or {FORMATS[-1]} image") from None
    except (OSError, ValueError, SyntaxError, EOFError):
        raise UploadError("the image is damaged or cut short; send the whole file") from None


def _check_pixels(size: tuple[int, int]) -> None:
    width, height = size
    if width < 1 or height < 1 or width * height > MAX_PIXELS:
        raise UploadError(
            f"the image is {width}x{height} pixels; send one of at most {MAX_PIXELS:,} pixels",
            413,
        )
