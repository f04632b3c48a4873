import pytest

from mnist_lab.config import Config, load_config, parse_overrides

from mnist_lab.errors import ConfigError

from conftest import REPO


def test_defaults_are_the_baseline_tutorial():
    c = load_config(REPO / "experiments/baseline.yaml")
    assert c == Config()
    assert [(b.filters, b.kernel_size, b.pool_size) for b in c.model.conv_blocks] == [(32, 5, 2), (64, 5, 2)]
    assert c.model.dense == [1024] and c.model.dropout == 0.5 and c.model.padding == "valid"
    assert (c.train.optimizer, c.train.batch_size, c.train.epochs, c.train.loss) == ("adam", 32, 3, "categorical_crossentropy")
    assert c.data.validation_count() == 5000


def test_tutorial_preset_holds_only_differences():
    c = load_config(REPO / "experiments/tutorial_3x3.yaml")
    assert [(b.filters, b.kernel_size) for b in c.model.conv_blocks] == [(64, 3)] * 3
    assert c.model.dense == [64, 32] and c.model.dropout == 0
    assert c.train.loss == "sparse_categorical_crossentropy" and c.train.epochs == 5
    assert c.data.validation_count() == 18000
    assert c.train.batch_size == 32  # inherited default


def test_overrides_reach_nested_keys_and_list_entries():
    c = load_config(REPO / "experiments/baseline.yaml", ["train.epochs=1", "model.conv_blocks.1.filters=16", "model.dense=[128, 64]"])
    assert c.train.epochs == 1 and c.model.conv_blocks[1].filters == 16 and c.model.dense == [128, 64]
    assert c.flat()["model.conv_blocks.1.filters"] == 16


def write(tmp_path, text):
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text, expected",
    [
        ("model:\n  dropot: 0.2\n", "unknown key 'model.dropot' (did you mean 'dropout'?)"),
        ("trian:\n  epochs: 2\n", "unknown key 'trian' (did you mean 'train'?)"),
        ("model:\n  dropout: 1.0\n", "model.dropout: must be in [0, 1)"),
        ("model:\n  dropout: -0.1\n", "model.dropout: must be in [0, 1)"),
        ("train:\n  epochs: many\n", "train.epochs"),
        ("train:\n  epochs: 0\n", "train.epochs"),
        ("train:\n  batch_size: -32\n", "train.batch_size"),
        ("model:\n  conv_blocks: [{filters: 0}]\n", "model.conv_blocks.0.filters"),
        ("model:\n  conv_blocks: [{filters: 8, filtrs: 3}]\n", "unknown key 'model.conv_blocks.0.filtrs'"),
        ("model:\n  dense: [0]\n", "model.dense: widths must be positive"),
        ("model:\n  conv_blocks: [{kernel_size: 7}, {kernel_size: 7}, {kernel_size: 7}]\n",
         "model.conv_blocks.2.kernel_size: 7 is larger than the 2x2 feature map it sees; use at most 2"),
        ("model:\n  conv_blocks: [{kernel_size: 29}]\n", "model.conv_blocks.0.kernel_size: 29 is larger than the 28x28"),
        ("data:\n  validation_size: 1.5\n", "data.validation_size"),
        ("- a list\n", "expected a mapping"),
        ("model: [unclosed\n", "is not valid YAML"),
    ],
)
def test_bad_configs_name_file_key_and_what_is_allowed(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    message = str(e.value)
    assert message.startswith(str(path)), message
    assert expected in message, message
    assert "\n" not in message


@pytest.mark.parametrize(
    "pairs, expected",
    [
        (["train.epoch=2"], "command line: unknown key 'train.epoch' (did you mean 'epochs'?)"),
        (["model.conv_blocks.5.filters=8"], "'model.conv_blocks.5' is out of range"),
        (["epochs"], "'epochs' is not key=value"),
        (["train.epochs=0"], "train.epochs"),
    ],
)
def test_bad_overrides(pairs, expected):
    with pytest.raises(ConfigError, match=None) as e:
        load_config(None, pairs)
    assert expected in str(e.value)


def test_missing_file():
    with pytest.raises(ConfigError, match="no such file"):
        load_config("experiments/nope.yaml")


def test_override_values_are_yaml():
    assert parse_overrides(["a=1", "b=0.5", "c=[1, 2]", "d=true", "e=adam"]) == {"a": 1, "b": 0.5, "c": [1, 2], "d": True, "e": "adam"}
