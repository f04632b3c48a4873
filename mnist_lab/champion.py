"""The champion: a configuration retrained over seeds, judged against the baseline and the current
champion, and registered as `mnist-cnn@champion` only when it beats both.

    mnist-lab confirm --study sweep-optuna --top 3 --seeds 3      # or: make confirm

After a search, both sweep engines call `confirm_and_crown`: the top configurations, the baseline
and the current champion are retrained (`train_one_seed`, the one seed-retraining path) until each
has N seeds on the same validation images, and the best is crowned only if its seed mean beats
every incumbent's with p < ALPHA (Welch's one-sided test, mnist_lab/stats.py). `confirm_top` (the
`confirm` command) adds seeds to a finished study's top configurations the same way. The test set
is touched once per configuration at most (`evaluate_once`), never to choose.
"""

from __future__ import annotations

import contextlib
import io
import time
from dataclasses import dataclass, field
from typing import Any

from mnist_lab import parallel, tracking
from mnist_lab.config import Config
from mnist_lab.errors import MnistLabError
from mnist_lab.stats import ALPHA, BASELINE, CHAMPION, welch_greater

# The data settings that decide which images are validation images: runs that differ in any of
# these (or in the MNIST content digest) were scored on different images and are not compared.
SPLIT_KEYS = ("data.validation_size", "data.seed")


def confirm_run_name(label: str, seed: int) -> str:
    """`trial 3 seed 2 · confirm`, `baseline seed 1 · confirm`, `champion v4 seed 1 · confirm`: a
    confirmation seed (what it retrains first, as MLflow's run list cuts long names short)."""
    short = f"champion v{label.split('version ')[1].rstrip(')')}" if label.startswith(CHAMPION) and "version " in label else label  # pragma: no mutate (rstrip of ')' or of 'XX)XX': a version number holds no X)
    return f"{short} seed {seed} · confirm"


@dataclass
class Contender:
    """A configuration with its validation accuracy per training seed, and where it was measured."""

    label: str  # "trial 7", "baseline", "current champion (version 3)"
    rank: int  # 1 = the study's best trial; incumbents come after the candidates
    source_run_id: str  # the run whose config.yaml (and, for a trial, model) this is
    config: Config
    split: tuple  # (data digest, *SPLIT_KEYS values): which validation images the scores are on
    scores: dict[int, float] = field(default_factory=dict)  # train.seed -> val_accuracy

    @property
    def values(self) -> list[float]:
        return [self.scores[s] for s in sorted(self.scores)]

    @property
    def mean(self) -> float:
        return sum(self.values) / len(self.values)


@dataclass
class Verdict:
    promoted: bool
    reason: str  # one line for the console, the parent run and the report
    best: Contender | None = None
    contenders: list[Contender] = field(default_factory=list)
    p_values: dict[str, float] = field(default_factory=dict)  # incumbent label -> p
    model_version: str | None = None
    deferred: bool = False  # another worker of the study confirms: this one has no verdict to act on


def contender(run, label: str, rank: int) -> Contender:
    config = tracking.run_config(run.info.run_id)
    split = (run.data.tags.get("data_digest"), *(run.data.params.get(k) for k in SPLIT_KEYS))
    scores = {config.train.seed: run.data.metrics["val_accuracy"]} if made_here(run, config) else {}
    return Contender(label, rank, run.info.run_id, config, split, scores)


def made_here(run, config: Config) -> bool:
    """Was this score made in the precision and on the CPU this machine trains `config` in? bfloat16
    and float32, or two CPUs, score a configuration a little differently: a champion crowned on
    another machine is retrained here, seed for seed, before it is compared."""
    from mnist_lab.provenance import cpu_model
    from mnist_lab.train import resolve_precision

    return (run.data.params.get("precision"), run.data.tags.get("cpu_model")) == (resolve_precision(config).precision, cpu_model())


