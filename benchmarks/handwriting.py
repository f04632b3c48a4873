"""`mnist-lab predict` on digits that do not look like MNIST's: other pens, slants, blur,
low-resolution scans, photos of uneven paper. Not a test: it measures.

    .venv/bin/python benchmarks/handwriting.py --model model.keras            # measure
    .venv/bin/python benchmarks/handwriting.py --model model.keras --keep DIR  # and keep the images

The labelled set is made here, nothing is downloaded: MNIST digits are redrawn 10 times larger as
dark ink on light paper, then each copy gets one condition (below) and is saved as a PNG or JPEG
file, which `predict` reads like any person's file. The writers are still MNIST's (there is no
other labelled handwriting on this machine); the pens, scanners and paper are not. `--source test`
(the default) draws the digits from MNIST's test set, for the figure the README reports;
`--source train` from the last N training images, for tuning the preprocessing without looking
at the test set (a model trained on them scores them optimistically: use it to compare, not to report).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

SCALE = 10  # the 28x28 digit becomes 280x280 before a condition is applied


def mnist(source: str, n: int, data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    from mnist_lab.data import load_mnist

    prefix = "t10k" if source == "test" else "train"
    arrays, _ = load_mnist(Path(data_dir).resolve())  # the lab's own checked reader
    images, labels = arrays[f"{prefix}-images-idx3-ubyte"], arrays[f"{prefix}-labels-idx1-ubyte"].astype(int)
    pick = slice(0, n) if source == "test" else slice(len(labels) - n, len(labels))
    return images[pick], labels[pick]


def large(digit: np.ndarray) -> np.ndarray:
    """Ink in [0, 1] on a 280x280 canvas, smooth (bicubic), as if written large."""
    img = Image.fromarray(digit).resize((28 * SCALE, 28 * SCALE), Image.BICUBIC)
    return np.clip(np.asarray(img, np.float32) / 255, 0, 1)


def disk(radius: int) -> np.ndarray:
    y, x = np.ogrid[-radius:radius + 1, -radius:radius + 1]
    return x * x + y * y <= radius * radius


def on_paper(ink: np.ndarray, paper: np.ndarray | float = 245.0, pen: float = 25.0) -> np.ndarray:
    """Dark ink on light paper: the way people's digits arrive."""
    return paper - (paper - pen) * ink


def thin_pen(ink, rng):
    mask = ndimage.binary_erosion(ink > 0.5, disk(7))  # strokes of ~25 px become ~10 px
    return on_paper(ndimage.gaussian_filter(mask.astype(np.float32), 1.0))


def thick_marker(ink, rng):
    mask = ndimage.binary_dilation(ink > 0.5, disk(9))
    return on_paper(ndimage.gaussian_filter(mask.astype(np.float32), 1.5))


def slant(ink, rng):
    shear = rng.uniform(0.3, 0.45) * rng.choice([-1, 1])
    size = ink.shape[0]
    matrix = np.array([[1.0, 0.0], [shear, 1.0]])  # (row, col): columns shift with the row
    offset = -matrix @ np.array([size / 2, size / 2]) + np.array([size / 2, size / 2])
    return on_paper(ndimage.affine_transform(ink, matrix, offset=offset, order=1))


def blur(ink, rng):
    return on_paper(ndimage.gaussian_filter(ink, rng.uniform(6, 9)))


def low_res_scan(ink, rng):
    small = Image.fromarray(on_paper(ink).astype(np.uint8)).resize((14, 14), Image.BOX)
    return np.asarray(small.resize((28 * SCALE, 28 * SCALE), Image.BILINEAR), np.float32)


def photo_uneven_paper(ink, rng):
    """A phone photo: the digit small and off-centre on a larger sheet lit from one side, grey ink, noise."""
    h, w = 420, 560
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    light = (np.cos(angle) * x / w + np.sin(angle) * y / h)
    paper = 235 - 120 * (light - light.min()) / (np.ptp(light) or 1)  # 235 where lit, 115 in the shade
    sheet = np.zeros((h, w), np.float32)
    top, left = rng.integers(20, h - 300), rng.integers(20, w - 300)
    sheet[top:top + ink.shape[0], left:left + ink.shape[1]] = ink
    image = on_paper(sheet, paper, pen=rng.uniform(40, 70)) + rng.normal(0, 6, (h, w))
    return np.clip(image, 0, 255)


def specks(ink, rng):
    image = on_paper(ink)
    for _ in range(25):
        cy, cx, r = rng.integers(0, image.shape[0]), rng.integers(0, image.shape[1]), rng.integers(2, 5)
        y, x = np.ogrid[:image.shape[0], :image.shape[1]]
        image[(y - cy) ** 2 + (x - cx) ** 2 <= r * r] = 40
    return image


