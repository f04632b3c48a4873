"""build_model(config): the CNN as a keras.Sequential, a pure function of the config.

Nothing here knows about training loops, Optuna or KerasTuner; the search adapters turn
their hyperparameter values into a Config and call this.
"""

from __future__ import annotations

import keras
from keras import layers

from mnist_lab.config import IMAGE_SIZE, ONE_CYCLE_WARMUP, Config

NUM_CLASSES = 10


def build_model(config: Config) -> keras.Model:
    """Conv blocks -> Flatten -> Dense widths -> Dropout -> softmax, compiled with the config's optimizer."""
    m = config.model
    # A per-layer dtype policy instead of keras.mixed_precision.set_global_policy keeps this
    # function free of global state; the softmax stays float32 for a stable loss.
    # train() resolves 'auto' from the hardware before building; a bare build computes in float32.
    dtype = "float32" if config.precision == "auto" else config.precision
    stack: list[layers.Layer] = [keras.Input((IMAGE_SIZE, IMAGE_SIZE, 1))]
    a = m.augment
    # Paper is 0 after scaling, so what a distortion uncovers is filled with paper, not smeared ink.
    if a.shift:
        stack.append(layers.RandomTranslation(a.shift, a.shift, fill_mode="constant"))
    if a.rotation:
        stack.append(layers.RandomRotation(a.rotation / 360, fill_mode="constant"))
    if a.zoom:
        stack.append(layers.RandomZoom(a.zoom, fill_mode="constant"))
    for block in m.conv_blocks:
        if m.batch_norm:
            stack += [
                layers.Conv2D(block.filters, block.kernel_size, padding=m.padding, use_bias=False, dtype=dtype),
                # Momentum 0.9, not Keras' 0.99: the moving statistics then settle within ~20 steps
                # instead of ~200, so the pruner's quarter-epoch scores of a short trial are not
                # scored with the initial (wrong) statistics.
                layers.BatchNormalization(momentum=0.9, dtype=dtype),
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
    decay = {"weight_decay": t.weight_decay} if t.weight_decay > 0 else {}
    optimizer = {
        "adam": keras.optimizers.Adam,
        "adamw": keras.optimizers.AdamW,
        "sgd": keras.optimizers.SGD,
        "rmsprop": keras.optimizers.RMSprop,
    }[t.optimizer](learning_rate=learning_rate(config), **decay)
    model.compile(optimizer=optimizer, loss=t.loss, metrics=["accuracy"], steps_per_execution=t.steps_per_execution)
    return model


def learning_rate(config: Config) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """The learning rate, or its schedule over the run's optimizer steps (known from the config alone)."""
    t = config.train
    total = t.epochs * t.steps_per_epoch(config.data.train_count())
    if t.lr_schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(t.learning_rate, decay_steps=total)
    if t.lr_schedule == "one_cycle":
        warmup = max(1, int(ONE_CYCLE_WARMUP * total))
        return keras.optimizers.schedules.CosineDecay(
            t.learning_rate / 25, decay_steps=max(1, total - warmup), warmup_target=t.learning_rate, warmup_steps=warmup
        )
    return t.learning_rate
