"""``python -m nnexp.run``: one Hydra-composed, MLflow-tracked training run (or a multirun).

    python -m nnexp.run dataset=digits             # offline, seconds
    python -m nnexp.run -m eta=0.025,0.25,2.5      # a sweep: one parent run, three children
    python -m nnexp.run +experiment=overfitting    # a book experiment
    python -m nnexp.run tracking=off               # no MLflow
"""

from __future__ import annotations

import functools
import io
import os
import logging
import signal
import sys
import threading
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable, Sequence

import hydra
import numpy as np
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from nnexp import data as datasets
from nnexp import tracking
from nnexp.config import GROUPS, RunConfig, field_names, nested_fields, suggest, to_run_config
from nnexp.engine import init_network, save_network
from nnexp.engine.network import evaluate
from nnexp.errors import ConfigError, NnexpError
from nnexp.train import (EarlyStopping, HalveOnPlateau, Constant, History, Monitor, Observer,
                         Record, Streams, TrainSpec, fit)

log = logging.getLogger("nnexp.run")

STATUS_TO_MLFLOW = {"completed": "FINISHED", "diverged": "FINISHED", "early_stopped": "FINISHED",
                    "pruned": "FINISHED"}


class Terminated(BaseException):
    """SIGTERM received: ends the run like Ctrl-C, recorded as KILLED."""


@dataclass
class RunResult:
    status: str  # completed | diverged | early_stopped | pruned | failed | killed
    history: History | None = None
    run_id: str | None = None
    test_accuracy: float | None = None
    summary: str = ""
    tracking_seconds: float = 0.0
    extra: dict = field(default_factory=dict)


# -- building the pieces ------------------------------------------------------------------
@functools.lru_cache(maxsize=2)
def _load_cached(name: str, data_dir: str | None, dtype: str, download: bool, progress: bool,
                 env_dir: str | None):
    """Datasets are read once per process (a study's trials reuse them); never mutated."""
    return datasets.load(name, data_dir, dtype=np.dtype(dtype), download=download, progress=progress)


def load_splits(c: RunConfig, progress: bool = False):
    """The dataset with the config's subsets applied (first n, classes, expansion)."""
    splits = _load_cached(c.dataset.name, c.dataset.data_dir, c.dtype, c.dataset.download, progress,
                          os.environ.get("NNEXP_DATA_DIR"))
    train, val, test = splits.train, splits.validation, splits.test
    if c.dataset.classes:
        keep = list(c.dataset.classes)
        train, val, test = (datasets.only_classes(s, keep) for s in (train, val, test))
    if c.dataset.train_size is not None:
        train = datasets.first_n(train, c.dataset.train_size)
    if c.dataset.expanded:
        train = datasets.expand(train)
    if c.mini_batch_size > len(train):
        raise ConfigError(f"mini_batch_size {c.mini_batch_size} is larger than the training set "
                          f"({len(train)} images)")
    return splits, train, val, test


def train_spec(c: RunConfig) -> TrainSpec:
    schedule = (HalveOnPlateau(c.schedule.patience, c.schedule.min_factor)
                if c.schedule.name == "halve_on_plateau" else Constant())
    stopping = (EarlyStopping(c.early_stopping.patience, c.early_stopping.restore_best)
                if c.early_stopping.name != "off" else None)
    monitor = Monitor(tuple(c.monitor.metrics), c.monitor.every_images, c.monitor.validation_sample)
    return TrainSpec(epochs=c.total_epochs, mini_batch_size=c.mini_batch_size, eta=c.eta,
                     lmbda=c.lmbda, penalty=c.regularization.penalty,
                     dropout=c.regularization.dropout, momentum=c.momentum, schedule=schedule,
                     early_stopping=stopping, monitor=monitor)


def test_accuracy_of(history: History, net, test, monitored: bool) -> float | None:
    """Test accuracy at the best-validation evaluation if tracked, else measured once now."""
    if history.outcome == "diverged":
        return None
    if monitored and history.records:
        best = history.best_epoch
        rec = next((r for r in history.records if r.epoch == best), history.records[-1])
        return rec.test_accuracy
    return evaluate(net, test.x, test.y)[1]


