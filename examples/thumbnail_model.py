"""A model with a file in and a file out: an image (PNG, JPEG, GIF, WebP...) becomes a PNG
thumbnail of it, no larger than ``size`` x ``size`` pixels, its shape kept.

    MODEL=examples/thumbnail_model.py:Thumbnail scripts/run
    curl -F image=@photo.jpg -F size=256 localhost:8080/predict

The result holds the URL of the PNG rather than its bytes; GET it to download. An image
already small enough is not enlarged, only converted. A file that is not an image fails the
prediction with a message that says so. Needs Pillow (``pip install -e '.[files]'``).
"""

from __future__ import annotations

import io
from pathlib import Path

from pydantic import BaseModel, Field

try:
    from PIL import Image, ImageOps, UnidentifiedImageError
except ImportError as exc:  # the model is useless without it: say which extra brings it
    raise ImportError(
        "this model reads images with Pillow: pip install -e '.[files]' (or pip install pillow)"
    ) from exc

#: The modes a PNG stores as they are; any other (CMYK from print JPEGs, say) is converted.
_PNG_MODES = frozenset({"1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"})


class ThumbnailRequest(BaseModel):
    """The input: the image file, and the longest side its thumbnail may have."""

    image: Path
    size: int = Field(128, ge=8, le=1024)


class Thumbnail:
    input_type = ThumbnailRequest
    output_content_type = "image/png"
    version = "1"

    def predict(self, value: ThumbnailRequest) -> bytes:
        try:
            with Image.open(value.image) as opened:
                # Before decoding: a JPEG can then be decoded at a fraction of its size,
                # far quicker for a camera photo than decoding all of it to throw most away.
                opened.draft(None, (value.size, value.size))
                opened.load()
                image = ImageOps.exif_transpose(opened)  # phone photos are stored sideways
        except UnidentifiedImageError:
            raise ValueError(
                f"the file is not an image Pillow can read: {value.image.name}"
            ) from None
        except (OSError, SyntaxError) as exc:  # a known format with broken data
            raise ValueError(f"the file is not an image Pillow can read: {exc}") from None
        if image.mode not in _PNG_MODES:
            image = image.convert("RGBA" if image.has_transparency_data else "RGB")
        # Shrinks in place to fit the box with the aspect kept; never enlarges.
        image.thumbnail((value.size, value.size), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        image.save(out, format="PNG", optimize=True)
        return out.getvalue()
