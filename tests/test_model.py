import keras

from mnist_lab.config import load_config
from mnist_lab.model import build_model

from conftest import REPO


def layer_summary(model):
    return [(type(l).__name__, getattr(l, "filters", None) or getattr(l, "units", None)) for l in model.layers]


def test_baseline_is_the_tensorflow_tutorial_network():
    model = build_model(load_config(REPO / "experiments/baseline.yaml"))
    assert layer_summary(model) == [
        ("Conv2D", 32), ("MaxPooling2D", None), ("Conv2D", 64), ("MaxPooling2D", None),
        ("Flatten", None), ("Dense", 1024), ("Dropout", None), ("Dense", 10),
    ]
    assert model.layers[0].kernel_size == (5, 5)
    # 5*5*32+32 + 5*5*32*64+64 + 7*7*64*1024+1024 + 1024*10+10: 'same' padding keeps 28 -> 14 -> 7.
    assert model.count_params() == 3_274_634


def test_tutorial_3x3_network():
    model = build_model(load_config(REPO / "experiments/tutorial_3x3.yaml"))
    assert layer_summary(model) == [("Conv2D", 64), ("MaxPooling2D", None)] * 3 + [
        ("Flatten", None), ("Dense", 64), ("Dense", 32), ("Dense", 10)
    ]
    assert model.output_shape == (None, 10)
    assert isinstance(model.loss, str) and model.loss == "sparse_categorical_crossentropy"


def test_build_model_is_pure_and_honours_batch_norm_and_precision():
    config = load_config(None, ["model.batch_norm=true", "precision=mixed_bfloat16", "model.dropout=0"])
    a, b = build_model(config), build_model(config)
    assert a is not b and a.count_params() == b.count_params()
    names = [type(l).__name__ for l in a.layers]
    assert "BatchNormalization" in names and "Dropout" not in names
    assert a.layers[0].compute_dtype == "bfloat16" and a.layers[-1].compute_dtype == "float32"
    assert keras.config.dtype_policy().name == "float32"  # no global policy was changed
