"""nnexp's Hydra config module (``pkg://nnexp.conf``). Importing it, as Hydra does before it
composes from here, registers the structured schemas the YAML files extend (``schema/run``,
``schema/study``): every way of composing (the commands, ``runner.compose``, a notebook's own
``hydra.compose``) sees them."""

from nnexp.config.study_schema import register_study_schema

register_study_schema()