class Interrupts:
    """SIGTERM -> ``Terminated`` and Ctrl-C -> ``KeyboardInterrupt`` in the main thread, so an
    interrupted run ends recorded as KILLED.

    Inside ``deferred()`` (the store writes) an interruption waits until the write is done,
    so it never cuts a database transaction in half. Only the first interruption raises: a
    second one while the run is being recorded is ignored."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.depth = 0
        self.pending: int | None = None
        self.raised = False
        self.previous: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self._handler) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        return False

    def _raise(self, signum: int):
        self.raised = True
        raise KeyboardInterrupt() if signum == signal.SIGINT else Terminated()

    def _handler(self, signum, frame):
        if self.raised:
            log.warning("interrupted again: still recording the interrupted run")
        elif self.depth:
            self.pending = signum
        else:
            self._raise(signum)

    @contextmanager
    def deferred(self):
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
            if not self.depth and self.pending is not None and not self.raised:
                self._raise(self.pending)

    def guard(self, observer: Observer) -> Observer:
        """The observer with its store writes deferred-interruptible."""
        def guarded(record, net=None):
            with self.deferred():
                return observer(record, net)
        return guarded


class ProgressBar:
    """Per-evaluation tqdm bar: epoch, current eta, validation accuracy."""

    def __init__(self, total_epochs: int, enabled: bool):
        from tqdm import tqdm

        self.bar = tqdm(total=total_epochs, unit="epoch", disable=not enabled, leave=False,
                        file=sys.stderr)

    def __call__(self, record: Record, net=None):
        self.bar.n = record.epoch
        post = {"eta": f"{record.eta:.4g}"}
        if record.validation_accuracy is not None:
            post["val_acc"] = f"{record.validation_accuracy:.4f}"
        self.bar.set_postfix(post, refresh=True)
        return None

    def logging(self):
        """Route log lines through tqdm while the bar is shown, so they don't break it."""
        from contextlib import nullcontext

        from tqdm.contrib.logging import logging_redirect_tqdm

        return nullcontext() if self.bar.disable else logging_redirect_tqdm()

    def close(self):
        self.bar.close()


def _summary_line(c: RunConfig, result: RunResult, where: str) -> str:
    h = result.history
    parts = [result.status]
    if h and h.best_validation_accuracy is not None:
        parts.append(f"best validation accuracy {h.best_validation_accuracy:.4f} at epoch {h.best_epoch:g}")
    if result.test_accuracy is not None:
        parts.append(f"test accuracy {result.test_accuracy:.4f}")
    if h and h.reason and result.status != "completed":
        parts.append(h.reason)
    parts.append(where)
    return " | ".join(parts)


# -- one run ----------------------------------------------------------------------------------
def new_tracker(c: RunConfig, *, experiment: str | None = None, sweep_id: str | None = None,
                parent_run_id: str | None = None, tags: dict[str, str] | None = None,
                run_name: str | None = None):
    """The run's MLflow tracker, not yet started (None if tracking is off)."""
    if not c.tracking.enabled:
        return None
    from nnexp.config import config_hash, flat_params

    all_tags = {"nnexp.experiment": experiment or "none", "nnexp.status": "running",
                "nnexp.config_hash": config_hash(c), **(tags or {})}
    if sweep_id:
        all_tags["nnexp.sweep"] = sweep_id
    return tracking.RunTracker(
        uri=tracking.resolve_uri(c.tracking.uri), experiment=c.tracking.experiment,
        run_name=run_name or _run_name(c, experiment), params=flat_params(c), tags=all_tags,
        parent_run_id=parent_run_id, step_by_images=c.monitor.every_images is not None)


def open_tracking(tracker, splits, on_start: Callable[[str], None] | None = None) -> None:
    """Create the run's record before training: params, tags, dataset input."""
    if tracker is None:
        return
    tracker.start()
    tracker.log_dataset(splits)
    if on_start:
        on_start(tracker.run_id)


def record_interruption(tracker, exc: BaseException, artifacts: dict) -> None:
    """Ctrl-C / SIGTERM -> KILLED, anything else -> FAILED; the metrics so far are kept."""
    if tracker is None or tracker.run_id is None:  # interrupted before its record existed
        return
    if isinstance(exc, (KeyboardInterrupt, Terminated)):
        tracker.fail("killed", "KILLED", error="interrupted (Ctrl-C or SIGTERM)", artifacts=dict(artifacts))
    else:
        tracker.fail("failed", "FAILED", error=f"{type(exc).__name__}: {exc}",
                     artifacts={**artifacts, "traceback.txt": traceback.format_exc()})