def baseline_contender(config: Config, source_run_id: str, rank: int, data_dir: str | None) -> Contender:
    """The baseline of a space that does not contain it (so no trial ran it): confirmed from its config,
    seed 0 first, its runs filed under the study's own run."""
    from mnist_lab import data

    flat = config.flat()  # MLflow holds params as text: the split compares as the runs' params do
    split = (data.load_split(config.data, data_dir).digest, *(str(flat[k]) for k in SPLIT_KEYS))
    return Contender(BASELINE, rank, source_run_id, config, split)


def add_confirmation_runs(client, experiment_id: str, contenders: list[Contender]) -> None:
    """Fill in seeds already trained for these configurations (by this study or `make confirm`)."""
    ids = {c.source_run_id: c for c in contenders}
    for run in client.search_runs([experiment_id], "tags.`mnist_lab.kind` = 'confirm' and attributes.status = 'FINISHED'"):
        c = ids.get(run.data.tags.get("source_run_id"))
        if c is not None and "val_accuracy" in run.data.metrics and made_here(run, c.config):
            c.scores.setdefault(int(run.data.tags["seed"]), run.data.metrics["val_accuracy"])


def confirmation_run(c: Contender, study_name: str, training: set[int] = frozenset()) -> tuple[int, Config, str, dict[str, str]]:
    """Pure: the next confirmation seed of `c` (the lowest it has no score for and is not `training`), its
    config, run name and tags (what the report and the next confirmation read back)."""
    seed = 0
    while seed in c.scores or seed in training:
        seed += 1
    seeded = c.config.model_copy(update={"train": c.config.train.model_copy(update={"seed": seed})})
    tags = {"mnist_lab.kind": "confirm", "study": study_name, "source_run_id": c.source_run_id,
            "source_label": c.label, "config_rank": str(c.rank), "seed": str(seed), "state": "CONFIRM",
            "worker": tracking.worker_id(),
            "source_trial": c.label.removeprefix("trial ")}
    return seed, seeded, confirm_run_name(c.label, seed), tags


def train_one_seed(c: Contender, parent_run_id: str, study_name: str, data_dir: str | None, on_result=None) -> None:
    """Retrain `c` once more (`confirmation_run`): the one path that retrains a configuration over
    seeds, for the sweep's confirmation and `mnist-lab confirm`. Validation only; the test set is
    the study's one final evaluation (`evaluate_once`)."""
    from mnist_lab.train import train

    seed, seeded, name, tags = confirmation_run(c, study_name)
    result = train(seeded, data_dir=data_dir, parent_run_id=parent_run_id, log_model=False, progress=False,
                   run_name=name, tags=tags)
    c.scores[seed] = result.val_accuracy
    if on_result:
        on_result(c, seed, result.val_accuracy)


def train_round_robin(contenders: list[Contender], seeds: int, parent_run_id: str, study_name: str,
                      data_dir: str | None, deadline: float | None, on_result=None, workers: int = 1) -> None:
    """One more seed for each in turn, fewest seeds first: if the deadline cuts the confirmation
    short, every configuration has as many seeds as the time allowed (a verdict needs 2 each),
    rather than the first ones 3 and the baseline 1. `workers` > 1: that many at once (mnist_lab/parallel.py)."""
    if workers > 1:
        return parallel.round_robin(contenders, seeds, lambda c, training: confirmation_run(c, study_name, training),
                                    parent_run_id, data_dir, deadline, on_result, workers)
    while True:
        short = [c for c in contenders if len(c.scores) < seeds]
        if not short or (deadline is not None and time.time() > deadline):  # pragma: no mutate (> or >= at the same microsecond)
            return
        train_one_seed(min(short, key=lambda c: len(c.scores)), parent_run_id, study_name, data_dir, on_result)


def current_champion(client):
    from mlflow.exceptions import MlflowException

    try:
        version = client.get_model_version_by_alias(tracking.MODEL_NAME, tracking.CHAMPION_ALIAS)
    except MlflowException:
        return None, None
    return version, (client.get_run(version.run_id) if version.run_id else None)


