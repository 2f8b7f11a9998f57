"""An image classifier with a file input: which digit, 0-9, is drawn in a PNG or JPEG?

It learns in ``setup()`` (a fraction of a second) from the handwritten digits bundled with
scikit-learn (8x8 images, nothing downloaded), and reads each image it is sent into that
shape: grey, light ink on a dark ground, cropped to the ink, padded to a square, 8x8.

    MODEL=examples/digits_model.py:DigitsClassifier scripts/run
    python examples/digits_model.py --write-sample digit.png     # a digit to send it
    curl -F input=@digit.png localhost:8080/predict

The answer: ``{"digit": 3, "probabilities": {"0": 0.001, ..., "9": 0.002}}``. A file
that is not an image fails the prediction with a message that says so. Needs Pillow (the
``files`` extra: ``pip install -e '.[files]'``) and scikit-learn (the ``sklearn`` extra).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

try:
    from PIL import Image, ImageOps, UnidentifiedImageError
except ImportError as exc:  # the model is useless without it: say which extra brings it
    raise ImportError(
        "this model reads images with Pillow: pip install -e '.[files]' (or pip install pillow)"
    ) from exc

#: The bundled set has 1,797 digits; the model learns from the first 1,500 so that the
#: rest (`held_out`) can measure it on digits it has never seen.
TRAIN_COUNT = 1500
#: Side of the dataset's images, and the top of their pixel scale (ink counts 0-16).
SIDE, LEVELS = 8, 16
#: Share of the brightest ink a pixel needs to count as ink when cropping: lower, and JPEG
#: noise or a smudge in the margin would widen the crop and shrink the digit.
INK = 0.3


def load_dataset() -> tuple[np.ndarray, np.ndarray]:
    """The bundled digits, as 8x8 arrays of 0-16 and their labels, in the set's order."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images, digits.target


def held_out() -> tuple[np.ndarray, np.ndarray]:
    """The digits the model does not learn from: samples and tests use these."""
    images, labels = load_dataset()
    return images[TRAIN_COUNT:], labels[TRAIN_COUNT:]


def read_image(path: Path) -> Image.Image:
    """The decoded image at ``path``; ValueError when the bytes are no image Pillow reads,
    so a wrong upload is the client's error in the result, not a crash of the model."""
    try:
        with Image.open(path) as opened:
            opened.load()  # decode now: a truncated file fails here, not later
            image = ImageOps.exif_transpose(opened)  # phone photos are stored sideways
    except UnidentifiedImageError:
        raise ValueError(f"the file is not an image Pillow can read: {path.name}") from None
    except (OSError, SyntaxError) as exc:  # a known format with broken data
        raise ValueError(f"the file is not an image Pillow can read: {exc}") from None
    return image


def to_features(image: Image.Image) -> np.ndarray:
    """The image as the dataset draws a digit: 64 ink counts 0-16, light on dark, the ink
    filling the height of an 8x8 square (the set's digits all touch its top and bottom)."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent pixels are ground: flatten onto white before dropping the colour.
        flat = Image.new("RGBA", image.size, "white")
        flat.alpha_composite(image.convert("RGBA"))
        image = flat
    grey = np.asarray(image.convert("L"), dtype=np.float64)
    ground = float(np.median(np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])))
    if ground > 127:  # dark ink on light paper: turn it round
        grey, ground = 255.0 - grey, 255.0 - ground
    grey = np.clip(grey - ground, 0.0, None)  # a grey ground is no ink either
    top = grey.max()
    if top <= 0:  # a blank page: nothing to crop or scale
        return np.zeros(SIDE * SIDE)
    rows = np.flatnonzero((grey >= INK * top).any(axis=1))
    cols = np.flatnonzero((grey >= INK * top).any(axis=0))
    ink = grey[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    # Pad the shorter side so the digit keeps its shape when squeezed to 8x8.
    side = max(ink.shape)
    square = np.zeros((side, side))
    y0, x0 = (side - ink.shape[0]) // 2, (side - ink.shape[1]) // 2
    square[y0 : y0 + ink.shape[0], x0 : x0 + ink.shape[1]] = ink
    # Each cell the mean of its block of pixels, as the set's cells count a 4x4 block's ink.
    small = Image.fromarray(square.astype(np.float32)).resize((SIDE, SIDE), Image.Resampling.BOX)
    cells = np.asarray(small, dtype=np.float64)
    return (cells * (LEVELS / max(cells.max(), 1e-9))).reshape(-1)


class DigitsClassifier:
    """The input is one image file (PNG, JPEG or any format Pillow reads) of one digit: the
    whole input, so the upload is the part ``input`` (``curl -F input=@digit.png``), or
    ``{"input": "https://..."}`` in JSON."""

    input_type = Path
    version = "digits-svc-1"

    def setup(self) -> None:
        # Learned here, in the process that predicts: nothing to ship or download.
        from sklearn.calibration import CalibratedClassifierCV
        from sklearn.svm import SVC

        images, labels = load_dataset()
        # A calibrated SVC: the SVC's accuracy (0.95 on the held-out digits) with
        # probabilities that mean something, which a bare SVC does not give.
        self._classifier = CalibratedClassifierCV(SVC(gamma=0.001), ensemble=False)
        self._classifier.fit(images[:TRAIN_COUNT].reshape(TRAIN_COUNT, -1), labels[:TRAIN_COUNT])
        self._labels = [str(label) for label in self._classifier.classes_]

    def predict(self, value: Path) -> dict[str, Any]:
        return self.predict_batch([value])[0]

    def predict_batch(self, values: list[Path]) -> list[dict[str, Any]]:
        """Every image read alone (one bad file fails the call, and the service then runs
        the images one by one, so only that one fails), then one classifier call for all."""
        features = np.stack([to_features(read_image(value)) for value in values])
        return [
            {
                "digit": int(self._labels[int(row.argmax())]),
                "probabilities": {
                    label: round(float(p), 4) for label, p in zip(self._labels, row, strict=True)
                },
            }
            for row in self._classifier.predict_proba(features)
        ]


def write_sample(path: Path, index: int = 0, size: int = 64) -> int:
    """Writes held-out digit ``index`` as an image of ``size`` pixels a side, dark ink on
    white as if scanned (PNG, JPEG... by the suffix), and answers its label: a realistic
    input made on the spot, so the repository ships no binary files."""
    images, labels = held_out()
    ink = images[index] * (255 / LEVELS)
    page = Image.fromarray((255 - ink).astype(np.uint8))
    page.resize((size, size), Image.Resampling.BICUBIC).save(path)
    return int(labels[index])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Writes a sample image of a held-out digit.")
    parser.add_argument("--write-sample", type=Path, metavar="FILE", required=True)
    parser.add_argument("--index", type=int, default=0, help="which held-out digit (0-296)")
    args = parser.parse_args()
    label = write_sample(args.write_sample, args.index)
    print(f"wrote {args.write_sample}: a {label}")
