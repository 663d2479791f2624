"""``python -m nnexp.study``: the book's broad strategy as a staged, resumable, parallel
Optuna study (nnexp.search does the work).

Each stage is its own Optuna study ``<name>/<stage>`` in one storage; its decision is kept
in that study's user attributes, so a re-run skips finished stages and finishes half-done
ones. Trials run through nnexp.runner like every run (one nested MLflow run each, under
one parent run per study); divergent trials are data (``nnexp.status=diverged``), hopeless
ones are pruned on their validation accuracy.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Sequence

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from nnexp.cli.entry import die, hydra_cli
from nnexp.config.errors import ConfigError, NnexpError
from nnexp.search import check_study_overrides, run_study

log = logging.getLogger("nnexp.study")


@hydra.main(version_base="1.3", config_path="pkg://nnexp.conf", config_name="study")
def _hydra_main(cfg: DictConfig) -> None:
    from nnexp.report.study_plots import draw_study
    from nnexp.runner import INTERRUPTIONS, Interrupts

    workers = os.environ.get("NNEXP_STUDY_WORKERS")
    hc = HydraConfig.get()
    try:
        with Interrupts():  # Ctrl-C or SIGTERM from the first moment: one line, exit 130
            run_study(cfg, int(workers) if workers else None, experiment=hc.runtime.choices.get("experiment"),
                              command="python -m nnexp.study " + " ".join(hc.overrides.task),
                              run_dir=Path(hc.runtime.output_dir), draw=draw_study)
    except NnexpError as exc:
        die("nnexp.study", str(exc))
    except INTERRUPTIONS:
        log.error("interrupted: finished trials and stages are kept, the running trials end FAIL; "
                  "re-run the same command to resume")
        raise SystemExit(130)


def main(argv: Sequence[str] | None = None) -> None:
    """Accepts ``--workers N`` besides Hydra's arguments."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--workers" in args:
        i = args.index("--workers")
        if i + 1 >= len(args) or not args[i + 1].isdigit() or int(args[i + 1]) < 1:
            die("nnexp.study", "--workers needs a positive integer")
        os.environ["NNEXP_STUDY_WORKERS"] = args[i + 1]
        del args[i:i + 2]

    try:
        check_study_overrides(args)
    except ConfigError as exc:
        die("nnexp.study", str(exc))
    hydra_cli("nnexp.study", args, _hydra_main, own_group="study")
