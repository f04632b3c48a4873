"""build_model(config): the CNN as a keras.Sequential, a pure function of the config.

Nothing here knows about training loops, Optuna or KerasTuner; the search adapters turn
their hyperparameter values into a Config and call this.
"""

from __future__ import annotations

import keras
from keras import layers

from mnist_lab.config import IMAGE_SIZE, Config

NUM_CLASSES = 10


def build_model(config: Config) -> keras.Model:
    """Conv blocks -> Flatten -> Dense widths -> Dropout -> softmax, compiled with the config's optimizer."""
    m = config.model
    # A per-layer dtype policy instead of keras.mixed_precision.set_global_policy keeps this
    # function free of global state; the softmax stays float32 for a stable loss.
    dtype = config.precision
    stack: list[layers.Layer] = [keras.Input((IMAGE_SIZE, IMAGE_SIZE, 1))]
    for block in m.conv_blocks:
        if m.batch_norm:
            stack += [
                layers.Conv2D(block.filters, block.kernel_size, padding=m.padding, use_bias=False, dtype=dtype),
                layers.BatchNormalization(dtype=dtype),
                layers.Activation(m.activation, dtype=dtype),
            ]
        else:
            stack.append(layers.Conv2D(block.filters, block.kernel_size, padding=m.padding, activation=m.activation, dtype=dtype))
        if block.pool_size > 1:
            stack.append(layers.MaxPooling2D(block.pool_size, dtype=dtype))
    stack.append(layers.Flatten(dtype=dtype))
    stack += [layers.Dense(width, activation=m.activation, dtype=dtype) for width in m.dense]
    if m.dropout > 0:
        stack.append(layers.Dropout(m.dropout, dtype=dtype))
    stack.append(layers.Dense(NUM_CLASSES, activation="softmax", dtype="float32"))
    model = keras.Sequential(stack, name="mnist_cnn")

    t = config.train
    optimizer = {
        "adam": keras.optimizers.Adam,
        "adamw": keras.optimizers.AdamW,
        "sgd": keras.optimizers.SGD,
        "rmsprop": keras.optimizers.RMSprop,
    }[t.optimizer](learning_rate=t.learning_rate)
    model.compile(optimizer=optimizer, loss=t.loss, metrics=["accuracy"])
    return model
