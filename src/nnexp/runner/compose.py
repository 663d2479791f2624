"""Overrides -> a validated job: the one way every caller (the CLIs, the Hydra launchers, the
study, the report, a notebook) turns a configuration into something to execute.

Hydra is imported only inside the functions that compose, so ``import nnexp.runner`` stays
light; a composed config (``DictConfig``) becomes a :class:`Job` through :func:`make_job`.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig, OmegaConf

from nnexp.config.run_schema import GROUPS, field_names, nested_fields, suggest, to_run_config
from nnexp.config.errors import ConfigError
from nnexp.runner.job import Job
from nnexp.tracking import redact


def group_options(group: str, extra_dirs: Sequence[str] = ()) -> list[str]:
    """The options of a config group: the YAML files of conf/<group> (and of --config-dir)."""
    folders = [resources.files("nnexp.conf") / group] + [Path(d) / group for d in extra_dirs]
    return sorted({p.name[:-5] for f in folders if f.is_dir() for p in f.iterdir()
                   if p.name.endswith(".yaml")})


def config_dirs(args: Sequence[str]) -> list[str]:
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
    extra = config_dirs(args)
    groups = {g: group_options(g, extra) for g in (*GROUPS, "experiment")}
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
            check_value(arg)
            continue
        if root not in groups:
            check_value(arg)
        if root in groups and "(" not in value and "*" not in value and not key.startswith("~"):
            for option in value.split(","):
                if option not in groups[root]:
                    raise ConfigError(f"unknown {root} '{option}'{suggest(option, groups[root])}; "
                                      f"choose one of: {', '.join(groups[root])}")


def check_value(arg: str) -> None:
    """``key=value`` (every value of a sweep) has the type the schema gives the key: a one-line
    ConfigError here rather than Hydra's multi-line merge error. Interpolations are left to Hydra."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf.errors import OmegaConfBaseException

    from nnexp.config.run_schema import RunConfig

    try:
        (override,) = OverridesParser.create().parse_overrides([arg])
    except Exception:  # noqa: BLE001 - a syntax error: Hydra reports it
        return
    key = override.key_or_group.lstrip("+~")
    values = list(override.sweep_iterator()) if override.is_sweep_override() else [override.value()]
    schema = OmegaConf.structured(RunConfig)
    for value in values:
        if isinstance(value, str) and "${" in value:
            continue
        try:
            OmegaConf.update(schema, key, value, merge=True)
        except OmegaConfBaseException as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ConfigError(f"bad value for '{key}': {first}") from None


def make_job(cfg: DictConfig, *, experiment: str | None = None, **record) -> Job:
    """A composed config (hydra.* ignored) as a validated job; ``record``: the Job's tracking
    fields (sweep_id, parent_run_id, tags, run_name, observers, on_start)."""
    body = OmegaConf.create({k: cfg[k] for k in cfg if k != "hydra"})
    resolved = OmegaConf.to_yaml(OmegaConf.create(OmegaConf.to_container(body, resolve=True)))
    if experiment is None and "hydra" in cfg:
        experiment = OmegaConf.select(cfg, "hydra.runtime.choices.experiment", default=None)
    return Job(config=to_run_config(body), resolved_yaml=redact(resolved), experiment=experiment, **record)


def compose(overrides: Sequence[str] = (), **record) -> Job:
    """The job ``python -m nnexp.run OVERRIDES...`` would run (one-line ConfigError if bad)::

        from nnexp import runner
        (result,) = runner.execute(runner.compose(["dataset=digits", "eta=0.3"]))
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.errors import HydraException

    overrides = list(overrides)
    check_overrides(overrides)
    try:
        with initialize_config_module(version_base="1.3", config_module="nnexp.conf"):
            cfg = hydra_compose("config", overrides=overrides)
    except HydraException as exc:
        raise ConfigError(str(exc).strip().splitlines()[0]) from None
    preset = next((o.split("=", 1)[1] for o in overrides if o.startswith("+experiment=")), None)
    return make_job(cfg, experiment=record.pop("experiment", preset), **record)
