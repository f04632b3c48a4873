import keras
import numpy as np
import pytest

from mnist_lab.config import load_config
from mnist_lab.model import build_model, learning_rate

from conftest import REPO


def layer_summary(model):
    return [(type(l).__name__, getattr(l, "filters", None) or getattr(l, "units", None)) for l in model.layers]


TUTORIAL_LAYERS = [
    ("Conv2D", 32), ("MaxPooling2D", None), ("Conv2D", 64), ("MaxPooling2D", None),
    ("Flatten", None), ("Dense", 1024), ("Dropout", None), ("Dense", 10),
]


def test_baseline_is_the_tutorial_network_with_valid_padding():
    model = build_model(load_config(REPO / "experiments/baseline.yaml"))
    assert layer_summary(model) == TUTORIAL_LAYERS
    assert model.layers[0].kernel_size == (5, 5) and model.layers[0].padding == "valid"
    # 5*5*32+32 + 5*5*32*64+64 + 4*4*64*1024+1024 + 1024*10+10: 'valid' padding shrinks 28 -> 24 -> 12 -> 8 -> 4.
    assert model.count_params() == 1_111_946


def test_same_padding_preset_is_the_deep_mnist_layout():
    model = build_model(load_config(REPO / "experiments/baseline_same.yaml"))
    assert layer_summary(model) == TUTORIAL_LAYERS
    # 7*7*64*1024 inputs to the dense layer: 'same' padding keeps 28 -> 14 -> 7.
    assert model.count_params() == 3_274_634


def test_tutorial_3x3_network():
    model = build_model(load_config(REPO / "experiments/tutorial_3x3.yaml"))
    assert layer_summary(model) == [("Conv2D", 64), ("MaxPooling2D", None)] * 3 + [
        ("Flatten", None), ("Dense", 64), ("Dense", 32), ("Dense", 10)
    ]
    assert model.output_shape == (None, 10)
    assert isinstance(model.loss, str) and model.loss == "sparse_categorical_crossentropy"
    # 3*3*64+64 + 2*(3*3*64*64+64) + 64*64+64 + 64*32+32 + 32*10+10: 28 -> 26 -> 13 -> 11 -> 5 -> 3 -> 1.
    assert model.count_params() == 81_066


def test_build_model_is_pure_and_honours_batch_norm_and_precision():
    config = load_config(None, ["model.batch_norm=true", "precision=mixed_bfloat16", "model.dropout=0"])
    a, b = build_model(config), build_model(config)
    assert a is not b and a.count_params() == b.count_params()
    names = [type(l).__name__ for l in a.layers]
    assert "BatchNormalization" in names and "Dropout" not in names
    assert a.layers[0].compute_dtype == "bfloat16" and a.layers[-1].compute_dtype == "float32"
    assert keras.config.dtype_policy().name == "float32"  # no global policy was changed


@pytest.mark.parametrize("schedule", ["cosine", "one_cycle"])
def test_learning_rate_schedules_span_the_whole_run(schedule):
    config = load_config(None, ["data.train_size=1000", "train.batch_size=100", "train.epochs=2",
                                f"train.lr_schedule={schedule}", "train.learning_rate=0.01"])
    lr = learning_rate(config)  # 20 optimizer steps in all
    values = [float(lr(step)) for step in range(21)]
    assert values[-1] < 1e-4  # annealed to ~0 at the last step, not before
    assert max(values) == pytest.approx(0.01, rel=1e-3)
    if schedule == "one_cycle":
        assert values[0] == pytest.approx(0.01 / 25) and int(np.argmax(values)) == 6  # warm-up: 30% of the steps
    else:
        assert values[0] == pytest.approx(0.01)
    assert learning_rate(load_config(None, ["train.learning_rate=0.01"])) == 0.01  # constant: a plain float


def test_augmentation_layers_act_only_while_training():
    config = load_config(None, ["model.augment.shift=0.1", "model.augment.rotation=10", "model.augment.zoom=0.1"])
    model = build_model(config)
    augment = model.layers[:3]
    assert [type(l).__name__ for l in augment] == ["RandomTranslation", "RandomRotation", "RandomZoom"]
    x = np.zeros((4, 28, 28, 1), np.float32)
    x[:, 8:20, 12:16] = 1.0  # a stroke
    distort = keras.Sequential(augment)
    assert np.array_equal(np.asarray(distort(x, training=False)), x)  # inference sees the image as it is
    assert not np.allclose(np.asarray(distort(x, training=True)), x)
    assert load_config(None).model.augment.active is False and config.model.augment.active