def judge(best: Contender, incumbents: list[Contender], floor: float = 0.0) -> tuple[bool, str, dict[str, float]]:
    """Pure: is `best` over the floor, and does it beat every incumbent on the same validation images
    with p < ALPHA? With no incumbent at all there is nothing it was shown to beat: no crown."""
    p_values: dict[str, float] = {}
    if best.mean < floor:
        return False, (f"no confirmed improvement: {best.label} ({best.mean:.4f} over {len(best.scores)} seeds) is under the "
                       f"floor confirm.min_val_accuracy = {floor:g}; nothing that scores so is crowned"), p_values
    if not incumbents:
        return False, (f"no confirmed improvement: {best.label} was compared with nothing (no baseline, no champion on "
                       "these validation images); a champion must beat one"), p_values
    for other in incumbents:
        if other.split != best.split:
            return False, (f"no confirmed improvement: {other.label} was scored on other validation images "
                           f"(data digest, validation_size, data.seed {other.split} against {best.split}); "
                           "retrain it on this split, or remove its alias, to crown anew"), p_values
        if len(best.scores) < 2 or len(other.scores) < 2:
            return False, (f"no confirmed improvement: {best.label} has {len(best.scores)} and {other.label} "
                           f"{len(other.scores)} seeds; confirmation needs at least 2 each (the time budget ran out)"), p_values
        p_values[other.label] = welch_greater(best.values, other.values)
    failed = [label for label, p in p_values.items() if p >= ALPHA]  # pragma: no mutate (>= or >: a p-value of exactly 0.05 does not occur)
    summary = ", ".join(f"{label}: p = {p:.3g}" for label, p in p_values.items())
    if failed:
        return False, f"no confirmed improvement: {best.label} ({best.mean:.4f}) does not beat {' and '.join(failed)} with p < {ALPHA} ({summary})", p_values
    return True, f"{best.label} beats {' and '.join(p_values)} ({best.mean:.4f} over {len(best.scores)} seeds; {summary})", p_values


LOCK_TAG = "confirmation_by"  # on the parent run: which worker is confirming, and since when
LOCK_SETTLE_SECONDS = 2.0  # how long claims may race before the last one written wins
LOCK_STALE_SECONDS = 6 * 3600  # a claim this old is a worker that died mid-confirmation


def claim_confirmation(client, parent_run_id: str) -> bool:
    """Only one of a study's workers (machines) runs its confirmation: the last claim written wins.

    MLflow tags are last-writer-wins; every claimant writes, waits for the others' writes to land,
    and reads back. A finished confirmation clears the claim; a stale one is taken over.
    """
    held = client.get_run(parent_run_id).data.tags.get(LOCK_TAG)
    holder, _, since = (held or "").rpartition("@")  # pragma: no mutate (host:pid@time has one @; with no claim `held` is falsy below)
    if held and time.time() - float(since) < LOCK_STALE_SECONDS and not tracking.worker_is_dead(holder):  # pragma: no mutate (< or <= at the same second)
        return False
    me = f"{tracking.worker_id()}@{time.time():.0f}"
    client.set_tag(parent_run_id, LOCK_TAG, me)
    time.sleep(LOCK_SETTLE_SECONDS)
    return client.get_run(parent_run_id).data.tags.get(LOCK_TAG) == me


def confirm_and_crown(study_name: str, parent_run_id: str, ranked_run_ids: list[str], baseline: str | Config,
                      top: int, seeds: int, data_dir: str | None = None, deadline: float | None = None,
                      on_result=None, floor: float = 0.0, workers: int = 1) -> Verdict:
    """Retrain the top `top` trials, the baseline and the current champion to `seeds` seeds; crown if
    confirmed. `baseline`: the baseline trial's run id, or, when the space does not contain the
    baseline, its config (confirmed all the same: a winner is always judged against it)."""
    from mlflow import MlflowClient

    client = MlflowClient()
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    if not ranked_run_ids:
        return Verdict(False, "no confirmed improvement: no trial completed")
    if not claim_confirmation(client, parent_run_id):
        return Verdict(False, "another worker of this study is running its confirmation; its verdict goes on the study's run",
                       deferred=True)
    try:
        return _confirm_and_crown(client, experiment_id, study_name, parent_run_id, ranked_run_ids, baseline,
                                  top, seeds, data_dir, deadline, on_result, floor, workers)
    finally:
        client.delete_tag(parent_run_id, LOCK_TAG)


