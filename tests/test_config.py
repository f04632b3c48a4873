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


def test_missing_file():
    with pytest.raises(ConfigError, match="no such file"):
        load_config("experiments/nope.yaml")


def test_override_values_are_yaml():
    assert parse_overrides(["a=1", "b=0.5", "c=[1, 2]", "d=true", "e=adam"]) == {"a": 1, "b": 0.5, "c": [1, 2], "d": True, "e": "adam"}


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["train.epoch=2"], "command line: unknown key 'train.epoch' (did you mean 'epochs'?)"),
        (["epochs"], "command line: 'epochs' is not key=value (e.g. train.epochs=1)"),
        (["model.conv_blocks.2.filters=8"], "command line: 'model.conv_blocks.2' is out of range: the list has 2 entries (0..1)"),
        (["model.conv_blocks.x.filters=8"], "command line: 'model.conv_blocks.x' is out of range: the list has 2 entries (0..1)"),
        (["train.epochs.x=8"], "command line: 'train.epochs' is a value, it has no key 'x'"),
        (["model.dense=[0]"], "command line: model.dense=[0]: widths must be positive, got [0]"),
        (["model.conv_blocks=[{filters: 0}, {filters: -1}]"],
         "command line: model.conv_blocks=[{filters: 0}, {filters: -1}]: Input should be greater than 0 (got 0) (+1 more)"),
        (["train.epochs=0"], "command line: train.epochs=0: Input should be greater than 0 (got 0)"),
        (["train.epochs=-1", "train.batch_size=0"], "command line: train.batch_size=0: Input should be greater than 0 (got 0) (+1 more)"),
        (["model.conv_blocks.0.kernel_size=29"],
         "command line: model.conv_blocks.0.kernel_size=29: 29 is larger than the 28x28 feature map it sees; use at most 28"),
        (["a=[x"], "command line: the value of 'a' is not valid YAML: '[x'"),
        (["a=b=c"], "command line: unknown key 'a' (allowed: data, model, train, precision)"),
    ],
)
def test_bad_overrides_word_for_word(overrides, expected):
    assert refusal(None, overrides) == expected


def refusal(path=None, overrides=None) -> str:
    with pytest.raises(ConfigError) as e:
        load_config(path, overrides)
    return str(e.value)


def test_file_errors_word_for_word(tmp_path):
    bad = write(tmp_path, "model:\n  dropout: 0.1\n  dense: [unclosed\n")
    assert refusal(bad) == f"{bad}: line 4 is not valid YAML (expected ',' or ']', but got '<stream end>')"
    assert refusal(write(tmp_path, "- a\n")).endswith(": expected a mapping of config keys at the top level, got list")
    assert refusal(tmp_path) == f"{tmp_path}: is a directory; give a YAML file such as experiments/baseline.yaml"
    assert refusal(write(tmp_path, "train:\n  epochs: 0\n")).endswith(".yaml: train.epochs: Input should be greater than 0 (got 0)")
    assert refusal(None, {"train.epochs": 2, "model.dense": [0]}) == "command line: model.dense=[0]: widths must be positive, got [0]"
    assert load_config(write(tmp_path, "")) == Config()


def test_shapes_steps_and_dotted_keys():
    from mnist_lab.config import get_dotted, merge

    assert Config().model.feature_map_sizes() == [28, 12, 4]
    assert load_config(None, ["model.padding=same"]).model.feature_map_sizes() == [28, 14, 7]
    assert Config().train.steps_per_epoch(100) == 4 and Config().train.steps_per_epoch(96) == 3
    assert parse_overrides(["x= ", "y=[1, {a: 2}]"]) == {"x": None, "y": [1, {"a": 2}]}
    tree = Config().model_dump()
    assert get_dotted(tree, "model.conv_blocks.1.filters") == 64 and get_dotted(tree, "train.epochs") == 3
    base = {"a": {"b": [1, 2], "c": 1}}
    merged = merge(base, {"a": {"c": 2}})
    merged["a"]["b"].append(3)
    diff = {"d": {"e": [1]}}
    merge(base, diff)["d"]["e"].append(2)
    assert base == {"a": {"b": [1, 2], "c": 1}} and diff == {"d": {"e": [1]}}  # neither input is changed


def test_feature_map_sizes_floor_odd_maps_and_count_valid_convolutions_exactly():
    # By hand, 'valid': 28 -5+1-> 24 (pool 1) -3+1-> 22 //2-> 11 -3+1-> 9 //2-> 4 (not 4.5: pooling floors).
    c = load_config(None, ["model.conv_blocks=[{kernel_size: 5, pool_size: 1}, {kernel_size: 3}, {kernel_size: 3}]"])
    sizes = c.model.feature_map_sizes()
    assert sizes == [28, 24, 11, 4] and all(type(s) is int for s in sizes)


def test_an_error_with_no_file_and_no_guilty_override_is_blamed_on_the_config():
    from mnist_lab.config import build_config

    # kernel 21 fits block 0 (28 -> 8, pooled to 4); it is block 1's default 5x5 kernel that no longer fits,
    # a key no override set, so the message names the config (no file was given).
    expected = "config: model.conv_blocks.1.kernel_size: 5 is larger than the 4x4 feature map it sees; use at most 4"
    assert refusal(None, ["model.conv_blocks.0.kernel_size=21"]) == expected
    with pytest.raises(ConfigError) as e:
        build_config({}, {"model.conv_blocks.0.kernel_size": 21})
    assert str(e.value) == expected


def test_a_section_given_a_value_is_pydantic_s_error_not_a_crash():
    from mnist_lab.config import build_config

    with pytest.raises(ConfigError) as e:
        build_config({"train": 5}, where="exp.yaml")
    assert str(e.value) == "exp.yaml: train: Input should be a valid dictionary or instance of TrainConfig (got 5)"
    with pytest.raises(ConfigError) as e:
        build_config({"model": {"dropout": {"rate": 0.1}}}, where="exp.yaml")
    assert str(e.value) == "exp.yaml: model.dropout: Input should be a valid number"


def test_a_message_that_already_says_what_it_got_does_not_say_it_twice():
    assert refusal(None, ["model.dropout=2"]) == "command line: model.dropout=2: must be in [0, 1), got 2.0"


def test_a_file_yaml_cannot_read_at_all_is_refused_in_one_line(tmp_path):
    # A control character stops YAML's reader before the parser: its error has no line mark and no `problem`.
    bad = write(tmp_path, "a: \x01\n")
    assert refusal(bad) == (f"{bad}: is not valid YAML (unacceptable character #x0001: special characters are not allowed "
                            "in \"<byte string>\", position 3)")


def test_a_file_that_is_not_text_is_refused_not_a_traceback(tmp_path):
    binary = tmp_path / "model.keras"
    binary.write_bytes(b"PK\x03\x04\xff\xfe")  # a zip, as a saved Keras model is, given by mistake
    assert refusal(binary) == (f"{binary}: is not valid YAML (unacceptable character #x00ff: invalid start byte "
                               "in \"<byte string>\", position 4)")