def finish_run(c: RunConfig, tracker, history: History, net, test, artifacts: dict) -> RunResult:
    """After training: test accuracy, summary metrics, artifacts, status, the summary line."""
    result = RunResult(history.outcome, history, tracker.run_id if tracker else None)
    result.test_accuracy = test_accuracy_of(history, net, test, "test_accuracy" in c.monitor.metrics)
    if tracker:
        summary = {"best_validation_accuracy": history.best_validation_accuracy,
                   "best_epoch": history.best_epoch, "final_test_accuracy": result.test_accuracy,
                   "train_seconds": history.train_seconds}
        artifacts = {**artifacts, "history.csv": history.to_csv()}
        if c.tracking.log_model and history.outcome != "diverged":
            buf = io.BytesIO()
            save_network(net, buf)
            artifacts["model.npz"] = buf.getvalue()
        tracker.finish(history.outcome, summary=summary, artifacts=artifacts,
                       mlflow_status=STATUS_TO_MLFLOW[history.outcome],
                       error=history.reason if history.outcome == "diverged" else None)
        result.tracking_seconds = tracker.seconds_in_tracking
    where = tracker.location if tracker else "not tracked (tracking=off)"
    result.summary = _summary_line(c, result, where)
    return result


def build_network(c: RunConfig, streams: Streams):
    dtype = np.float32 if c.dtype == "float32" else np.float64
    return init_network(c.sizes, streams.init, init=c.init.name, hidden=c.hidden, cost=c.cost.name, dtype=dtype)


def execute(c: RunConfig, *, resolved_yaml: str = "", experiment: str | None = None,
            sweep_id: str | None = None, parent_run_id: str | None = None,
            tags: dict[str, str] | None = None, observers: Sequence[Observer] = (),
            progress: bool = False, run_name: str | None = None,
            on_start: Callable[[str], None] | None = None) -> RunResult:
    """Load data, build the network, train, and track everything. Raises NnexpError for
    bad data or config (before any run is created); KeyboardInterrupt / Terminated after
    recording the run as KILLED; other exceptions after recording it as FAILED."""
    splits, train, val, test = load_splits(c, progress=progress)
    streams = Streams.from_seed(c.seed)
    net = build_network(c, streams)
    spec = train_spec(c)
    tracker = new_tracker(c, experiment=experiment, sweep_id=sweep_id, parent_run_id=parent_run_id,
                          tags=tags, run_name=run_name)
    bar = ProgressBar(spec.epochs, progress)
    artifacts = {"config.yaml": resolved_yaml} if resolved_yaml else {}
    # interruptions are caught from before the record exists, so they never leave it RUNNING
    with Interrupts() as interrupts:
        obs: list[Observer] = ([interrupts.guard(tracker.observe)] if tracker else []) + [bar, *observers]
        try:
            with interrupts.deferred():
                open_tracking(tracker, splits, on_start)
            with bar.logging():
                history = fit(net, train, spec, validation=val, test=test, streams=streams, observers=obs)
            bar.close()
            with interrupts.deferred():
                result = finish_run(c, tracker, history, net, test, artifacts)
                tracker = None  # recorded: an interruption from here on only stops the process
            return result
        except BaseException as exc:
            bar.close()
            record_interruption(tracker, exc, artifacts)
            raise


@dataclass
class JobSpec:
    """One job of a population: its config and what its MLflow record needs."""

    config: RunConfig
    resolved_yaml: str = ""
    experiment: str | None = None
    sweep_id: str | None = None
    parent_run_id: str | None = None
    tags: dict[str, str] | None = None
    run_name: str | None = None
    observers: Sequence[Observer] = ()
    on_start: Callable[[str], None] | None = None


