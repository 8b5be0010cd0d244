"""Typed exceptions. The CLI turns every `DpjaxError` into a one-line message and exit code 2."""


class DpjaxError(Exception):
    """Base class of every error dpjax raises on purpose (bad input, not a bug)."""


class ConfigError(DpjaxError, ValueError):
    """A configuration value, option or combination of options that cannot work."""


class UnknownNameError(ConfigError, KeyError):
    """A name (sampler, schedule, network, task, ...) that is not registered."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class ShapeError(DpjaxError, ValueError):
    """An array whose shape or dtype is not the one expected."""


class DataError(DpjaxError, ValueError):
    """A dataset or file that is missing, half-written, corrupt or holds NaN/inf."""


class CheckpointError(DpjaxError):
    """A checkpoint that is missing, truncated or from an incompatible config."""


class MissingExtraError(DpjaxError, ImportError):
    """An optional dependency group (`pip install dpjax[NAME]`) is not installed."""


def unknown_name(kind: str, name: str, valid) -> UnknownNameError:
    """Builds the error for an unregistered `name`, listing the valid ones."""
    return UnknownNameError(f"unknown {kind} {name!r}; valid: {', '.join(sorted(valid))}")


def require_extra(module: str, extra: str):
    """Imports `module` or raises MissingExtraError naming `pip install 'dpjax[extra]'`."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtraError(
            f"{module} is not installed; install it with: pip install 'dpjax[{extra}]'"
        ) from e
