"""``python -m nnexp.run``: one Hydra-composed, MLflow-tracked training run (or a multirun,
trained as batched populations by the population launcher unless another one is chosen).

    python -m nnexp.run dataset=digits             # offline, seconds
    python -m nnexp.run -m eta=0.025,0.25,2.5      # a sweep: one parent run, three children
    python -m nnexp.run +experiment=overfitting    # a book experiment
    python -m nnexp.run tracking=off               # no MLflow
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Sequence

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from nnexp.cli.entry import die, hydra_cli, is_multirun
from nnexp.config.errors import ConfigError, NnexpError

log = logging.getLogger("nnexp.run")


def _fail(message: str, multirun: bool) -> None:
    """A one-line error: ends a single run (exit 2); in a sweep, the other jobs go on."""
    if multirun:
        log.error(message)
        return None
    die("nnexp.run", message)


def run_job(cfg: DictConfig) -> float | None:
    """The body of one Hydra job (basic, joblib or submitit launcher); returns the best
    validation accuracy (for sweepers)."""
    from nnexp import runner

    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    launcher = hc.runtime.choices.get("hydra/launcher", "basic")
    try:
        job = runner.make_job(cfg, experiment=hc.runtime.choices.get("experiment"),
                              run_dir=Path(hc.runtime.output_dir), **runner.sweep_links())
    except ConfigError as exc:
        return _fail(str(exc), multirun)
    uploads = None
    if not multirun and job.config.tracking.enabled:  # a sweep's callback started its upload process
        # a process of its own opens the store (imports MLflow: ~1.6 s of CPU; ends dead runs) and
        # uploads the run: this process never imports MLflow, and trains at once
        from nnexp import tracking

        try:
            uploads = tracking.UploadProcess(tracking.resolve_uri(job.config.tracking.uri), job.config.tracking.experiment)
        except OSError as exc:
            log.warning("no upload process (%s): this process uploads the run", exc)
    client = uploads.client() if uploads is not None else None
    try:
        return _execute(cfg, job, multirun, launcher, client)
    finally:  # the client too (a run that failed before training never closed it): the upload
        if uploads is not None:  # process ends once its clients have
            client.close()
            uploads.close()


def _execute(cfg: DictConfig, job, multirun: bool, launcher: str, uploader=None) -> float | None:
    from nnexp import runner

    progress = job.config.monitor.progress
    if progress is None:
        progress = sys.stderr.isatty() and launcher == "basic"
    try:
        with runner.one_blas_thread():  # parallelism from processes, never BLAS threads
            (result,) = runner.execute(job, progress=progress, uploader=uploader)
    except NnexpError as exc:
        return _fail(str(exc), multirun)
    except runner.INTERRUPTIONS as exc:
        recorded = runner.recorded_as(exc, "KILLED")
        if multirun and launcher == "basic":  # the sweep's parent run lives in this process: one line for both
            from nnexp.cli.callbacks import end_interrupted_sweep

            end_interrupted_sweep(cfg, recorded)
        elif not multirun:
            log.error("interrupted: %s", recorded)
        # else: a job process of its own (joblib, submitit): the launching process says it, once
        raise SystemExit(130)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        return _fail(f"run failed: {type(exc).__name__}: {first} ({runner.recorded_as(exc, 'FAILED')})", multirun)
    log.info(result.summary)
    return result.best_validation_accuracy


@hydra.main(version_base="1.3", config_path="pkg://nnexp.conf", config_name="config")
def _hydra_main(cfg: DictConfig) -> float | None:
    return run_job(cfg)


def expand_seeds(args: Sequence[str]) -> list[str]:
    """``seeds=N``: N replicates (seed, seed+1, ...) as one multirun."""
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
    if not is_multirun(out):
        out.insert(0, "-m")
    return out


def default_launcher(args: Sequence[str]) -> list[str]:
    """A multirun trains as batched populations unless another launcher is chosen: results
    do not depend on the launcher, only the time they take."""
    out = list(args)
    if is_multirun(out) and not any(a.lstrip("+~").startswith("hydra/launcher=") for a in out):
        out.append("hydra/launcher=population")
    return out


def main(argv: Sequence[str] | None = None) -> None:
    # registers hydra/launcher=population even where Hydra's plugin scan misses it (editable installs)
    from hydra_plugins.nnexp_population.population_launcher import register

    register()
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        args = default_launcher(expand_seeds(args))
    except ConfigError as exc:
        die("nnexp.run", str(exc))
    hydra_cli("nnexp.run", args, _hydra_main)
