"""MNIST from the four original IDX files, checked, split into train / validation / test.

Set MNIST_LAB_DATA (or pass --data-dir) to a folder holding
train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and
t10k-labels-idx1-ubyte, gzipped (.gz) or not. Without one, keras.datasets downloads MNIST.

Validation images come out of the 60,000 training images (stratified, seeded); the 10,000
test images are returned only by `load_test()`, for final evaluations asked for explicitly.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from mnist_lab.config import DataConfig
from mnist_lab.errors import MnistLabError

# Where keras.datasets.mnist downloads from when no folder is given.
DOWNLOAD_URL = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz"
# SHA-256 of the decompressed files of the original distribution (same as SHA256SUMS.raw
# beside the data): gzip can produce different bytes for the same content, so check these.
FILES = {
    "train-images-idx3-ubyte": ("ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db", (60000, 28, 28)),
    "train-labels-idx1-ubyte": ("65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5", (60000,)),
    "t10k-images-idx3-ubyte": ("0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7", (10000, 28, 28)),
    "t10k-labels-idx1-ubyte": ("ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2", (10000,)),
}
IDX_UBYTE = 0x08  # the only element type MNIST uses


class DataError(MnistLabError):
    pass


@dataclass(frozen=True)
class Split:
    """uint8 images (N, 28, 28) and int labels (N,)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    digest: str  # identifies the MNIST content the split was made from


def data_dir(explicit: str | Path | None = None) -> Path | None:
    folder = explicit or os.environ.get("MNIST_LAB_DATA")
    return Path(folder).expanduser().resolve() if folder else None


def parse_idx(raw: bytes, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """IDX: big-endian magic 0x0000 08 <ndim>, one uint32 per dimension, then uint8 data."""
    if len(raw) < 4:
        raise DataError(f"{name}: truncated: {len(raw)} bytes, not even an IDX header")
    zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype != IDX_UBYTE or ndim != len(shape):
        raise DataError(
            f"{name}: bad IDX magic 0x{raw[:4].hex()} (expected 0x{IDX_UBYTE:04x}{len(shape):02x}); "
            "is this the right file?"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{name}: truncated inside the IDX header ({len(raw)} bytes)")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    if dims != shape:
        raise DataError(f"{name}: shape {dims} in the header, expected {shape}")
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        what = "truncated" if len(raw) - header < expected else "has trailing bytes"
        raise DataError(f"{name}: {what}: {len(raw) - header:,} data bytes, expected {expected:,}; download it again")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def read_file(folder: Path, name: str) -> tuple[np.ndarray, str]:
    digest, shape = FILES[name]
    for path in (folder / name, folder / f"{name}.gz"):
        if path.is_file():
            break
    else:
        raise DataError(f"{folder / name}[.gz]: missing; MNIST_LAB_DATA must hold the four MNIST IDX files")
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"{path}: cannot be decompressed ({e}); the file is damaged, download it again") from None
    array = parse_idx(raw, str(path), shape)
    actual = hashlib.sha256(raw).hexdigest()
    if actual != digest:
        raise DataError(f"{path}: SHA-256 {actual[:12]}… differs from the original MNIST ({digest[:12]}…); the file was altered")
    return array, actual


@lru_cache(maxsize=2)
def load_mnist(folder: Path | None) -> tuple[dict[str, np.ndarray], str]:
    """All four arrays, keyed by file name, and a digest of their content."""
    if folder is None:
        return _download()
    if not folder.is_dir():
        raise DataError(f"{folder}: MNIST_LAB_DATA / --data-dir is not a folder")
    arrays, digests = {}, []
    for name in FILES:
        arrays[name], digest = read_file(folder, name)
        digests.append(digest)
    return arrays, "sha256:" + hashlib.sha256("".join(digests).encode()).hexdigest()[:16]


def _download() -> tuple[dict[str, np.ndarray], str]:
    from mnist_lab.startup import import_tensorflow

    import_tensorflow()  # keras.datasets loads TensorFlow: without its start-up notices
    import keras

    try:
        (xtr, ytr), (xte, yte) = keras.datasets.mnist.load_data()
    except Exception as e:  # urllib raises a zoo of errors offline
        raise DataError(
            f"MNIST could not be downloaded ({type(e).__name__}); without internet, set "
            "MNIST_LAB_DATA to a folder with the four MNIST IDX files"
        ) from None
    arrays = dict(zip(FILES, (xtr, ytr, xte, yte)))
    digests = []
    for name, array in arrays.items():
        # Rebuild the IDX bytes so a download and a local folder get the same digest.
        header = struct.pack(">HBB", 0, IDX_UBYTE, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
        digests.append(hashlib.sha256(header + array.astype(np.uint8).tobytes()).hexdigest())
    return arrays, "sha256:" + hashlib.sha256("".join(digests).encode()).hexdigest()[:16]


def load_split(config: DataConfig, folder: str | Path | None = None) -> Split:
    arrays, digest = load_mnist(data_dir(folder))
    x, y = arrays["train-images-idx3-ubyte"], arrays["train-labels-idx1-ubyte"]
    x_train, x_val, y_train, y_val = train_test_split(
        x, y, test_size=config.validation_count(), stratify=y, random_state=config.seed
    )
    if config.train_size is not None:
        # Stratified too, so a 2,000-image smoke run still sees every digit in proportion.
        x_train, y_train = stratified_subset(x_train, y_train, config.train_size, config.seed)
    return Split(x_train, y_train.astype(np.int64), x_val, y_val.astype(np.int64), digest)


def stratified_subset(x: np.ndarray, y: np.ndarray, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`size` of the images (all of them if there are no more), each digit in its share."""
    if size >= len(y):
        return x, y
    x_sub, _, y_sub, _ = train_test_split(x, y, train_size=size, stratify=y, random_state=seed)
    return x_sub, y_sub


def load_test(folder: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The 10,000 test images: only for a final evaluation that was asked for."""
    arrays, _ = load_mnist(data_dir(folder))
    return arrays["t10k-images-idx3-ubyte"], arrays["t10k-labels-idx1-ubyte"].astype(np.int64)


def to_model_input(images: np.ndarray) -> np.ndarray:
    """uint8 (N, 28, 28) -> float32 (N, 28, 28, 1) in [0, 1], the tutorials' scaling."""
    return (images.astype(np.float32) / 255.0)[..., None]


def batches(x: np.ndarray, y: np.ndarray, batch_size: int, shuffle_seed: int | None = None):
    """`x, y` as the tf.data pipeline `fit` reads: reshuffled every epoch when `shuffle_seed` is given
    (training), in order otherwise (validation); batched, the next two batches made ahead, on one thread.

    Not Keras' own pipeline for NumPy arrays: it sizes its thread pool to every core and autotunes it,
    and two 1-thread trainings side by side (a sweep's two workers) then left a third of 2 cores idle:
    123% CPU and 5,670 images/s, against 197% and 8,130 with this one (`benchmarks/input_pipeline.py
    --repeats 3`, medians of 3, 2026-11-30, 2 cores of a Xeon with AMX, mixed bfloat16)."""
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle_seed is not None:
        dataset = dataset.shuffle(len(x), seed=shuffle_seed, reshuffle_each_iteration=True)
    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    options.autotune.enabled = False
    return dataset.batch(batch_size).prefetch(2).with_options(options)
