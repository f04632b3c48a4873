"""`mnist-lab predict` on real handwriting by writers other than MNIST's, and what each step of its
preprocessing is worth there. Not a test: it measures.

    .venv/bin/python benchmarks/other_writers.py --model model.keras [--json]

The digits are scikit-learn's `load_digits` (the UCI "optdigits" set: 1,797 digits written by 43
people, none of them MNIST's writers, scanned and reduced to 8x8 blocks of 17 grey levels). Each is
drawn as a person's file would be: dark ink on white paper with a margin, 12 times larger (a
blocky, blurred scan), then read by `predict`'s preprocessing with its lighting and stroke-width
steps on and off. MNIST's own digits are measured by benchmarks/handwriting.py.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from PIL import Image

SCALE = 12  # an 8x8 digit with a 2-block margin becomes 144x144 px
VARIANTS = {  # name: (lighting, strokes)
    "all steps (predict's default)": (True, True),
    "without the stroke-width step": (True, False),
    "without the lighting step": (False, True),
    "without either": (False, False),
}


def drawn(block: np.ndarray) -> np.ndarray:
    """An 8x8 optdigits image (0-16, ink high) -> grey paper picture (0-255, dark ink on white)."""
    ink = np.pad(block.astype(np.float32) / 16.0, 2)
    big = Image.fromarray((255 * (1 - ink)).astype(np.uint8)).resize((ink.shape[1] * SCALE, ink.shape[0] * SCALE), Image.BILINEAR)
    return np.asarray(big, dtype=np.float32)


def measure(model, images: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    from mnist_lab.predict import mnist_style

    from scipy.stats import binomtest

    pictures = [drawn(b) for b in images]
    out, right = {}, {}
    for name, (lighting, strokes) in VARIANTS.items():
        x = np.stack([mnist_style(p, lighting=lighting, strokes=strokes) for p in pictures])[..., None]
        right[name] = model.predict(x, batch_size=512, verbose=0).argmax(axis=1) == labels
        out[name] = float(right[name].mean())
    # McNemar's exact test against the default, on the same digits: do the two differ beyond chance?
    default = right[next(iter(VARIANTS))]
    for name in list(VARIANTS)[1:]:
        gained, lost = int((default & ~right[name]).sum()), int((~default & right[name]).sum())
        out[f"{name}: McNemar p"] = float(binomtest(gained, gained + lost).pvalue) if gained + lost else 1.0
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="a .keras file, runs:/ID/model or models:/mnist-cnn@champion")
    ap.add_argument("--json", action="store_true", help="print the figures as one JSON line too")
    args = ap.parse_args()
    from sklearn.datasets import load_digits

    from mnist_lab.provenance import cpu_model
    from mnist_lab.startup import import_tensorflow

    import_tensorflow()
    from handwriting import show  # this folder is on sys.path when run as a script

    from mnist_lab.predict import load_model

    digits = load_digits()
    result = measure(load_model(args.model).keras, digits.images, digits.target)
    show(f"predict accuracy on the {len(digits.target):,} optdigits of 43 other writers ({args.model}; {cpu_model()}):", result, args.json)


if __name__ == "__main__":
    from mnist_lab.errors import MnistLabError

    try:
        main()
    except MnistLabError as e:  # a model that cannot be loaded: one line, as the CLI says it
        sys.exit(f"error: {e}")
