"""Search spaces: which config keys a sweep varies and how, read from experiments/*.yaml.

    base: baseline.yaml                 # the config the space is centred on (relative to this file)
    fixed: {data.train_size: 20000}     # the same for every trial
    objective: val_accuracy             # or [{metric: val_accuracy, direction: maximize}, {metric: param_count, direction: minimize}]
    sampler: tpe                        # tpe | random | qmc | grid | nsga2
    pruner: hyperband                   # none | median | sha | sha-pooled | hyperband, on training images seen, 8 reports per epoch
    budget: {timeout: 1800, plateau: 12}   # and/or n_trials: 20 (without either: 20 trials); plateau: stop when stalled
    confirm: {top: 2, seeds: 3, max_seeds: 5}   # retrain the best 2 and the baseline to 3 seeds (5 if time is left) before crowning
    params:
      model.conv_blocks.0.filters: {low: 16, high: 64, step: 16}
      train.learning_rate: {low: 1.0e-4, high: 3.0e-3, log: true}
      model.conv_blocks.0.kernel_size: {choices: [3, 5, 7]}

In the study's vocabulary: `params` are the scientific hyperparameters, `fixed` the fixed
ones. The two adapters at the bottom turn an Optuna trial or a KerasTuner `hp` into plain
values; everything else works with plain dicts and Config.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mnist_lab.config import Config, build_config, get_dotted, read_yaml, set_dotted
from mnist_lab.errors import ConfigError, did_you_mean, first_error

# What a trial can be judged by, and which way is better by default.
METRICS = {
    "val_accuracy": "maximize",
    "val_loss": "minimize",
    "param_count": "minimize",
    "latency_ms": "minimize",  # median single-image inference time
    "train_seconds": "minimize",
}
EPOCH_METRICS = ("val_accuracy", "val_loss")  # reported per epoch, so the pruner can use them


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class IntParam(_Strict):
    low: int
    high: int
    step: int = Field(1, gt=0)  # 0 would make Optuna fail every trial, not the space file
    log: bool = False

    @model_validator(mode="after")
    def _range(self):
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) > high ({self.high})")
        if self.log and (self.low <= 0 or self.step != 1):
            raise ValueError("log scale needs low > 0 and step 1")
        return self


class FloatParam(_Strict):
    low: float
    high: float
    step: float | None = Field(None, gt=0)
    log: bool = False

    @model_validator(mode="after")
    def _range(self):
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) > high ({self.high})")
        if self.log and (self.low <= 0 or self.step is not None):
            raise ValueError("log scale needs low > 0 and no step")
        return self


class ChoiceParam(_Strict):
    choices: list[Any] = Field(min_length=1)


class Objective(_Strict):
    metric: Literal["val_accuracy", "val_loss", "param_count", "latency_ms", "train_seconds"] = "val_accuracy"
    direction: Literal["maximize", "minimize"] | None = None

    @property
    def way(self) -> str:
        return self.direction or METRICS[self.metric]


class Budget(_Strict):
    # The study ends at whichever bound comes first. A time budget is what people plan with; a trial
    # count, when set, caps it. With neither, 20 trials.
    n_trials: int | None = Field(None, gt=0)  # finished (complete or pruned) trials; failed ones do not count
    # Seconds of the study's own time for search and confirmation, summed over every invocation (a
    # killed or interrupted sweep resumed goes on with what is left; mnist_lab/sweep/budget.py).
    timeout: float | None = Field(None, gt=0)
    # Failed trials (impossible configurations, diverging losses) are recorded and the search goes on;
    # this many in a row means the space itself is broken: the sweep stops and exits non-zero.
    # Trials lost to a killed or interrupted worker never count: they are retried.
    max_consecutive_failures: int = Field(5, ge=1)
    # A search that has stalled stops: once this many trials have completed after the best without
    # beating it (pruned ones do not count: many stop within seconds), the rest of the time budget goes
    # to the confirmation (up to `confirm.max_seeds` seeds each), where it still pays. A study stopped
    # so continues only with another value here.
    plateau: int | None = Field(None, gt=0)

    @model_validator(mode="before")
    @classmethod
    def some_bound(cls, data):
        if isinstance(data, dict) and data.get("n_trials") is None and data.get("timeout") is None:
            return {**data, "n_trials": 20}
        return data


class Confirm(_Strict):
    """After the search: retrain the top configurations and the baseline over seeds before crowning."""

    top: int = Field(2, ge=1)  # configurations confirmed besides the baseline
    seeds: int = Field(3, ge=2)  # training seeds each ends with; the trial's own run counts as the first
    # The search stops starting trials when the next one and the confirmation (estimated from the
    # trials' own durations) no longer fit in budget.timeout; at least this fraction stays free.
    reserve: float = Field(0.1, ge=0, lt=1)
    # Seeds each may get when the search leaves time (a plateau): as many as fit before the time
    # budget ends, its reserve kept, never fewer than `seeds`. None, or no time budget: `seeds`.
    max_seeds: int | None = Field(None, ge=2)
    # Nothing whose seed mean is under this is crowned, whatever it beats, and an uncrowned best under
    # it gets no test evaluation: on MNIST a network under 90% has failed, not won.
    min_val_accuracy: float = Field(0.9, ge=0, le=1)

    @model_validator(mode="after")
    def enough_seeds(self):
        if self.max_seeds is not None and self.max_seeds < self.seeds:
            raise ValueError(f"max_seeds ({self.max_seeds}) is under seeds ({self.seeds}): raise it, or leave it out")
        return self


class Space(_Strict):
    base: str | None = None
    fixed: dict[str, Any] = {}
    objective: list[Objective] = [Objective()]
    sampler: Literal["tpe", "random", "qmc", "grid", "nsga2"] = "tpe"
    pruner: Literal["none", "median", "sha", "sha-pooled", "hyperband"] = "median"
    tuner: Literal["random", "bayesian", "hyperband"] | None = None  # the KerasTuner algorithm (engine keras-tuner)
    budget: Budget = Budget()
    confirm: Confirm = Confirm()
    seed: int | None = Field(0, ge=0)  # the sampler's seed, so a study can be repeated (--seed overrides it)
    # Worker processes on this machine (--workers overrides it): `auto` is one per core (up to 4), each
    # with one TensorFlow thread. These small networks keep one thread busy far better than two: on 2
    # cores two 1-thread trainings ran 1.6x the images per second of one 2-thread training (bench i).
    workers: int | Literal["auto"] = 1
    params: dict[str, IntParam | FloatParam | ChoiceParam] = Field(min_length=1)

    @field_validator("workers", mode="before")
    @classmethod
    def _workers(cls, v):
        if v != "auto" and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise ValueError("must be auto or a number of processes, 1 or more")
        return v

    @field_validator("objective", mode="before")
    @classmethod
    def _objective(cls, v):
        # `objective: val_accuracy` and `objective: [val_accuracy, param_count]` read naturally.
        items = v if isinstance(v, list) else [v]
        return [{"metric": x} if isinstance(x, str) else x for x in items]

    @field_validator("params", mode="before")
    @classmethod
    def _params(cls, v):
        if v is not None and not isinstance(v, dict):  # a list or a value: .items() below would be a traceback
            raise ValueError(f"expected dotted keys, each with {{low, high}} or {{choices}}, got {type(v).__name__}")
        out = {}
        for key, spec in (v or {}).items():
            if not isinstance(spec, dict):
                raise ValueError(f"{key}: expected {{low, high}} or {{choices}}, got {spec!r}")
            if "choices" in spec:
                kind = ChoiceParam
            elif isinstance(spec.get("low"), int) and isinstance(spec.get("high"), int) and not isinstance(spec.get("step"), float):
                kind = IntParam
            else:
                kind = FloatParam
            try:
                out[key] = kind.model_validate(spec)
            except ValidationError as e:
                # Validated here, one key at a time, so the message can say which key is wrong.
                field, what, first = first_error(e)
                if first["type"] == "extra_forbidden":
                    allowed = ", ".join(kind.model_fields)
                    raise ValueError(f"{key}: unknown key '{field}' (allowed: {allowed})") from None
                raise ValueError(f"{key}: {field + ': ' if field else ''}{what}") from None
        return out

    @property
    def multi_objective(self) -> bool:
        return len(self.objective) > 1


class LoadedSpace:
    """A validated space with its base config resolved: what the sweep engines need."""

    def __init__(self, path: Path, space: Space, base_diff: dict, text: str):
        self.path, self.space, self.base_diff, self.text = path, space, base_diff, text

    def config_for(self, values: dict[str, Any], overrides: dict[str, Any] | None = None) -> Config:
        """Base + fixed + command-line overrides + the trial's values -> Config (ConfigError if impossible).

        The sweep checks the overrides alone first (`values={}`), so an error there is blamed on the
        command line; with values, on the trial."""
        return build_config(self.base_diff, {**self.space.fixed, **(overrides or {}), **values}, where=str(self.path),
                            override_where=f"{self.path} trial" if values else "command line")

    def max_epochs(self, base: Config) -> int:
        """The most epochs a trial can train: the searched range's top, else the base config's."""
        p = self.space.params.get("train.epochs")
        if p is None:
            return base.train.epochs
        return int(max(p.choices) if isinstance(p, ChoiceParam) else p.high)

    def baseline_values(self) -> dict[str, Any]:
        """The base config's value of each searched key, when it lies inside the space."""
        tree = build_config(self.base_diff, self.space.fixed).model_dump()
        out = {}
        for key, spec in self.space.params.items():
            value = get_dotted(tree, key)
            if isinstance(spec, ChoiceParam):
                if value not in spec.choices:
                    return {}
            elif not spec.low <= value <= spec.high:
                return {}
            out[key] = value
        return out


