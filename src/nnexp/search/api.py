"""Running a study: the base run config and the study settings in, every stage run or resumed,
the outputs written. Called by ``python -m nnexp.study`` and by the benchmark."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from nnexp import tracking
from nnexp.config import RunConfig, to_run_config
from nnexp.config.errors import ConfigError
from nnexp.config.names import TAG_EXPERIMENT, TAG_STAGE, TAG_STUDY
from nnexp.search.backend import DEFAULT_STORAGE, make_storage
from nnexp.search.outputs import load_decisions, meta_study, write_outputs
from nnexp.config.study_schema import StudySettings, to_settings
from nnexp.search.strategy import Context, broad_strategy, sampler_study

log = logging.getLogger("nnexp.study")


def load_settings(cfg: DictConfig) -> tuple[StudySettings, RunConfig]:
    container = OmegaConf.to_container(cfg, resolve=True)
    raw = container.pop("study", None)
    if not raw:
        raise ConfigError("no study selected: use study=broad_strategy, study=tpe or study=random")
    return to_settings(raw), to_run_config(container)



def _n_images(c: RunConfig, classes=None) -> int:
    from nnexp.runner import load_splits

    c = copy.deepcopy(c)
    if classes is not None:
        c.dataset.classes, c.dataset.train_size = list(classes), None
    return len(load_splits(c)[1])


def run_study(cfg: DictConfig, workers: int | None = None) -> Context:
    settings, base = load_settings(cfg)
    hc = HydraConfig.get() if HydraConfig.initialized() else None
    experiment = hc.runtime.choices.get("experiment") if hc else None
    name = settings.study
    storage_url = settings.storage or DEFAULT_STORAGE
    ctx = Context(name=name, settings=settings, base=base, storage_url=storage_url,
                  workers=int(workers or settings.workers), experiment=experiment)
    ctx.n_full = _n_images(base)
    counted = {None: ctx.n_full}

    def count_images(classes) -> int:
        key = None if classes is None else tuple(classes)
        if key not in counted:
            counted[key] = _n_images(base, classes)
        return counted[key]

    ctx.count_images = count_images
    if settings.kind == "broad_strategy":
        ctx.n_stage = count_images(settings.stripped.classes)
    make_storage(storage_url)  # create the schema once, before any worker starts
    meta = meta_study(ctx)
    if base.tracking.enabled:
        uri = tracking.resolve_uri(base.tracking.uri)
        tracking.prepare_store(uri, base.tracking.experiment)
        known = meta.user_attrs.get("mlflow_parent_run_id")  # a resumed study continues its parent run
        run_dir = Path(hc.runtime.output_dir) if hc else tracking.default_run_dir()
        ctx.parent = tracking.ParentRun(uri, base.tracking.experiment, name=f"study {name}", run_dir=run_dir,
                                        run_id=known, tags={TAG_STUDY: name, TAG_STAGE: "study",
                                                            TAG_EXPERIMENT: experiment or "none"})
        if ctx.parent.run_id and not known:
            meta.set_user_attr("mlflow_parent_run_id", ctx.parent.run_id)
    load_decisions(ctx)
    stop_after = settings.stop_after
    log.info("study %s (%s): storage %s, %d worker(s), full problem %d images%s", name, settings.kind,
             tracking.redact(storage_url), ctx.workers, ctx.n_full,
             f", stripped problem {ctx.n_stage} images" if ctx.n_stage else "")
    strategy = broad_strategy if settings.kind == "broad_strategy" else sampler_study
    strategy(ctx, stop_after)
    if "final" in ctx.decisions:
        write_outputs(ctx)
    elif ctx.parent:
        ctx.parent.end("FINISHED")
    return ctx
