"""Read digits from people's own image files.

    mnist-lab predict my_seven.png scan.jpg --top 3
    mnist-lab predict digit.png --model models:/mnist-cnn@champion --json

Each image is turned into an MNIST-style digit the way the MNIST images were made: grayscale,
white ink on black, cropped to the ink, the longest side scaled to 20 px, placed in a 28x28
field with its centre of mass in the middle.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from scipy import ndimage

from mnist_lab import tracking
from mnist_lab.config import IMAGE_SIZE, MnistLabError

DIGIT_BOX = 20  # px: MNIST scaled each digit's longest side to 20 and padded to 28
INK_THRESHOLD = 0.25  # fraction of the ink's full intensity that counts as ink when cropping


# A digit needs a few hundred pixels; past this many a file is a mistake (or a decompression bomb),
# refused from its header before anything is decoded. 14,000 x 10,000 still passes.
MAX_PIXELS = 150_000_000
WORK_SIDE = 1024  # px: larger images are shrunk to about this before any arithmetic


class ImageError(MnistLabError):
    pass


def _too_large(path: Path, width: int = 0, height: int = 0, pixels: int = 0) -> str:
    size = f"{width:,} x {height:,} pixels" if width else f"{pixels:,} pixels" if pixels else "the image"
    return f"{path}: {size} is beyond the {MAX_PIXELS:,}-pixel limit for a digit image; scale it down or crop it"


@dataclass
class Prediction:
    file: str
    digit: int
    probability: float
    top: list[tuple[int, float]]


def to_mnist(path: str | Path) -> np.ndarray:
    """An image file of any size and colour mode -> float32 (28, 28) in [0, 1], white ink on black."""
    path = Path(path)
    if path.is_dir():
        raise ImageError(f"{path}: is a directory; give image files (e.g. {path}/*.png)")
    if not path.is_file():
        raise ImageError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise ImageError(f"{path}: the file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we set our own limit below
            with Image.open(path) as img:
                width, height = img.size  # from the header: nothing decoded yet
                if width * height > MAX_PIXELS:
                    raise ImageError(_too_large(path, width, height))
                # JPEG decodes straight at 1/2..1/8 scale; other formats decode once, then shrink
                # before any arithmetic, so memory stays near one copy of the file's pixels.
                img.draft("L", (WORK_SIDE, WORK_SIDE))
                factor = max(img.size) // WORK_SIDE
                img = img.reduce(factor) if factor > 1 else img
                img = ImageOps.exif_transpose(img)
                if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                    # Transparent pixels are paper: flatten onto white before going gray.
                    rgba = img.convert("RGBA")
                    paper = Image.new("RGBA", rgba.size, "white")
                    img = Image.alpha_composite(paper, rgba)
                gray = np.asarray(img.convert("L"), dtype=np.float32)
    except Image.DecompressionBombError as e:  # Pillow's own limit, above ours: refused at open
        pixels = re.search(r"\((\d+) pixels\)", str(e))
        raise ImageError(_too_large(path, pixels=int(pixels[1]) if pixels else 0)) from None
    except MemoryError:
        raise ImageError(f"{path}: not enough memory to decode this image; scale it down or crop it") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{path}: cannot be read as an image ({type(e).__name__}); use PNG, JPEG, BMP, GIF or TIFF") from None

    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    if np.median(border) > 127:  # light paper, dark ink: MNIST is the other way round
        gray = 255 - gray
        border = 255 - border
    background = np.median(border)
    ink = np.clip(gray - background, 0, None)
    if ink.max() <= 0:
        raise ImageError(f"{path}: no digit found (the image is one flat colour)")
    ink /= ink.max()

    rows, cols = np.nonzero(ink > INK_THRESHOLD)
    ink = ink[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    h, w = ink.shape
    scale = DIGIT_BOX / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    box = np.asarray(Image.fromarray((ink * 255).astype(np.uint8)).resize(size, Image.LANCZOS), dtype=np.float32) / 255

    # Centre of mass to the middle of the 28x28 field, as MNIST did; clamp so no ink is cut off.
    cy, cx = ndimage.center_of_mass(box)
    top = int(np.clip(round(IMAGE_SIZE / 2 - cy), 0, IMAGE_SIZE - box.shape[0]))
    left = int(np.clip(round(IMAGE_SIZE / 2 - cx), 0, IMAGE_SIZE - box.shape[1]))
    field = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    field[top : top + box.shape[0], left : left + box.shape[1]] = box
    return np.clip(field, 0, 1)


def default_model_uri() -> str:
    """The registered champion, else the newest model logged by a finished training run."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    experiment_id = tracking.setup()
    client = MlflowClient()
    try:
        client.get_model_version_by_alias(tracking.MODEL_NAME, tracking.CHAMPION_ALIAS)
        return f"models:/{tracking.MODEL_NAME}@{tracking.CHAMPION_ALIAS}"
    except MlflowException:
        pass
    for logged in client.search_logged_models(
        experiment_ids=[experiment_id], order_by=[{"field_name": "creation_timestamp", "ascending": False}], max_results=20
    ):
        if logged.source_run_id and client.get_run(logged.source_run_id).info.status == "FINISHED":
            return f"models:/{logged.model_id}"
    raise MnistLabError(
        "no model to predict with: no 'mnist-cnn@champion' and no finished training run in the store; "
        "run `make train` (or pass --model PATH.keras)"
    )


def load_model(uri: str | None):
    import keras
    import mlflow.keras
    from mlflow.exceptions import MlflowException

    if uri and uri.endswith(".keras"):
        if not Path(uri).is_file():
            raise MnistLabError(f"--model {uri}: no such file")
        try:
            return keras.saving.load_model(uri)
        except Exception as e:  # Keras raises ValueError, OSError, zipfile errors...
            raise MnistLabError(f"--model {uri}: not a loadable Keras model ({type(e).__name__})") from None
    tracking.setup()
    uri = uri or default_model_uri()
    try:
        return mlflow.keras.load_model(uri)
    except (MlflowException, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise MnistLabError(f"--model {uri}: cannot be loaded ({first}); use runs:/RUN_ID/model, models:/NAME@ALIAS or a .keras file") from None


def predict(model, images: dict[str, np.ndarray], top: int = 1) -> list[Prediction]:
    """images: file name -> (28, 28) array from to_mnist."""
    if not images:
        return []
    probs = model.predict(np.stack(list(images.values()))[..., None], verbose=0)
    out = []
    for name, p in zip(images, probs):
        order = np.argsort(-p)[:top]
        out.append(Prediction(name, int(order[0]), float(p[order[0]]), [(int(d), float(p[d])) for d in order]))
    return out