def _confirm_and_crown(client, experiment_id, study_name, parent_run_id, ranked_run_ids, baseline, top, seeds,
                       data_dir, deadline, on_result, floor, workers) -> Verdict:
    baseline_run_id = baseline if isinstance(baseline, str) else None
    runs = [client.get_run(r) for r in [r for r in ranked_run_ids if r != baseline_run_id][:top]]
    candidates = [contender(run, f"trial {run.data.tags.get('trial_number')}", rank) for rank, run in enumerate(runs, 1)]
    incumbents: list[Contender] = []
    if baseline_run_id:
        incumbents.append(contender(client.get_run(baseline_run_id), BASELINE, len(candidates) + 1))
    elif baseline is not None:
        incumbents.append(baseline_contender(baseline, parent_run_id, len(candidates) + 1, data_dir))
    version, champion_run = current_champion(client)
    reigning = champion_run is not None and champion_run.info.run_id in {c.source_run_id for c in candidates}
    if champion_run is not None and not reigning and champion_run.info.run_id != baseline_run_id:
        incumbents.append(contender(champion_run, f"{CHAMPION} (version {version.version})", len(candidates) + 2))
    everyone = candidates + incumbents
    add_confirmation_runs(client, experiment_id, everyone)
    if not candidates:
        return Verdict(False, "no confirmed improvement: the baseline is the best trial", None, everyone)
    # A champion from other validation images is not retrained: it cannot be compared anyway.
    comparable = [c for c in everyone if c.split == candidates[0].split]
    train_round_robin(comparable, seeds, parent_run_id, study_name, data_dir, deadline, on_result, workers)
    best = max(candidates, key=lambda c: c.mean)
    if reigning and best.source_run_id == champion_run.info.run_id:
        # A finished study run again: its answer is already the champion; no second version.
        reason = f"{best.label} is already mnist-cnn@champion (version {version.version})"
        client.set_tag(parent_run_id, "confirmation", reason)
        return Verdict(False, reason, best, everyone, model_version=str(version.version))
    promoted, reason, p_values = judge(best, incumbents, floor)
    verdict = Verdict(promoted, reason, best, everyone, p_values)
    client.set_tag(parent_run_id, "confirmation", reason[:5000])  # pragma: no mutate (MLflow's tag limit: [:5000] or [:5001] of a one-line reason)
    if promoted:
        verdict.model_version = register_champion(client, study_name, best, verdict)
    return verdict


def register_champion(client, study_name: str, best: Contender, verdict: Verdict) -> str:
    """A new version of mnist-cnn, aliased @champion: the alias is the one record of who is champion
    (no champion tags on runs to go stale); the version says where it came from and why."""
    import mlflow

    run = client.get_run(best.source_run_id)
    seeds = ", ".join(f"{v:.4f}" for v in best.values)
    tags = {"study": study_name, "trial": best.label.removeprefix("trial "), "source_run_id": best.source_run_id,
            "data_digest": best.split[0] or "", "validation_size": str(best.split[1]), "data.seed": str(best.split[2]),
            "val_accuracy_seed_mean": f"{best.mean:.4f}", "val_accuracy_seeds": seeds,
            **{f"p_vs_{label.split(' (')[0].replace(' ', '_')}": f"{p:.3g}" for label, p in verdict.p_values.items()}}
    # MLflow prints "Successfully registered model ..." / "Created version ..." on stderr; the
    # sweep's own "crowned: registered as mnist-cnn@champion version N" says it once. Errors still raise.
    with contextlib.redirect_stderr(io.StringIO()):
        registered = mlflow.register_model(tracking.model_uri(best.source_run_id), tracking.MODEL_NAME, tags=tags)
    client.update_model_version(
        tracking.MODEL_NAME, registered.version,
        description=(f"{best.label} of study {study_name} (run {best.source_run_id}, "
                     f"{run.data.params.get('param_count', '?')} parameters): validation accuracy {best.mean:.4f} "
                     f"mean over {len(best.values)} training seeds ({seeds}). {verdict.reason}."),
    )
    if not client.get_registered_model(tracking.MODEL_NAME).description:
        client.update_registered_model(tracking.MODEL_NAME, description=(
            "MNIST digit classifiers crowned by mnist-lab sweeps. The @champion alias is the one confirmed over "
            "training seeds against the baseline and the previous champion; `mnist-lab predict` uses it."))
    client.set_registered_model_alias(tracking.MODEL_NAME, tracking.CHAMPION_ALIAS, registered.version)
    return str(registered.version)  # an int in MLflow 3; the verdict holds it as text