CONDITIONS = {"MNIST file as it is (28x28)": None, "clean": lambda ink, rng: on_paper(ink), "thin pen": thin_pen, "thick marker": thick_marker,
              "slant": slant, "blur": blur, "low-res scan": low_res_scan, "photo, uneven paper": photo_uneven_paper,
              "dust specks": specks}


CONTROLS = ("MNIST file as it is (28x28)", "clean")  # not conditions: what the others are compared with


def make_set(folder: Path, source: str, n: int, data_dir: Path, seed: int = 0) -> list[tuple[Path, int, str]]:
    """Write n digits x every condition into folder; returns (file, label, condition)."""
    rng = np.random.default_rng(seed)
    images, labels = mnist(source, n, data_dir)
    out = []
    for i, (digit, label) in enumerate(zip(images, labels)):
        ink = large(digit)
        for c, (name, condition) in enumerate(CONDITIONS.items()):
            drawn = digit if condition is None else condition(ink, rng)  # None: the data set's own image
            pixels = Image.fromarray(np.clip(drawn, 0, 255).astype(np.uint8))
            if name == "photo, uneven paper":
                path = folder / f"{i:05d}-{c}.jpg"
                pixels.save(path, quality=int(rng.integers(45, 75)))  # a phone's JPEG
            else:
                path = folder / f"{i:05d}-{c}.png"
                pixels.save(path)
            out.append((path, int(label), name))
    return out


def measure(model, items: list[tuple[Path, int, str]]) -> dict[str, float]:
    from mnist_lab.predict import to_mnist

    x = np.stack([to_mnist(path) for path, _, _ in items])[..., None]
    predicted = model.predict(x, batch_size=512, verbose=0).argmax(axis=1)
    right = predicted == np.array([label for _, label, _ in items])
    names = [name for _, _, name in items]
    result = {name: float(np.mean([r for r, n in zip(right, names) if n == name])) for name in CONDITIONS}
    result["the 7 conditions together"] = float(np.mean([r for r, n in zip(right, names) if n not in CONTROLS]))
    return result


def mnist_stroke_widths(data_dir: Path, n: int = 10_000) -> dict[str, float]:
    """The 10th, 50th and 90th percentile of MNIST's stroke width (predict.MNIST_STROKE comes from here)."""
    from mnist_lab.predict import fine_view

    images, _ = mnist("train", n, data_dir)
    widths = []
    for image in images.astype(np.float32) / 255:
        rows, cols = np.nonzero(image > 0.5)
        widths.append(fine_view(image[rows.min():rows.max() + 1, cols.min():cols.max() + 1])[1])
    return {f"p{q}": float(np.percentile(widths, q)) for q in (10, 50, 90)}


def show(title: str, result: dict[str, float], as_json: bool) -> None:
    """Print a measurement as benchmarks/README.md quotes it (and as one JSON line with --json)."""
    print(title)
    width = max(map(len, result)) + 2
    for name, accuracy in result.items():
        print(f"  {name:<{width}}{accuracy:.4f}")
    if as_json:
        print(json.dumps(result))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="a .keras file, runs:/ID/model or models:/mnist-cnn@champion (required to measure)")
    ap.add_argument("--stroke-widths", action="store_true", help="only print MNIST's stroke-width percentiles")
    ap.add_argument("--source", choices=["test", "train"], default="test")
    ap.add_argument("--n", type=int, default=500, help="digits per condition (default 500)")
    ap.add_argument("--keep", metavar="DIR", help="keep the images in DIR")
    ap.add_argument("--json", action="store_true", help="print the figures as one JSON line too")
    args = ap.parse_args()
    data_dir = Path(os.environ.get("MNIST_LAB_DATA", Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"))
    if args.stroke_widths:
        print(json.dumps(mnist_stroke_widths(data_dir)))
        return
    if not args.model:
        ap.error("--model is required to measure")
    from mnist_lab.startup import import_tensorflow

    import_tensorflow()
    from mnist_lab.predict import load_model

    model = load_model(args.model).keras
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.keep or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        items = make_set(folder, args.source, args.n, data_dir)
        result = measure(model, items)
    show(f"predict accuracy on {args.n} {args.source}-set digits per condition ({args.model}):", result, args.json)


if __name__ == "__main__":
    from mnist_lab.errors import MnistLabError

    try:
        main()
    except MnistLabError as e:  # a model that cannot be loaded: one line, as the CLI says it
        sys.exit(f"error: {e}")
