"""How far to trust an answer of `predict`: a shape check and calibrated probabilities.

A network trained on digits calls anything a digit: a filled square reads "0" at 98%. Two checks,
both fitted on MNIST's training images (never the test set), say when an answer is not to be
trusted:

- **Digit shape.** The image, made MNIST-style, is projected on the 40 principal components of
  MNIST's training digits; a picture whose reconstruction error exceeds that of 99.5% of held-out
  training digits has a shape no digit has ("not a digit?"). The fit takes ~2.5 s and is cached
  per MNIST content (its digest) under ~/.cache/mnist-lab.
- **Calibration.** The model's probabilities are temperature-scaled (Guo et al., 2017), the
  temperature fitted on validation images (the model's own validation split where its run is
  known), so "90%" means right about 9 times in 10 on digits; under LOW_CONFIDENCE the answer
  is flagged "low confidence".
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mnist_lab import data
from mnist_lab.config import DataConfig

COMPONENTS = 40  # principal components of MNIST's digits the shape check projects on
SHAPE_QUANTILE = 0.995  # 99.5% of held-out training digits pass: about 0.5% of real digits are flagged
FIT_IMAGES = 20_000  # training images the components are fitted on; the next 10,000 set the threshold
LOW_CONFIDENCE = 0.5  # calibrated probability under which an answer is flagged
CALIBRATION_IMAGES = 5_000


@dataclass(frozen=True)
class DigitShape:
    mean: np.ndarray  # (784,)
    components: np.ndarray  # (COMPONENTS, 784), orthonormal rows
    threshold: float  # squared reconstruction error above which a picture is no digit

    def error(self, images: np.ndarray) -> np.ndarray:
        """Squared reconstruction error of (N, 28, 28) images in [0, 1]."""
        x = images.reshape(len(images), -1).astype(np.float64) - self.mean
        return ((x - (x @ self.components.T) @ self.components) ** 2).sum(axis=1)


def digit_shape(folder: Path | None) -> DigitShape:
    arrays, digest = data.load_mnist(folder)
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mnist-lab" / f"digit-shape-{digest[7:]}.npz"
    try:
        saved = np.load(cache)
        return DigitShape(saved["mean"], saved["components"], float(saved["threshold"]))
    except (OSError, KeyError, ValueError):
        pass
    from sklearn.decomposition import PCA

    x = arrays["train-images-idx3-ubyte"].reshape(-1, 784).astype(np.float32) / 255
    pca = PCA(COMPONENTS, svd_solver="randomized", random_state=0).fit(x[:FIT_IMAGES])
    shape = DigitShape(pca.mean_.astype(np.float64), pca.components_.astype(np.float64), 0.0)
    held_out = shape.error(x[FIT_IMAGES:FIT_IMAGES + 10_000].reshape(-1, 28, 28))
    shape = DigitShape(shape.mean, shape.components, float(np.quantile(held_out, SHAPE_QUANTILE)))
    try:  # a cache that cannot be written costs the next call 2.5 s, nothing more
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp.npz")
        np.savez(tmp, mean=shape.mean, components=shape.components, threshold=shape.threshold)
        tmp.replace(cache)
    except OSError:
        pass
    return shape


def fit_temperature(probs: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T that minimises the validation negative log-likelihood of softmax(log p / T)."""
    from scipy.optimize import minimize_scalar

    logits = np.log(np.clip(probs, 1e-12, 1.0))

    def nll(t: float) -> float:
        z = logits / t
        z = z - z.max(axis=1, keepdims=True)
        return float(-(z[np.arange(len(labels)), labels] - np.log(np.exp(z).sum(axis=1))).mean())

    return float(minimize_scalar(nll, bounds=(0.05, 20.0), method="bounded").x)


def calibrate(probs: np.ndarray, temperature: float) -> np.ndarray:
    z = np.log(np.clip(probs, 1e-12, 1.0)) / temperature
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def temperature_for(model, data_config: DataConfig | None, folder: Path | None) -> float:
    """The model's temperature, on its own validation images (or the default split's)."""
    split = data.load_split(data_config or DataConfig(), folder)
    x, y = split.x_val[:CALIBRATION_IMAGES], split.y_val[:CALIBRATION_IMAGES]
    probs = model.predict(data.to_model_input(x), verbose=0, batch_size=500)
    return fit_temperature(np.asarray(probs, dtype=np.float64), y)