def evaluate_once(run_id: str, data_dir: str | None = None) -> dict[str, Any]:
    """The one test-set evaluation of a configuration, on its run's model; reused if already done."""
    import mlflow.keras
    from mlflow import MlflowClient

    from mnist_lab.train import evaluate_test_set

    run = MlflowClient().get_run(run_id)
    if "test_accuracy" in run.data.metrics:  # e.g. a finished study run again
        return {"run_id": run_id, "test_accuracy": run.data.metrics["test_accuracy"]}
    accuracy, _ = evaluate_test_set(mlflow.keras.load_model(tracking.model_uri(run_id)), run_id, data_dir)
    return {"run_id": run_id, "test_accuracy": accuracy}


def evaluate_answer(verdict: Verdict, best_run_id: str, floor: float, data_dir: str | None = None) -> dict[str, Any] | None:
    """The study's one test-set evaluation: of the champion if one was crowned, else of the search's
    best run if it scored at least the floor (the test set is not spent on a failed-looking model);
    none while another worker of the study is still confirming."""
    from mlflow import MlflowClient

    if verdict.deferred:
        return None
    if verdict.promoted:
        return evaluate_once(verdict.best.source_run_id, data_dir)
    if MlflowClient().get_run(best_run_id).data.metrics.get("val_accuracy", 0.0) < floor:
        return None
    return evaluate_once(best_run_id, data_dir)


def ranked_trial_runs(client, parent_run, metric: str, maximize: bool) -> list:
    """A study's complete trial runs, best first by `metric` (MLflow's view: what every engine logs)."""
    return client.search_runs(
        [parent_run.info.experiment_id],
        f"tags.study = '{parent_run.data.tags['study']}' and tags.`mnist_lab.kind` = 'trial' and tags.state = 'COMPLETE' "
        f"and tags.`mlflow.parentRunId` = '{parent_run.info.run_id}'",
        # pragma below: MLflow reads DESC/desc alike; 10,000 (its most per page) or more, or its default 1,000, differ only past 1,000 trials
        order_by=[f"metrics.{metric} {'DESC' if maximize else 'ASC'}"], max_results=10_000,  # pragma: no mutate
    )


def confirm_top(experiment_id: str, study_name: str | None, top: int, seeds: int, data_dir: str | None = None,
                on_result=None) -> list[Contender]:
    """`mnist-lab confirm`: the study's top `top` configurations retrained until each has `seeds`
    seeds (the trial's own run is the first), then each evaluated once on the test set."""
    from mlflow import MlflowClient

    client = MlflowClient()
    parent = tracking.study_run(client, experiment_id, study_name or tracking.latest_study(client, experiment_id))
    name, objective = parent.data.tags["study"], parent.data.tags.get("objective", "maximize val_accuracy").split(", ")[0]
    way, metric = objective.split(" ", 1)  # pragma: no mutate (split or rsplit, on ' ' or any space: 'maximize val_accuracy' has one)
    ranked = ranked_trial_runs(client, parent, metric, way == "maximize")[:top]
    if not ranked:
        raise MnistLabError(f"study {name}: no complete trial to confirm")
    contenders = [contender(run, f"trial {run.data.tags.get('trial_number')}", rank) for rank, run in enumerate(ranked, 1)]
    add_confirmation_runs(client, experiment_id, contenders)
    train_round_robin(contenders, seeds, parent.info.run_id, name, data_dir, None, on_result)
    for c in contenders:
        evaluate_once(c.source_run_id, data_dir)
    return contenders
