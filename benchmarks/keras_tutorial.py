"""The tutorial recipe in plain Keras, nothing of mnist-lab: what `make bench` measures the lab against.

    MNIST_LAB_DATA=/path/to/mnist .venv/bin/python benchmarks/keras_tutorial.py [--epochs 3] [--batch-size 32]
        [--train-size N] [--dense 1024] [--filters 32 64] [--json]

The tutorial's code: Conv2D(32, (5, 5), relu) -> MaxPooling2D -> Conv2D(64, (5, 5), relu) ->
MaxPooling2D -> Flatten -> Dense(1024, relu) -> Dropout(0.5) -> Dense(10, softmax), Adam,
categorical cross-entropy, `model.fit(x, y, batch_size=32, epochs=3, validation_data=...)`.
No padding is passed, so Keras uses 'valid'. The only additions: MNIST is read from the IDX
files (no internet here), the same 5,000 validation images as the lab holds out (stratified,
seed 0), and a callback that times each epoch the way the lab does (validation included).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402


def read_idx(path: Path, offset: int) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        return np.frombuffer(f.read(), np.uint8, offset=offset)


class EpochTimer(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs["epoch_seconds"] = time.perf_counter() - self.start


def tutorial_model() -> keras.Model:
    """The tutorial's network, compiled as the tutorial does (Keras' defaults: 1 step per call, float32)."""
    model = keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(32, kernel_size=(5, 5), activation="relu"),
        keras.layers.MaxPooling2D(pool_size=(2, 2)),
        keras.layers.Conv2D(64, (5, 5), activation="relu"),
        keras.layers.MaxPooling2D(pool_size=(2, 2)),
        keras.layers.Flatten(),
        keras.layers.Dense(1024, activation="relu"),
        keras.layers.Dropout(0.5),
        keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile(loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--train-size", type=int, help="cap on training images (default: all 55,000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print one JSON line instead of a sentence")
    args = ap.parse_args()

    folder = Path(os.environ["MNIST_LAB_DATA"])
    x = read_idx(folder / "train-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
    y = read_idx(folder / "train-labels-idx1-ubyte.gz", 8)
    x_train, x_val, y_train, y_val = train_test_split(x, y, test_size=5000, stratify=y, random_state=0)
    if args.train_size:
        x_train, _, y_train, _ = train_test_split(x_train, y_train, train_size=args.train_size, stratify=y_train, random_state=0)
    x_train = (x_train.astype("float32") / 255)[..., None]
    x_val = (x_val.astype("float32") / 255)[..., None]
    y_train, y_val = keras.utils.to_categorical(y_train, 10), keras.utils.to_categorical(y_val, 10)

    keras.utils.set_random_seed(args.seed)
    model = tutorial_model()
    history = model.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.epochs, verbose=0,
                        validation_data=(x_val, y_val), callbacks=[EpochTimer()]).history
    result = {
        "param_count": model.count_params(),
        "train_images": len(x_train),
        "epoch_seconds": history["epoch_seconds"],
        "val_accuracy": history["val_accuracy"],
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['param_count']:,} parameters, val_accuracy {result['val_accuracy'][-1]:.4f} after "
              f"{args.epochs} epochs, " + ", ".join(f"{s:.1f}" for s in result["epoch_seconds"]) + " s/epoch")


if __name__ == "__main__":
    main()
