"""Studies from Python, beside the runner's API: overrides in (the same ones, and the same checks,
as ``python -m nnexp.study``), every stage run or resumed, the outputs written::

    from nnexp import search
    study = search.run(["dataset=digits", "study=tpe", "study.n_trials=8"], workers=2)
    print(study.decisions["final"]["test_accuracy"], study.outputs["log"])

The study's plots are drawn by the report: ``nnexp.report.study_plots.draw_study(study.output_dir)``.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import threading
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml
from omegaconf import DictConfig, OmegaConf

from nnexp import tracking
from nnexp.config.run_schema import RunConfig, suggest, to_run_config
from nnexp.config.errors import ConfigError
from nnexp.config.names import TAG_EXPERIMENT, TAG_STAGE, TAG_STUDY
from nnexp.search.backend import DEFAULT_STORAGE, make_storage
from nnexp.search.outputs import load_decisions, meta_study, write_outputs
from nnexp.config.study_schema import StudySettings, to_settings
from nnexp.search.asha import asha_study
from nnexp.search.pbt import pbt_study
from nnexp.search.strategy import Context, broad_strategy, sampler_study

log = logging.getLogger("nnexp.study")


def load_settings(cfg: DictConfig) -> tuple[StudySettings, RunConfig]:
    container = OmegaConf.to_container(cfg, resolve=True)
    raw = container.pop("study", None)
    if not raw:
        raise ConfigError("no study selected: use study=broad_strategy, study=tpe or study=random")
    return to_settings(raw), to_run_config(container)



def _n_images(c: RunConfig, classes=None, split: int = 1) -> int:
    """Images of the config's training (split 1) or validation (2) set, with only ``classes``."""
    from nnexp.runner import load_splits

    c = copy.deepcopy(c)
    if classes is not None:
        c.dataset.classes, c.dataset.train_size = list(classes), None
    return len(load_splits(c)[split])


def fail_orphaned_trials(storage_url: str, pids: Sequence[int]) -> None:
    """After an interruption: the trials still RUNNING whose worker process was one of ``pids``
    (ended with the study) are told FAIL, so none is left pretending to run. (A worker tells its
    own trials FAIL when it catches the signal; this covers one that could not in time.)"""
    import optuna
    from optuna.trial import TrialState

    if not pids:
        return
    storage = make_storage(storage_url)
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t.user_attrs.get("worker_pid") in pids:
                study.tell(t.number, state=TrialState.FAIL)


def study_files() -> dict[str, dict]:
    """The studies one can select (``study=NAME``): sweeps/study/NAME.yaml, by name."""
    folder = resources.files("nnexp.sweeps") / "study"
    return {p.name[:-5]: yaml.safe_load(p.read_text()) for p in folder.iterdir() if p.name.endswith(".yaml")}


def check_study_overrides(args: Sequence[str]) -> None:
    """``study=NAME`` must name a file of sweeps/study/; ``study.KEY`` a key some study has."""
    studies = study_files()
    keys = sorted({k for body in studies.values() for k in body})
    for arg in args:
        key, _, value = arg.partition("=")
        key = key.lstrip("+~")
        if key == "study" and value not in studies:
            raise ConfigError(f"unknown study '{value}'{suggest(value, studies)}; "
                              f"choose one of: {', '.join(sorted(studies))}")
        if key.startswith("study.") and key.split(".")[1] not in keys and not arg.startswith("+"):
            sub = key.split(".")[1]
            raise ConfigError(f"unknown key '{key}'{suggest(sub, keys)}; study keys: {', '.join(keys)}")
        parts = key.split(".")
        if len(parts) == 3 and not arg.startswith("+"):  # study.GROUP.KEY of a group with a schema (pbt, asha, ...)
            import dataclasses

            from nnexp.config.study_schema import StudySettings

            group = StudySettings.__dataclass_fields__.get(parts[1])
            node = group.default_factory() if group is not None and callable(group.default_factory) else None
            if dataclasses.is_dataclass(node) and parts[2] not in {f.name for f in dataclasses.fields(node)}:
                known = [f.name for f in dataclasses.fields(node)]
                raise ConfigError(f"unknown key '{key}'{suggest(parts[2], known)}; study.{parts[1]} keys: "
                                  f"{', '.join(known)}")


def compose_study(overrides: Sequence[str] = ()) -> DictConfig:
    """The configuration ``python -m nnexp.study OVERRIDES`` composes, after the same checks (one-line
    ConfigError): run keys as for nnexp.run, ``study=NAME`` and ``study.KEY=...``."""
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException

    from nnexp.runner import check_overrides

    overrides = list(overrides)
    check_study_overrides(overrides)
    check_overrides([o for o in overrides if not o.lstrip("+~").startswith("study")])
    try:
        with initialize_config_module(version_base="1.3", config_module="nnexp.conf"):
            return compose("study", overrides=overrides)
    except HydraException as exc:
        raise ConfigError(str(exc).strip().splitlines()[0]) from None


def run(overrides: Sequence[str] = (), *, workers: int | None = None,
        draw: Callable[[Path], Any] | None = None) -> Context:
    """Run (or resume) the study ``python -m nnexp.study OVERRIDES`` would: same checks, same
    decisions, same outputs (decision log, preset, reproduce command). ``draw``: what draws the
    log's plots from the data beside it (the command passes ``nnexp.report.study_plots.draw_study``).
    Returns its Context: ``decisions`` per stage, ``outputs`` (preset, log), ``output_dir``."""
    overrides = list(overrides)
    preset = next((o.split("=", 1)[1] for o in overrides if o.startswith("+experiment=")), None)
    return run_study(compose_study(overrides), workers, experiment=preset, draw=draw,
                     command="python -m nnexp.study " + " ".join(overrides))


