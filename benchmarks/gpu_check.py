"""The lab's model and data on a GPU, through Keras' PyTorch backend (a machine without TensorFlow).

    KERAS_BACKEND=torch MNIST_LAB_DATA=/path/to/mnist PYTHONPATH=. python benchmarks/gpu_check.py [--epochs 3] [KEY=VALUE ...]

The lab trains with TensorFlow (`train()`: tf.data input, MLflow around it); the GPU machines lent to
this project hold PyTorch and JAX but no TensorFlow, and cannot fetch it. What is plain Keras does
travel: `build_model(config)` for experiments/baseline.yaml (with the KEY=VALUE overrides `mnist-lab
train` takes) at float32 and at mixed_bfloat16, fitted on the lab's own split (`data.load_split`: 55,000
training and 5,000 validation images, the same seed), then evaluated once on the 10,000 test images.
Prints, per precision, a JSON line: the backend and device, seconds per epoch (the first includes
compilation), images/s over the later epochs (over the only one with --epochs 1), validation accuracy
per epoch, test accuracy. On PyTorch it trains 1 step per call (train.steps_per_execution=1), whatever
the overrides say: the only value that backend takes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import keras
import numpy as np

from mnist_lab import data
from mnist_lab.config import load_config
from mnist_lab.model import build_model


class EpochTimes(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self.started)


def device() -> str:
    if keras.backend.backend() == "torch":
        import torch

        return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return "default device of " + keras.backend.backend()


def check(precision: str, epochs: int, overrides: list[str]) -> dict:
    if keras.backend.backend() == "torch":
        overrides = [*overrides, "train.steps_per_execution=1"]  # the only value Keras' PyTorch trainer takes
    config = load_config(Path(__file__).resolve().parent.parent / "experiments/baseline.yaml", [*overrides, f"precision={precision}", f"train.epochs={epochs}"])
    split = data.load_split(config.data)
    x_test, y_test = data.load_test()
    one_hot = config.train.loss == "categorical_crossentropy"

    def labels(y):
        return keras.utils.to_categorical(y, 10) if one_hot else y

    keras.utils.set_random_seed(config.train.seed)
    model = build_model(config)
    times = EpochTimes()
    history = model.fit(data.to_model_input(split.x_train), labels(split.y_train), batch_size=config.train.batch_size,
                        epochs=epochs, validation_data=(data.to_model_input(split.x_val), labels(split.y_val)),
                        callbacks=[times], verbose=0)
    _, test_accuracy = model.evaluate(data.to_model_input(x_test), labels(y_test), batch_size=1000, verbose=0)
    later = times.seconds[1:] or times.seconds
    return {"backend": keras.backend.backend(), "device": device(), "precision": precision,
            "batch_size": config.train.batch_size, "epoch_seconds": [round(s, 2) for s in times.seconds],
            "images_per_s_after_first_epoch": round(len(split.y_train) / float(np.median(later))),
            "val_accuracy": [round(a, 4) for a in history.history["val_accuracy"]],
            "test_accuracy": round(float(test_accuracy), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--precisions", default="float32,mixed_bfloat16")
    ap.add_argument("overrides", nargs="*", help="KEY=VALUE, as `mnist-lab train` takes them")
    args = ap.parse_args()
    for precision in args.precisions.split(","):
        print(json.dumps(check(precision, args.epochs, args.overrides)), flush=True)


if __name__ == "__main__":
    main()
