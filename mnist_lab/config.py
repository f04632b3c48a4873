"""One typed config for everything mnist-lab trains.

The defaults below *are* the reference tutorial (experiments/baseline.yaml is therefore
nearly empty): YAML files in experiments/ and `key=value` overrides on the command line
hold only what differs. Unknown keys and impossible values are rejected before any
training, with a one-line message naming the file, the key and what is allowed.

    from mnist_lab.config import load_config
    config = load_config("experiments/tutorial_3x3.yaml", ["train.epochs=1"])
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mnist_lab.errors import ConfigError, did_you_mean, first_error, missing

MNIST_TRAIN_IMAGES = 60_000
IMAGE_SIZE = 28  # pixels, square


class _Section(BaseModel):
    # Frozen so a config can be shared by trials and runs without anyone mutating it;
    # extra="forbid" so a typo in a YAML key is an error, not a silently ignored setting.
    model_config = ConfigDict(frozen=True, extra="forbid")


class DataConfig(_Section):
    validation_size: int | float = 5000  # images held out of the 60,000 for validation; a float in (0, 1) is a fraction
    train_size: int | None = None  # cap on training images after the hold-out (None: all); small for smoke runs
    # Seeds the stratified split, so every run of a study sees the same validation images.
    # scikit-learn and NumPy take seeds in [0, 2**32).
    seed: int = Field(0, ge=0, lt=2**32)

    @field_validator("validation_size")
    @classmethod
    def _validation_size(cls, v: int | float) -> int | float:
        # A stratified split needs at least one image of each of the 10 digits on each side.
        if isinstance(v, float):
            if not 0 < v < 1:
                raise ValueError(f"a fraction must be in (0, 1), got {v}")
            if not 10 <= round(v * MNIST_TRAIN_IMAGES) <= MNIST_TRAIN_IMAGES - 1000:
                raise ValueError(f"{v} of {MNIST_TRAIN_IMAGES:,} images is {round(v * MNIST_TRAIN_IMAGES):,}; the validation "
                                 f"set needs 10 to {MNIST_TRAIN_IMAGES - 1000:,} (at least one per digit)")
        elif not 10 <= v <= MNIST_TRAIN_IMAGES - 1000:
            raise ValueError(f"must be between 10 and {MNIST_TRAIN_IMAGES - 1000} images (at least one per digit), got {v}")
        return v

    @field_validator("train_size")
    @classmethod
    def _train_size(cls, v: int | None) -> int | None:
        if v is not None and v < 10:
            raise ValueError(f"must be at least 10 images (or null for all), got {v}")
        return v

    def validation_count(self) -> int:
        if isinstance(self.validation_size, float):
            return round(self.validation_size * MNIST_TRAIN_IMAGES)
        return self.validation_size

    def train_count(self) -> int:
        """Training images a run sees per epoch: what is left after the hold-out, capped by train_size."""
        left = MNIST_TRAIN_IMAGES - self.validation_count()
        return left if self.train_size is None else min(self.train_size, left)


class ConvBlock(_Section):
    filters: int = Field(32, gt=0)  # output channels
    kernel_size: int = Field(5, gt=0)  # square kernel side, pixels
    pool_size: int = Field(2, ge=1)  # max-pooling window and stride; 1 means no pooling


class AugmentConfig(_Section):
    # Random distortions of the training images, as Keras preprocessing layers at the model's input:
    # active only while training, so the logged model sees the image as it is. 0 disables each.
    shift: float = Field(0.0, ge=0, le=0.5)  # max translation, fraction of the side (0.1 = up to 2.8 px)
    rotation: float = Field(0.0, ge=0, le=180)  # max rotation, degrees either way
    zoom: float = Field(0.0, ge=0, lt=1)  # max zoom in or out, fraction

    @property
    def active(self) -> bool:
        return self.shift > 0 or self.rotation > 0 or self.zoom > 0


class ModelConfig(_Section):
    # The tutorial's CNN: two 5x5 conv blocks (32, 64 filters). Its code passes no `padding`, so
    # Keras uses 'valid': 28 -> 24 -> 12 -> 8 -> 4, 1,111,946 parameters in all.
    conv_blocks: list[ConvBlock] = Field(default_factory=lambda: [ConvBlock(filters=32), ConvBlock(filters=64)], min_length=1)
    padding: Literal["same", "valid"] = "valid"  # 'same' keeps the feature map size through each conv (2.1x the work)
    dense: list[int] = Field(default_factory=lambda: [1024])  # hidden dense widths, in order
    dropout: float = 0.5  # rate before the output layer; 0 disables it
    activation: Literal["relu", "elu", "gelu", "swish", "tanh"] = "relu"
    batch_norm: bool = False  # BatchNormalization after each conv, before the activation
    augment: AugmentConfig = AugmentConfig()

    @field_validator("dense")
    @classmethod
    def _dense(cls, v: list[int]) -> list[int]:
        if any(width <= 0 for width in v):
            raise ValueError(f"widths must be positive, got {v}")
        return v

    @field_validator("dropout")
    @classmethod
    def _dropout(cls, v: float) -> float:
        if not 0 <= v < 1:
            raise ValueError(f"must be in [0, 1), got {v}")
        return v

    @model_validator(mode="after")
    def _kernels_fit(self) -> "ModelConfig":
        # A kernel larger than its input, or a pool that leaves nothing, is a model Keras
        # would only reject deep inside fit(); catch it here with the block's key.
        size = IMAGE_SIZE
        for i, block in enumerate(self.conv_blocks):
            if block.kernel_size > size:
                raise ValueError(f"conv_blocks.{i}.kernel_size: {block.kernel_size} is larger than the "
                                 f"{size}x{size} feature map it sees; use at most {size}")
            if self.padding == "valid":
                size = size - block.kernel_size + 1
            if block.pool_size > size:
                raise ValueError(f"conv_blocks.{i}.pool_size: {block.pool_size} is larger than the "
                                 f"{size}x{size} feature map it sees; use at most {size}")
            size //= block.pool_size
        return self

    def feature_map_sizes(self) -> list[int]:
        """Side of the square feature map entering each conv block, then after the last."""
        sizes, size = [], IMAGE_SIZE
        for block in self.conv_blocks:
            sizes.append(size)
            size = (size - block.kernel_size + 1 if self.padding == "valid" else size) // block.pool_size
        return sizes + [size]


ONE_CYCLE_WARMUP = 0.3  # the fraction of a one-cycle run over which its rate climbs from a 25th of its peak


class TrainConfig(_Section):
    optimizer: Literal["adam", "adamw", "sgd", "rmsprop"] = "adam"
    learning_rate: float = Field(1e-3, gt=0)  # Keras' Adam default
    batch_size: int = Field(32, gt=0)
    epochs: int = Field(3, gt=0)
    loss: Literal["categorical_crossentropy", "sparse_categorical_crossentropy"] = "categorical_crossentropy"
    # constant: the tutorial's. cosine: decay to 0 over the run. one_cycle: linear warm-up from lr/25 over
    # the first 30% of steps, then cosine decay to 0 (Smith's one-cycle, the fast-training recipe).
    lr_schedule: Literal["constant", "cosine", "one_cycle"] = "constant"
    weight_decay: float = Field(0.0, ge=0)  # decoupled (AdamW-style) decay per step, any optimizer; 0 disables it
    early_stopping_patience: int | None = None  # epochs without val_loss improvement before stopping; None: off
    seed: int = Field(0, ge=0, lt=2**32)  # weight initialisation and shuffling; `mnist-lab confirm` varies it
    # Batches per compiled TensorFlow call: fewer Python round trips per epoch, same arithmetic and
    # results (`make bench` measures it against 1). Per-batch callbacks then fire once per call.
    steps_per_execution: int = Field(16, gt=0)

    def steps_per_epoch(self, train_images: int) -> int:
        return -(-train_images // self.batch_size)


class Config(_Section):
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    # 'mixed_bfloat16' computes in bfloat16 and keeps float32 weights: fast only on hardware with bf16
    # arithmetic (AMX or AVX512-BF16 CPUs, GPUs of compute capability 8.0+), slower elsewhere.
    # 'auto' picks it there and float32 everywhere else; the run logs what was picked.
    precision: Literal["auto", "float32", "mixed_bfloat16"] = "auto"

    def flat(self) -> dict[str, Any]:
        """Dotted key -> value, the shape MLflow params and search spaces use."""
        return flatten(self.model_dump())


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        items = tree.items()
    elif isinstance(tree, list) and tree and all(isinstance(x, dict) for x in tree):
        items = ((str(i), x) for i, x in enumerate(tree))
    else:
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in items:
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def parse_overrides(pairs: list[str], where: str = "command line") -> dict[str, Any]:
    """['train.epochs=1', 'model.dense=[128]'] -> {'train.epochs': 1, 'model.dense': [128]}; values are YAML."""
    out = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"{where}: '{pair}' is not key=value (e.g. train.epochs=1)")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            raise ConfigError(f"{where}: the value of '{key}' is not valid YAML: {raw!r}") from None
    return out


def set_dotted(tree: dict, key: str, value: Any, where: str) -> None:
    """Set tree['a']['b'][0]['c'] for key 'a.b.0.c', refusing keys the config does not have."""
    parts = key.split(".")
    node: Any = tree
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        here = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"{where}: '{here}' is out of range: the list has {len(node)} entries (0..{len(node) - 1})")
            index: Any = int(part)
        elif isinstance(node, dict):
            if part not in node:
                raise ConfigError(f"{where}: unknown key '{here}'{did_you_mean(part, node)}")
            index = part
        else:
            raise ConfigError(f"{where}: '{'.'.join(parts[:depth])}' is a value, it has no key '{part}'")
        if last:
            node[index] = value
        else:
            node = node[index]


def get_dotted(tree: Any, key: str) -> Any:
    for part in key.split("."):
        tree = tree[int(part)] if isinstance(tree, list) else tree[part]
    return tree


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory; give a YAML file such as experiments/baseline.yaml")
    if not path.is_file():
        raise ConfigError(f"{path}: {missing(path)}; experiments live in experiments/*.yaml")
    try:
        # Bytes: YAML's reader decodes them (UTF-8, or UTF-16 by its BOM) and refuses a file that is not
        # text (a model given by mistake) as a YAMLError, where read_text() raised UnicodeDecodeError.
        content = yaml.safe_load(path.read_bytes())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        # The reader's error (a control character) has no `problem` and spans two lines: a message is one line.
        problem = " ".join(str(getattr(e, "problem", e)).split())
        raise ConfigError(f"{path}:{line} is not valid YAML ({problem})") from None
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level, got {type(content).__name__}")
    return content


def merge(base: dict, diff: dict) -> dict:
    """Deep-merge a YAML diff into a config dict; lists (conv_blocks, dense) are replaced whole."""
    out = copy.deepcopy(base)
    for key, value in diff.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def build_config(diff: dict, overrides: dict[str, Any] | None = None, where: str = "config",
                 override_where: str = "command line") -> Config:
    """Defaults + a YAML diff + dotted overrides -> a validated Config (ConfigError otherwise).

    An error names what gave the bad value: the override (`override_where: key=value`) when the
    key came from there, else the file (`where`)."""
    tree = merge(Config().model_dump(), diff)
    unknown = _unknown_keys(diff, Config().model_dump())
    if unknown:
        raise ConfigError(f"{where}: {unknown}")
    overrides = overrides or {}
    for key, value in overrides.items():
        set_dotted(tree, key, value, override_where)
    try:
        return Config.model_validate(tree)
    except ValidationError as e:
        loc, message = _describe(e)
        # The override that set this key (or a whole section or list above it) is the culprit.
        culprit = next((k for k in overrides if loc == k or loc.startswith(k + ".")), None)
        if culprit is not None:
            raise ConfigError(f"{override_where}: {culprit}={_show(overrides[culprit])}: {message}") from None
        raise ConfigError(f"{where}: unknown key '{loc}'" if message == "unknown key" else f"{where}: {loc}: {message}") from None


def _show(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def load_config(path: str | Path | None = None, overrides: list[str] | dict | None = None) -> Config:
    diff = read_yaml(path) if path else {}
    if isinstance(overrides, list):
        overrides = parse_overrides(overrides)
    return build_config(diff, overrides, where=str(path) if path else "config")


def _unknown_keys(diff: Any, known: Any, prefix: str = "") -> str | None:
    # pydantic would reject these too, but it cannot suggest the key that was meant.
    if not isinstance(diff, dict) or not isinstance(known, dict):
        return None
    for key, value in diff.items():
        here = f"{prefix}{key}"
        if key not in known:
            return f"unknown key '{here}'{did_you_mean(str(key), known)}"
        found = _unknown_keys(value, known[key], here + ".")
        if found:
            return found
    return None


def _describe(error: ValidationError) -> tuple[str, str]:
    """(dotted key, what is wrong with it) of the first error."""
    loc, msg, first = first_error(error)
    if first["type"] == "extra_forbidden":
        return loc, "unknown key"
    got = first.get("input")
    got = "" if isinstance(got, (dict, list)) or "got" in msg else f" (got {got!r})"
    # The model-level kernel check puts its own key in front of the message.
    if msg.startswith("conv_blocks."):
        loc, _, msg = f"{loc}.{msg}".partition(": ")
    more = f" (+{error.error_count() - 1} more)" if error.error_count() > 1 else ""
    return loc, f"{msg}{got}{more}"
