"""Exception types. Every message is one line a user can act on."""


class NnexpError(Exception):
    """Base class: entry points print ``str(error)`` as a one-line message and exit 2."""


class ConfigError(NnexpError):
    """A configuration value or combination is invalid."""


class DataError(NnexpError):
    """A dataset is missing, corrupt or cannot be fetched."""


class IdxFormatError(DataError):
    """An IDX file is truncated, has a wrong magic number or mismatched dimensions."""


class ChecksumError(DataError):
    """A downloaded file does not match its published checksum."""


class DataNotFoundError(DataError):
    """A dataset is neither in a local directory, nor cached, nor downloadable."""
