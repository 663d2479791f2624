"""``hydra/launcher=population``: a multirun's compatible jobs trained as batched populations.

Jobs that share architecture, cost, dtype, mini-batch size, penalty type, dataset and
monitoring are grouped (at most ``max_members`` per population, within ``max_memory_mb``)
and each group is trained as one batched NumPy computation; groups are spread over
``workers`` processes. Every job gets exactly the numbers and the MLflow record the basic
launcher would give it (one child run per job under the sweep's parent). All the work is
nnexp.runner's: this plugin only hands it the composed jobs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, JobStatus, configure_log
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

from nnexp.runner.groups import MAX_MEMBERS, MAX_MEMORY_MB

log = logging.getLogger(__name__)


@dataclass
class PopulationLauncherConf:
    _target_: str = "hydra_plugins.nnexp_population.population_launcher.PopulationLauncher"
    max_members: int = MAX_MEMBERS  # largest population (K)
    workers: int = 2  # processes training populations side by side (with submitit: groups to cut the jobs in)
    max_memory_mb: int = MAX_MEMORY_MB  # per population: stacked parameters, data batches, evaluation
    # each population group as one submitit job: null (this process and its workers), local, slurm
    submitit: Optional[str] = None
    folder: str = ".submitit"  # submitit's files, in the sweep's directory
    timeout_min: int = 60
    partition: Optional[str] = None
    mem_gb: Optional[float] = None
    cpus_per_task: int = 1
    max_num_timeout: int = 3
    slurm: Dict[str, Any] = field(default_factory=dict)  # more sbatch parameters (account, qos, ...)


ConfigStore.instance().store(group="hydra/launcher", name="population", node=PopulationLauncherConf,
                             provider="nnexp")
ConfigStore.instance().store(group="hydra/launcher", name="population_slurm",
                             node=PopulationLauncherConf(submitit="slurm"), provider="nnexp")
ConfigStore.instance().store(group="hydra/launcher", name="population_submitit_local",
                             node=PopulationLauncherConf(submitit="local"), provider="nnexp")


class PopulationLauncher(Launcher):
    def __init__(self, max_members: int = MAX_MEMBERS, workers: int = 2, max_memory_mb: int = MAX_MEMORY_MB,
                 submitit: str | None = None, **cluster: Any) -> None:
        self.max_members, self.workers, self.max_memory_mb = max_members, workers, max_memory_mb
        self.submitit, self.cluster = submitit, cluster
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function
        _compose_once(hydra_context.config_loader)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from nnexp import runner
        from nnexp.cli.callbacks import end_interrupted_sweep
        from nnexp.config.errors import NnexpError

        assert self.config is not None and self.hydra_context is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        composed, jobs = [], {}

        def compose(offset: int, overrides: Sequence[str]) -> None:
            idx = initial_job_idx + offset
            cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(cfg):
                cfg.hydra.job.id = f"{cfg.hydra.job.name}_{idx}"
                cfg.hydra.job.num = idx
            log.info("\t#%d : %s", idx, " ".join(overrides))
            composed.append((list(overrides), cfg))
            try:
                jobs[offset] = runner.make_job(cfg, run_dir=sweep_dir / str(cfg.hydra.sweep.subdir),
                                               **runner.sweep_links())
            except NnexpError as exc:  # like the basic launcher: one line, the sweep goes on
                log.error("job %d: %s", idx, exc)

        workers = max(1, min(self.workers, len(job_overrides)))
        if self.submitit:
            return self._launch_submitit(job_overrides, compose, composed, jobs, sweep_dir)
        try:
            compose(0, job_overrides[0])
            first = jobs[0].config if 0 in jobs else None
            # the workers start (imports, the data) while this process composes the other jobs
            with runner.WorkerPool(workers, warm=runner.warm_up, warm_with=first) as pool:
                for offset, overrides in enumerate(job_overrides[1:], start=1):
                    compose(offset, overrides)
                order = sorted(jobs)
                results = runner.run_jobs([jobs[i] for i in order], workers=workers, max_members=self.max_members,
                                          max_memory_mb=self.max_memory_mb, pool=pool)
        except runner.INTERRUPTIONS:
            end_interrupted_sweep(self.config)
            raise SystemExit(130) from None
        return self._returns(composed, dict(zip(order, results)), sweep_dir)

    def _launch_submitit(self, job_overrides, compose, composed, jobs, sweep_dir) -> Sequence[JobReturn]:
        """Each population group as one submitit job (see ``nnexp.runner.cluster``)."""
        from nnexp import runner
        from nnexp.cli.callbacks import end_interrupted_sweep
        from nnexp.config.errors import NnexpError
        from nnexp.runner.cluster import ClusterSettings, run_groups
        from nnexp.runner.sweep import plan

        cluster = {k: (dict(v) if k == "slurm" else v) for k, v in self.cluster.items()}
        settings = ClusterSettings(kind=self.submitit, **cluster)
        for offset, overrides in enumerate(job_overrides):
            compose(offset, overrides)
        order = sorted(jobs)
        todo = [jobs[i] for i in order]
        groups = plan(todo, self.workers, self.max_members, self.max_memory_mb)
        try:
            results = run_groups(todo, groups, settings, sweep_dir / settings.folder)
        except runner.INTERRUPTIONS:
            end_interrupted_sweep(self.config)
            raise SystemExit(130) from None
        except NnexpError as exc:  # e.g. no SLURM on this machine
            end_interrupted_sweep(self.config, str(exc), status="FAILED")
            raise SystemExit(2) from None
        return self._returns(composed, dict(zip(order, results)), sweep_dir)

    @staticmethod
    def _returns(composed, values, sweep_dir) -> Sequence[JobReturn]:
        returns = []
        for offset, (overrides, cfg) in enumerate(composed):
            ret = JobReturn(overrides=overrides, cfg=cfg, hydra_cfg=cfg, working_dir=str(sweep_dir),
                            task_name=str(cfg.hydra.job.name))
            # like nnexp.run's jobs under the basic launcher: a failed job was logged (one line)
            # and recorded in MLflow; it never stops the sweep with a traceback
            ret.status = JobStatus.COMPLETED
            value = values.get(offset)
            ret.return_value = None if value is None or isinstance(value, BaseException) \
                else value.best_validation_accuracy
            returns.append(ret)
        return returns


def _compose_once(loader) -> None:
    """Hydra's BasicSweeper composes every job to validate it, then hands the launcher only the
    overrides; remember those configs so that each job is composed once (~80 ms a job)."""
    if getattr(loader, "_nnexp_memo", None) is not None:
        return
    memo: dict = {}
    compose = loader.load_sweep_config

    def load_sweep_config(master_config, sweep_overrides):
        key = (id(master_config), tuple(sweep_overrides))
        if key in memo:  # composed by the sweeper's validation: handed over to the launcher
            return memo.pop(key)
        memo[key] = cfg = compose(master_config, list(sweep_overrides))
        return cfg

    loader.load_sweep_config = load_sweep_config
    loader._nnexp_memo = memo


def register() -> None:
    """Make the launcher known to Hydra even where its plugin scan misses this package
    (setuptools' editable installs hide namespace packages from pkgutil)."""
    from hydra.core.plugins import Plugins

    Plugins.instance().register(PopulationLauncher)
