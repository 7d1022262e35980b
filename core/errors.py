"""Errors that reach a user. Each carries a one-line message meant to be shown as it is."""


class ArtchainError(Exception):
    """Base class: anything artchain reports to a user without a traceback."""


class ConfigError(ArtchainError):
    """config.yaml or an environment override is invalid."""


class ChainError(ArtchainError):
    """A chain text names an unknown step or gives a bad parameter."""


class ImageError(ArtchainError):
    """An input image cannot be read, or breaks a configured limit; or an output cannot be written."""


class WeightsError(ArtchainError):
    """A weight file is missing, corrupt, of the wrong kind, or unsafe to load."""


class Cancelled(ArtchainError):
    """A job was cancelled while it ran."""