def _open_parent(ctx: Context, meta, uri: str, uploads, run_dir: Path | None, experiment: str | None):
    """The study's MLflow parent run (``ctx.parent``). ``uploads``: the study's upload process's
    client, which uploads it (None: this process does, the store prepared first). A new parent
    is uploaded while the study goes on, and its id kept in the study's storage once known (the
    returned thread, to join): a resumed study continues its parent run."""
    base = ctx.base
    if uploads is None:
        tracking.prepare_store(uri, base.tracking.experiment)
    known = meta.user_attrs.get("mlflow_parent_run_id")
    later = uploads is not None and not known
    ctx.parent = tracking.ParentRun(uri, base.tracking.experiment, name=f"study {ctx.name}",
                                    run_dir=run_dir or tracking.default_run_dir(), run_id=known, uploader=uploads,
                                    upload=not later,
                                    tags={TAG_STUDY: ctx.name, TAG_STAGE: "study", TAG_EXPERIMENT: experiment or "none"})
    if not later:
        if ctx.parent.run_id and not known:
            meta.set_user_attr("mlflow_parent_run_id", ctx.parent.run_id)
        return None

    def remember() -> None:  # the upload process imports MLflow and opens the store meanwhile
        client = tracking.uploader()  # a connection of this thread's own
        try:
            client.upload_now(ctx.parent.record)
        finally:
            client.close()
        if ctx.parent.run_id:
            meta.set_user_attr("mlflow_parent_run_id", ctx.parent.run_id)

    thread = threading.Thread(target=remember, name="nnexp-study-parent", daemon=True)
    thread.start()
    return thread


def run_study(cfg: DictConfig, workers: int | None = None, *, experiment: str | None = None,
              command: str = "", run_dir: Path | None = None, draw: Callable[[Path], Any] | None = None) -> Context:
    """The study of a composed config (see ``compose_study``); ``experiment``: the preset it was
    composed with, ``command``: the command that reproduces it, ``run_dir``: where the parent
    run's local record goes (default: ./outputs/records/...), ``draw``: see ``run``."""
    settings, base = load_settings(cfg)
    name = settings.study
    storage_url = settings.storage or DEFAULT_STORAGE
    from nnexp.runner import available_cores

    ctx = Context(name=name, settings=settings, base=base, storage_url=storage_url,
                  workers=int(workers or settings.workers or available_cores()), experiment=experiment)
    counted: dict = {}

    def count(classes, split: int) -> int:
        key = (None if classes is None else tuple(classes), split)
        if key not in counted:
            counted[key] = _n_images(base, classes, split)
        return counted[key]

    ctx.count_images = lambda classes: count(classes, 1)
    ctx.count_validation = lambda classes: count(classes, 2)
    ctx.n_full = ctx.count_images(None)
    if settings.kind == "broad_strategy":
        ctx.n_stage = ctx.count_images(settings.stripped.classes)
    make_storage(storage_url)  # create the schema once, before any worker starts
    meta = meta_study(ctx)
    strategy = {"broad_strategy": broad_strategy, "sampler": sampler_study, "pbt": pbt_study,
                "asha": asha_study}[settings.kind]
    with contextlib.ExitStack() as stack:
        uploads = None
        uri = tracking.resolve_uri(base.tracking.uri) if base.tracking.enabled else ""
        if base.tracking.enabled and ctx.workers > 1:  # one process opens the store and uploads the parent
            uploads = stack.enter_context(tracking.serving(uri, base.tracking.experiment))  # run and every
            # trial's: neither this process nor a worker imports MLflow (~1.6 s of CPU each); with one
            # worker (this process), uploading from here costs the same import and no process
        pool = None
        if ctx.workers > 1:  # the worker processes start now, and import and load the data meanwhile
            from nnexp.runner import WorkerPool, warm_up

            pool = WorkerPool(ctx.workers, local=False, warm=warm_up, warm_with=base)
        from nnexp.runner import INTERRUPTIONS

        try:
            with pool or contextlib.nullcontext() as ctx.pool:
                parent_known = None
                if base.tracking.enabled:
                    parent_uploads = stack.enter_context(contextlib.closing(uploads.client())) if uploads else None
                    parent_known = _open_parent(ctx, meta, uri, parent_uploads, run_dir, experiment)
                load_decisions(ctx)
                log.info("study %s (%s): storage %s, %d worker(s), full problem %d images%s", name, settings.kind,
                         tracking.redact(storage_url), ctx.workers, ctx.n_full,
                         f", stripped problem {ctx.n_stage} images" if ctx.n_stage else "")
                strategy(ctx, settings.stop_after)
                if parent_known is not None:
                    parent_known.join()
        except INTERRUPTIONS:
            if pool is not None:
                fail_orphaned_trials(storage_url, pool.terminated)
            raise
        finally:
            ctx.pool = None
        if "final" in ctx.decisions:
            write_outputs(ctx, command, draw)
        elif ctx.parent:
            ctx.parent.end("FINISHED")
    return ctx
