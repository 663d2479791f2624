"""What the command-line entry points share: one-line errors, the override check before Hydra
composes, and handing the arguments to a Hydra app."""

from __future__ import annotations

import sys
from typing import Callable, NoReturn, Sequence

from nnexp.config.errors import ConfigError


def die(prog: str, message: str, code: int = 2) -> NoReturn:
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(code)


def hydra_cli(prog: str, args: list[str], hydra_main: Callable[[], None], own_group: str | None = None) -> None:
    """Check the overrides (one-line errors, exit 2), then hand the arguments to Hydra.
    ``own_group``: a config group of the app itself (e.g. ``study``), left to Hydra."""
    from nnexp.runner.compose import check_overrides
    from nnexp.runner.pool import leave_objects_at_exit

    leave_objects_at_exit()  # a command's exit: 0.6 s less once MLflow was imported
    try:
        check_overrides([a for a in args if not own_group or not a.lstrip("+~").startswith(own_group)])
    except ConfigError as exc:
        die(prog, str(exc))
    sys.argv = [sys.argv[0]] + list(args)
    hydra_main()


def is_multirun(args: Sequence[str]) -> bool:
    return "-m" in args or "--multirun" in args
