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

from mnist_lab import confidence, data, tracking
from mnist_lab.config import IMAGE_SIZE
from mnist_lab.errors import MnistLabError, missing

DIGIT_BOX = 20  # px: MNIST scaled each digit's longest side to 20 and padded to 28
INK_THRESHOLD = 0.25  # fraction of the ink's full intensity that counts as ink when cropping
SPECK = 0.03  # a connected bit of ink under this fraction of the largest stroke's area is dust
# Stroke width of MNIST's digits in 20-pixel-box pixels (10th-90th percentile, measured with
# stroke_width on the training images): people's pens are brought into this range.
MNIST_STROKE = (1.9, 3.5)


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
    probability: float  # calibrated (temperature-scaled) where the MNIST files were at hand
    top: list[tuple[int, float]]
    digit_shape: bool | None = None  # False: the picture has a shape no MNIST digit has; None: not checked
    low_confidence: bool = False

    @property
    def warnings(self) -> list[str]:
        return (["not a digit?"] if self.digit_shape is False else []) + (["low confidence"] if self.low_confidence else [])


@dataclass
class Model:
    keras: object
    name: str  # what answered, as people name it: "mnist-cnn@champion (version 3: trial 7 of study sweep)"
    data: object | None = None  # the DataConfig it was trained with, where its run is known


def to_mnist(path: str | Path) -> np.ndarray:
    """An image file of any size and colour mode -> float32 (28, 28) in [0, 1], white ink on black."""
    path = Path(path)
    if path.is_dir():
        raise ImageError(f"{path}: is a directory; give image files (e.g. {path}/*.png)")
    if not path.is_file():
        raise ImageError(f"{path}: {missing(path)}")
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
                if img.mode.startswith(("I", "F")):
                    # 16-bit (or 32-bit) grey: convert("L") would clip every value over 255 to white.
                    wide = np.asarray(img, dtype=np.float64)
                    top = 1.0 if img.mode == "F" and wide.max() <= 1.0 else 65535.0 if wide.max() > 255 else 255.0
                    gray = (np.clip(wide, 0, top) * (255.0 / top)).astype(np.float32)
                else:
                    gray = np.asarray(img.convert("L"), dtype=np.float32)
    except Image.DecompressionBombError as e:  # Pillow's own limit, above ours: refused at open
        pixels = re.search(r"\((\d+) pixels\)", str(e))
        raise ImageError(_too_large(path, pixels=int(pixels[1]) if pixels else 0)) from None
    except MemoryError:
        raise ImageError(f"{path}: not enough memory to decode this image; scale it down or crop it") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{path}: cannot be read as an image ({type(e).__name__}); use PNG, JPEG, BMP, GIF or TIFF") from None

    field = mnist_style(gray)
    if field is None:
        raise ImageError(f"{path}: no digit found (the image is one flat colour)")
    return field