def execute_population(jobs: Sequence[JobSpec]) -> list[RunResult]:
    """Compatible jobs trained as one batched population; each gets the same MLflow record as
    ``execute`` would give it (params, per-epoch metrics, tags, artifacts)."""
    from nnexp.train import fit_population

    first = jobs[0].config
    splits, train, val, test = load_splits(first)
    streams = [Streams.from_seed(j.config.seed) for j in jobs]
    nets = [build_network(j.config, s) for j, s in zip(jobs, streams)]
    specs = [train_spec(j.config) for j in jobs]
    trackers = [new_tracker(j.config, experiment=j.experiment, sweep_id=j.sweep_id,
                            parent_run_id=j.parent_run_id, tags=j.tags, run_name=j.run_name) for j in jobs]
    artifacts = [{"config.yaml": j.resolved_yaml} if j.resolved_yaml else {} for j in jobs]
    with Interrupts() as interrupts:
        observers = [([interrupts.guard(t.observe)] if t else []) + list(j.observers)
                     for t, j in zip(trackers, jobs)]
        try:
            with interrupts.deferred():
                for t, j in zip(trackers, jobs):
                    open_tracking(t, splits, j.on_start)
            log.info("training %d runs as one population (%s)", len(jobs),
                     ", ".join(f"eta={j.config.eta:g} seed={j.config.seed}" for j in jobs))
            histories = fit_population(nets, train, specs, validation=val, test=test, streams=streams,
                                       observers=observers)
            results = []
            with interrupts.deferred():
                for i, (j, h, net) in enumerate(zip(jobs, histories, nets)):
                    results.append(finish_run(j.config, trackers[i], h, net, test, artifacts[i]))
                    trackers[i] = None  # recorded: an interruption from here on leaves it alone
            return results
        except BaseException as exc:
            for t, a in zip(trackers, artifacts):
                record_interruption(t, exc, a)
            raise


def _run_name(c: RunConfig, experiment: str | None) -> str:
    head = experiment or "run"
    return f"{head} eta={c.eta:g} lmbda={c.lmbda:g} mb={c.mini_batch_size} seed={c.seed}"


# -- the Hydra entry point -----------------------------------------------------------------------
def _group_options(group: str, extra_dirs: Sequence[str] = ()) -> list[str]:
    folders = [resources.files("nnexp.conf") / group] + [Path(d) / group for d in extra_dirs]
    return sorted({p.name[:-5] for f in folders if f.is_dir() for p in f.iterdir()
                   if p.name.endswith(".yaml")})


def _config_dirs(args: Sequence[str]) -> list[str]:
    """Directories added with --config-dir / -cd (Hydra's extra search path)."""
    dirs = []
    for i, arg in enumerate(args):
        if arg in ("--config-dir", "-cd") and i + 1 < len(args):
            dirs.append(args[i + 1])
        elif arg.startswith("--config-dir="):
            dirs.append(arg.split("=", 1)[1])
    return dirs


def check_overrides(args: Sequence[str]) -> None:
    """Reject misspelt keys and unknown group options in one line, before Hydra composes."""
    extra = _config_dirs(args)
    groups = {g: _group_options(g, extra) for g in (*GROUPS, "experiment")}
    skip_next = False
    for arg in args:
        if skip_next or arg.startswith("-") or "=" not in arg:
            skip_next = arg in ("--config-dir", "-cd", "--config-name", "-cn", "--config-path", "-cp")
            continue
        key, value = arg.split("=", 1)
        plain = key.lstrip("+~")
        if plain.startswith("hydra"):
            continue
        root = plain.split(".")[0].split("/")[0]
        if root == "experiment" and not key.startswith("+"):
            raise ConfigError(f"use +experiment={value} (with a '+') to add a preset")
        if root not in field_names() and root != "experiment":
            raise ConfigError(f"unknown config key '{plain}'{suggest(root, field_names())}; valid keys: "
                              f"{', '.join(field_names())}; presets: +experiment=NAME")
        if "." in plain:
            sub = plain.split(".", 1)[1].split(".")[0]
            valid = nested_fields(root) or []
            if sub not in valid:
                raise ConfigError(f"unknown key '{plain}'{suggest(sub, valid)}; valid keys of {root}: "
                                  f"{', '.join(valid)}")
            continue
        if root in groups and "(" not in value and "*" not in value and not key.startswith("~"):
            for option in value.split(","):
                if option not in groups[root]:
                    raise ConfigError(f"unknown {root} '{option}'{suggest(option, groups[root])}; "
                                      f"choose one of: {', '.join(groups[root])}")


