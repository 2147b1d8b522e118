"""Images for samples: a header-only probe for validation, a full decode to RGB for use.

An image source is a file path or the encoded bytes of an image file (PNG, JPEG, ...), as
embedded in benchmark files; :func:`open_image`, the one opener every part of the project uses,
also takes a PIL image. For a path or bytes, both :func:`probe_image` and :func:`open_image`
read the header first and refuse an image over ``max_pixels`` before decoding a single pixel. PIL's own
decompression-bomb guard (a warning above ``PIL.Image.MAX_IMAGE_PIXELS``, an error above twice
that) stays on as a second line and is always turned into an error here, whatever the global
warning filters say.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from r1v2.errors import R1V2Error

ImageSource = Path | bytes
"""A file path, or the encoded bytes of an image file."""

# Our choice (the paper sets no limit): 4096 x 4096, far above the 448 px tiles the models see,
# and well below PIL's own guard (~89M pixels).
DEFAULT_MAX_PIXELS = 4096 * 4096

# Problem categories; the loader and `r1v2 data check` count problems by these names.
NOT_FOUND = "file not found"
UNREADABLE = "unreadable image"
TOO_LARGE = "image too large"
BOMB = "decompression bomb"


@dataclass(frozen=True)
class ImageInfo:
    """What an image header says: size in pixels and PIL's format name ("PNG", "JPEG", ...)."""

    width: int
    height: int
    format: str


class ImageError(R1V2Error):
    """An image that cannot be used. ``category`` is one of the names above; ``detail`` says more."""

    def __init__(self, category: str, name: str, detail: str = ""):
        self.category, self.name, self.detail = category, name, detail
        super().__init__(self.describe(name))

    def describe(self, name: str) -> str:
        """The message with ``name`` standing for the image, e.g. ``file not found: img/3.png``."""
        return f"{self.category}: {name}" + (f" ({self.detail})" if self.detail else "")


def describe_source(source: ImageSource) -> str:
    """A short name for an image source: its path, or ``<embedded image, N bytes>``."""
    if isinstance(source, bytes):
        return f"<embedded image, {len(source)} bytes>"
    return str(source)


@contextmanager
def _open_header(source: ImageSource, max_pixels: int) -> Iterator[Image.Image]:
    """Open ``source`` lazily (header only), check its size, and close it on exit."""
    name = describe_source(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    except FileNotFoundError:
        raise ImageError(NOT_FOUND, name) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(BOMB, name, f"PIL: {e}") from None
    except Image.UnidentifiedImageError:
        raise ImageError(UNREADABLE, name, "not an image format PIL can identify") from None
    except OSError as e:
        raise ImageError(UNREADABLE, name, e.strerror or str(e)) from None
    except (SyntaxError, ValueError, EOFError) as e:
        raise ImageError(UNREADABLE, name, f"bad header: {e}") from None
    with im:
        width, height = im.size
        if width * height > max_pixels:
            detail = f"{width}x{height} = {width * height} pixels, over max_pixels={max_pixels}"
            raise ImageError(TOO_LARGE, name, detail)
        yield im


def probe_image(source: ImageSource, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """Read only the header of ``source``: its size and format. Raises :class:`ImageError`."""
    with _open_header(source, max_pixels) as im:
        return ImageInfo(width=im.size[0], height=im.size[1], format=im.format or "unknown")


def open_image(
    source: ImageSource | str | os.PathLike | bytearray | Image.Image,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Image.Image:
    """An RGB image in memory from a PIL image, a file path or an image file's encoded bytes.

    The one image opener of the project (samples, prompts, reward-model inputs). A file or
    bytes is decoded after its header passed :func:`probe_image`'s checks; a PIL image is
    converted as it is. Transparent images are composited onto white (our choice; dropping
    alpha instead would show whatever colour hides under transparent pixels, often black).
    Raises :class:`ImageError` for a source that cannot be used, and R1V2Error naming the type
    of anything that is not an image source.
    """
    if isinstance(source, Image.Image):
        return _to_rgb(source)
    if isinstance(source, bytearray):
        source = bytes(source)
    elif isinstance(source, (str, os.PathLike)) and not isinstance(source, Path):
        source = Path(source)
    if not isinstance(source, (Path, bytes)):
        raise R1V2Error(
            f"cannot use {type(source).__name__} as an image "
            "(expected a PIL image, a file path or encoded image bytes)"
        )
    with _open_header(source, max_pixels) as im:
        try:
            im.load()
            return _to_rgb(im)
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            raise ImageError(UNREADABLE, describe_source(source), f"cannot decode: {e}") from None


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        out = Image.new("RGB", im.size, (255, 255, 255))
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    return im.convert("RGB")