def load_space(path: str | Path, n_trials: int | None = None, timeout: float | None = None,
               seed: int | None = None) -> LoadedSpace:
    path = Path(path)
    raw = read_yaml(path)
    try:
        space = Space.model_validate(raw)
    except ValidationError as e:
        # No union member's name reaches the location: _params validates each param itself.
        loc, what, first = first_error(e)
        if first["type"] == "extra_forbidden":
            sections = (Space,) if len(first["loc"]) == 1 else (IntParam, FloatParam, ChoiceParam, Objective, Budget, Confirm)
            known = list(dict.fromkeys(key for section in sections for key in section.model_fields))
            raise ConfigError(f"{path}: unknown key '{loc}'{did_you_mean(str(first['loc'][-1]), known)}") from None
        raise ConfigError(f"{path}: {loc}: {what}") from None
    base_diff = read_yaml(path.parent / space.base) if space.base else {}
    defaults = build_config(base_diff, where=str(path.parent / space.base) if space.base else str(path)).model_dump()
    for section, keys in (("fixed", space.fixed), ("params", space.params)):
        for key in keys:
            try:
                set_dotted(copy.deepcopy(defaults), key, None, where=section)
            except ConfigError as e:
                raise ConfigError(f"{path}: {e}") from None
    try:
        build_config(base_diff, space.fixed, where=str(path))
    except ConfigError as e:
        raise ConfigError(f"{path}: fixed: {str(e).split(': ', 1)[1]}") from None
    if space.sampler == "grid" and any(not isinstance(p, ChoiceParam) for p in space.params.values()):
        raise ConfigError(f"{path}: sampler grid needs every param as {{choices: [...]}}")
    if space.sampler == "nsga2" and not space.multi_objective:
        raise ConfigError(f"{path}: sampler nsga2 is for several objectives; list two or more under objective")
    if space.multi_objective and space.pruner != "none":
        raise ConfigError(f"{path}: pruner: Optuna cannot prune multi-objective studies; use pruner: none")
    if n_trials is not None or timeout is not None:
        # Validated like the file's own budget (model_copy would not): --timeout 0 or -5 is an error.
        update = {k: v for k, v in {"n_trials": n_trials, "timeout": timeout}.items() if v is not None}
        try:
            budget = Budget.model_validate(space.budget.model_dump() | update)
        except ValidationError as e:
            loc, what, first = first_error(e)
            raise ConfigError(f"--{loc.replace('_', '-')} {first['input']}: {what.lower()}") from None
        space = space.model_copy(update={"budget": budget})
    if seed is not None:
        if seed < 0:
            raise ConfigError(f"--seed {seed}: must be 0 or more")
        space = space.model_copy(update={"seed": seed})
    return LoadedSpace(path, space, base_diff, path.read_text())


