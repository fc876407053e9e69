"""Typed errors of the core. Each message is one line that names the problem."""


class ContinualMemError(Exception):
    """Base class of every error the core raises on purpose."""


class ConfigError(ContinualMemError, ValueError):
    """A setting that cannot work: a device that is not there, a size that cannot make sense."""


class UnsupportedBackboneError(ContinualMemError):
    """The timm model cannot carry memory tokens (no class token, another block type, ...)."""


class BackboneMismatchError(ContinualMemError):
    """An adapter was trained on another backbone than the one it is loaded onto."""


class AdapterFormatError(ContinualMemError):
    """An adapter file is unreadable, truncated, tampered with or has wrong shapes."""


class UnknownTaskError(ContinualMemError, KeyError):
    """A task name that the model does not hold."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class BackboneLoadError(ContinualMemError):
    """Backbone weights could not be found or loaded."""


class Terminated(KeyboardInterrupt):
    """The process was asked to stop (SIGTERM: `kill`, `timeout`, a scheduler); handled like Ctrl-C."""