def mnist_style(gray: np.ndarray, lighting: bool = True, strokes: bool = True) -> np.ndarray | None:
    """A grayscale picture of one digit (any size, either polarity) -> (28, 28) white ink on black
    in [0, 1], made like MNIST's digits; None if there is no ink at all.

    People's pictures differ from MNIST's scans in ways the network never saw, so each is undone
    first: paper lit unevenly (its brightness is estimated over a large window and subtracted),
    dust and specks (connected bits of ink far smaller than the digit's largest stroke are
    dropped before cropping), and pens much thinner or thicker than MNIST's (strokes are grown
    or thinned to MNIST's width once the digit has its 20-pixel size). `lighting` and `strokes`
    switch those two steps off (benchmarks/other_writers.py measures what each is worth)."""
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    if np.median(border) > 127:  # light paper, dark ink: MNIST is the other way round
        gray = 255 - gray
    ink = np.clip(gray - (paper_level(gray) if lighting else np.median(gray)), 0, None)
    if ink.max() <= 0:
        return None
    ink /= ink.max()

    mask = keep_digit(ink > otsu(ink))
    if not mask.any():
        return None
    rows, cols = np.nonzero(mask)
    # Ink outside the kept strokes (specks) goes; the strokes' soft edges stay.
    ink = ink * ndimage.binary_dilation(mask, iterations=2)
    ink = ink[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    box = normalise_strokes(ink, strokes)

    # Centre of mass to the middle of the 28x28 field, as MNIST did; clamp so no ink is cut off.
    cy, cx = ndimage.center_of_mass(box)
    top = int(np.clip(round(IMAGE_SIZE / 2 - cy), 0, IMAGE_SIZE - box.shape[0]))
    left = int(np.clip(round(IMAGE_SIZE / 2 - cx), 0, IMAGE_SIZE - box.shape[1]))
    field = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    field[top : top + box.shape[0], left : left + box.shape[1]] = box
    return np.clip(field, 0, 1)


def paper_level(gray: np.ndarray) -> np.ndarray:
    """The paper's brightness at every pixel (ink bright, paper dark here): a grey opening over a
    window a third of the picture wide removes the strokes and keeps the lighting."""
    h, w = gray.shape
    factor = max(1, max(h, w) // 256)  # estimated on a small copy: lighting changes slowly
    small = gray[::factor, ::factor]
    window = max(3, min(small.shape) // 3)
    level = ndimage.grey_opening(ndimage.median_filter(small, size=3), size=(window, window))
    level = ndimage.uniform_filter(level, size=max(3, window // 2))  # the opening's steps, smoothed
    if factor > 1:
        level = np.asarray(Image.fromarray(level.astype(np.float32)).resize((w, h), Image.BILINEAR), dtype=np.float32)
    return level[:h, :w]


def otsu(values: np.ndarray) -> float:
    """Otsu's threshold of values in [0, 1]: the split that best separates ink from the rest."""
    counts, edges = np.histogram(values, bins=64, range=(0, 1))
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(counts)
    w1 = w0[-1] - w0
    m0 = np.cumsum(counts * centres) / np.maximum(w0, 1)
    m1 = ((counts * centres).sum() - np.cumsum(counts * centres)) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    return float(max(centres[int(np.argmax(between))], INK_THRESHOLD / 2))


def keep_digit(mask: np.ndarray) -> np.ndarray:
    """The digit's strokes without dust: connected pieces smaller than SPECK of the largest go."""
    labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
    if n <= 1:
        return mask
    areas = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
    keep = np.flatnonzero(areas >= SPECK * areas.max()) + 1
    return np.isin(labels, keep)


def stroke_width(mask: np.ndarray) -> float:
    """Mean stroke width in pixels: a stroke of width w and length L has area wL and about 2L edge pixels."""
    edge = mask & ~ndimage.binary_erosion(mask)
    return 2 * mask.sum() / max(1, edge.sum())


def fine_view(ink: np.ndarray) -> tuple[np.ndarray, float]:
    """Cropped ink at 4x its 20-pixel box (where a stroke is several pixels wide and can be changed
    finely), and its stroke width in box pixels."""
    h, w = ink.shape
    fine = 4 * DIGIT_BOX / max(h, w)
    size = (max(1, round(w * fine)), max(1, round(h * fine)))
    work = np.asarray(Image.fromarray((ink * 255).astype(np.uint8)).resize(size, Image.LANCZOS), dtype=np.float32) / 255
    return work, stroke_width(work > 0.5) / 4


def normalise_strokes(ink: np.ndarray, strokes: bool = True) -> np.ndarray:
    """Cropped ink -> its 20-pixel box (longest side), strokes grown or thinned into MNIST's range."""
    h, w = ink.shape
    work, width = fine_view(ink)
    low, high = MNIST_STROKE
    if strokes and (width < low or width > high):
        radius = int(round(abs((low if width < low else high) - width) * 4 / 2))
        if radius:
            y, x = np.ogrid[-radius:radius + 1, -radius:radius + 1]
            footprint = x * x + y * y <= radius * radius
            work = (ndimage.grey_dilation if width < low else ndimage.grey_erosion)(work, footprint=footprint)
    size = (max(1, round(w * DIGIT_BOX / max(h, w))), max(1, round(h * DIGIT_BOX / max(h, w))))
    work = np.clip(work, 0, 1)
    return np.asarray(Image.fromarray((work * 255).astype(np.uint8)).resize(size, Image.LANCZOS), dtype=np.float32) / 255


def default_model_uri(experiment_id: str) -> str:
    """The registered champion, else the newest model logged by a finished training run."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

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


def load_model(uri: str | None) -> Model:
    import keras
    import mlflow.keras
    from mlflow.exceptions import MlflowException

    if uri and uri.endswith(".keras"):
        if not Path(uri).is_file():
            raise MnistLabError(f"--model {uri}: no such file")
        try:
            return Model(keras.saving.load_model(uri), f"the file {uri}")
        except Exception as e:  # Keras raises ValueError, OSError, zipfile errors...
            raise MnistLabError(f"--model {uri}: not a loadable Keras model ({type(e).__name__})") from None
    experiment_id = tracking.setup()
    uri = uri or default_model_uri(experiment_id)
    try:
        loaded = mlflow.keras.load_model(uri)
    except (MlflowException, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise MnistLabError(f"--model {uri}: cannot be loaded ({first}); use runs:/RUN_ID/model, models:/NAME@ALIAS or a .keras file") from None
    name, run_id = describe(uri)
    return Model(loaded, name, run_data_config(run_id))


def describe(uri: str) -> tuple[str, str | None]:
    """A model URI as people name it, and the run it came from (None where that cannot be told)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    try:
        if uri.startswith("runs:/"):
            run_id = uri.removeprefix("runs:/").split("/")[0]
        elif uri.startswith("models:/") and "@" in uri:
            name, alias = uri.removeprefix("models:/").split("@", 1)
            version = client.get_model_version_by_alias(name, alias)
            run_id = version.run_id
            where = f"trial {version.tags['trial']} of study {version.tags['study']}" if "study" in version.tags else f"run {run_id}"
            return f"{name}@{alias} (version {version.version}: {where})", run_id
        elif uri.startswith("models:/m-"):
            run_id = client.get_logged_model(uri.removeprefix("models:/").split("/")[0]).source_run_id
        else:
            return uri, None
        return f"{uri} (run {client.get_run(run_id).info.run_name})", run_id
    except (MlflowException, KeyError, ValueError):
        return uri, None


def run_data_config(run_id: str | None):
    """The data settings the run trained with (its config.yaml), so calibration uses its validation images."""
    if not run_id:
        return None
    try:
        return tracking.run_config(run_id).data
    except Exception:  # no config.yaml (a model logged by hand): the default split calibrates it
        return None


def predict(model: Model, images: dict[str, np.ndarray], top: int = 1, check: bool = True) -> list[Prediction]:
    """images: file name -> (28, 28) array from to_mnist. With `check` (and the MNIST files at hand),
    probabilities are calibrated and each answer says whether the picture has a digit's shape."""
    if not images:
        return []
    stacked = np.stack(list(images.values()))
    probs = np.asarray(model.keras.predict(stacked[..., None], verbose=0), dtype=np.float64)
    shape_ok: list[bool | None] = [None] * len(images)
    folder = data.data_dir(None)
    if check and folder is not None:
        shape = confidence.digit_shape(folder)
        shape_ok = list(shape.error(stacked) <= shape.threshold)
        probs = confidence.calibrate(probs, confidence.temperature_for(model.keras, model.data, folder))
    out = []
    for name, p, ok in zip(images, probs, shape_ok):
        order = np.argsort(-p)[:top]
        out.append(Prediction(name, int(order[0]), float(p[order[0]]), [(int(d), float(p[d])) for d in order],
                              digit_shape=None if ok is None else bool(ok), low_confidence=bool(p[order[0]] < confidence.LOW_CONFIDENCE)))
    return out
