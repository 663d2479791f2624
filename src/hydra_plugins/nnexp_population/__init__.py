"""nnexp's population launcher for Hydra: ``hydra/launcher=population``."""