def _fail(message: str, multirun: bool) -> None:
    """A one-line error: ends a single run (exit 2); in a sweep, the other jobs go on."""
    if multirun:
        log.error(message)
        return None
    print(f"nnexp.run: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def run_job(cfg: DictConfig) -> float | None:
    """The body of one Hydra job; returns best validation accuracy (for sweepers)."""
    from threadpoolctl import threadpool_limits

    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    launcher = hc.runtime.choices.get("hydra/launcher", "basic")
    experiment = hc.runtime.choices.get("experiment")
    try:
        c = to_run_config(cfg)
    except ConfigError as exc:
        return _fail(str(exc), multirun)
    progress = c.monitor.progress
    if progress is None:
        progress = sys.stderr.isatty() and launcher == "basic"
    resolved = OmegaConf.to_yaml(OmegaConf.create(
        {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k != "hydra"}))
    try:
        with threadpool_limits(1):  # one BLAS thread per process: parallelism from processes
            result = execute(c, resolved_yaml=tracking.redact(resolved), experiment=experiment,
                             sweep_id=os.environ.get(tracking.SWEEP_ENV),
                             parent_run_id=os.environ.get(tracking.PARENT_ENV), progress=progress)
    except NnexpError as exc:
        return _fail(str(exc), multirun)
    except (KeyboardInterrupt, Terminated):
        log.error("interrupted: the run is recorded (KILLED, with the metrics logged so far)")
        if multirun and launcher == "basic":  # the sweep's parent run lives in this process
            from nnexp.callbacks import end_interrupted_sweep

            end_interrupted_sweep(cfg)
        raise SystemExit(130)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        return _fail(f"run failed: {type(exc).__name__}: {first} (traceback saved with the run)", multirun)
    log.info(result.summary)
    h = result.history
    return h.best_validation_accuracy if h else None


@hydra.main(version_base="1.3", config_path="pkg://nnexp.conf", config_name="config")
def _hydra_main(cfg: DictConfig) -> float | None:
    return run_job(cfg)


def hydra_cli(prog: str, args: list[str], hydra_main: Callable[[], None], own_group: str | None = None) -> None:
    """Check the overrides (one-line errors, exit 2), then hand the arguments to Hydra.
    ``own_group``: a config group of the app itself (e.g. ``study``), left to Hydra."""
    try:
        check_overrides([a for a in args if not own_group or not a.lstrip("+~").startswith(own_group)])
    except ConfigError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        raise SystemExit(2)
    sys.argv = [sys.argv[0]] + args
    hydra_main()


def expand_seeds(args: Sequence[str]) -> list[str]:
    """``seeds=N``: N replicates (seed, seed+1, ...) as one multirun, trained as a batched
    population unless another launcher is chosen."""
    found = [a for a in args if a.startswith("seeds=")]
    if not found:
        return list(args)
    if len(found) > 1:
        raise ConfigError("give seeds= once")
    value = found[0].split("=", 1)[1]
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f"seeds must be a whole number >= 1 (replicates to train), got '{value}'")
    n = int(value)
    seed_args = [a for a in args if a.startswith("seed=")]
    first = seed_args[-1].split("=", 1)[1] if seed_args else "0"
    if not first.lstrip("-").isdigit():
        raise ConfigError(f"seeds={n} replicates one seed: give seed= a single whole number, not '{first}'")
    out = [a for a in args if a not in found and a not in seed_args]
    if n == 1:
        return out + [f"seed={first}"]
    out.append(f"seed=range({int(first)},{int(first) + n})")
    if "-m" not in out and "--multirun" not in out:
        out.insert(0, "-m")
    if not any(a.startswith("hydra/launcher=") for a in out):
        out.append("hydra/launcher=population")
    return out


def main(argv: Sequence[str] | None = None) -> None:
    # registers hydra/launcher=population even where Hydra's plugin scan misses it (editable installs)
    from hydra_plugins.nnexp_population.population_launcher import register

    register()
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        args = expand_seeds(args)
    except ConfigError as exc:
        print(f"nnexp.run: error: {exc}", file=sys.stderr)
        raise SystemExit(2)
    hydra_cli("nnexp.run", args, _hydra_main)


if __name__ == "__main__":
    # run the importable module's main, not this __main__ copy: worker processes (joblib,
    # spawn) must be able to unpickle the functions they are handed by reference
    from nnexp.run import main as _main

    _main()