# --- adapters: the only places that see Optuna's trial or KerasTuner's hp -------------------


def distributions(space: Space) -> dict[str, Any]:
    """Each searched key as an Optuna distribution: the one mapping from the space file's ranges,
    which both engines' adapters and the report's importance analysis read."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out = {}
    for key, p in space.params.items():
        if isinstance(p, ChoiceParam):
            out[key] = CategoricalDistribution(p.choices)
        elif isinstance(p, IntParam):
            out[key] = IntDistribution(p.low, p.high, step=p.step, log=p.log)
        else:
            out[key] = FloatDistribution(p.low, p.high, step=p.step, log=p.log)
    return out


def suggest_optuna(trial, space: Space) -> dict[str, Any]:
    from optuna.distributions import CategoricalDistribution, IntDistribution

    values = {}
    for key, d in distributions(space).items():
        if isinstance(d, CategoricalDistribution):
            values[key] = trial.suggest_categorical(key, d.choices)
        else:
            suggest = trial.suggest_int if isinstance(d, IntDistribution) else trial.suggest_float
            values[key] = suggest(key, d.low, d.high, step=d.step, log=d.log)
    return values


def declare_keras_tuner(hp, space: Space) -> None:
    from optuna.distributions import CategoricalDistribution, IntDistribution

    for key, d in distributions(space).items():
        if isinstance(d, CategoricalDistribution):
            hp.Choice(key, list(d.choices))
        else:
            declare = hp.Int if isinstance(d, IntDistribution) else hp.Float
            declare(key, d.low, d.high, step=d.step, sampling="log" if d.log else "linear")
