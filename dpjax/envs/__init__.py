"""Tasks with scripted experts: a pure-JAX multimodal task, PushT, Meta-World.

`make_task(name, **options)` is the one entry point. Names:
  "multimodal"              the pure-JAX three-approach task (dpjax.envs.multimodal)
  "pusht"                   gym-pusht (extra `dpjax[pusht]`)
  "metaworld-<env>"         any Meta-World v3 env, e.g. "metaworld-pick-place-v3"
                            (extra `dpjax[metaworld]`)
Options are the keyword arguments of the family's `make_task`; an unknown one is a
ConfigError that lists the valid ones.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterable

from dpjax.envs.base import Episode, Task, iter_expert_episodes, rollout_expert
from dpjax.errors import ConfigError, unknown_name

# name -> "module:function"; the function takes **options and returns a Task.
_TASK_FACTORIES: dict[str, str] = {
    "multimodal": "dpjax.envs.multimodal:make_task",
    "pusht": "dpjax.envs.pusht:make_task",
}
_METAWORLD_PREFIX = "metaworld-"


def task_names() -> list[str]:
    return sorted(_TASK_FACTORIES) + [_METAWORLD_PREFIX + "<env-name>-v3"]


def make_task(name: str, **options) -> Task:
    if name.startswith(_METAWORLD_PREFIX):
        from dpjax.envs.metaworld import make_task as make_metaworld_task

        check_options(make_metaworld_task, options, f"task {name!r}", positional=1)
        return make_metaworld_task(name[len(_METAWORLD_PREFIX) :], **options)
    if name not in _TASK_FACTORIES:
        raise unknown_name("task", name, task_names())
    module_name, function_name = _TASK_FACTORIES[name].split(":")
    factory = getattr(importlib.import_module(module_name), function_name)
    check_options(factory, options, f"task {name!r}")
    return factory(**options)


def option_names(function: Callable, positional: int = 0) -> list[str] | None:
    """Keyword options `function` accepts after its first `positional` parameters; None if it
    takes **kwargs (any name)."""
    parameters = list(inspect.signature(function).parameters.values())[positional:]
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    keyword_kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in parameters if p.kind in keyword_kinds]


def check_options(
    function: Callable,
    options: Iterable[str],
    what: str,
    positional: int = 0,
    extra: Iterable[str] = (),
) -> None:
    """Raises ConfigError naming the valid options if `function` cannot take all `options`."""
    valid = option_names(function, positional)
    if valid is None:
        return
    valid = [*valid, *extra]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ConfigError(
            f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} for {what}; "
            f"valid: {', '.join(valid) if valid else '(none)'}"
        )


__all__ = [
    "Episode",
    "Task",
    "check_options",
    "iter_expert_episodes",
    "make_task",
    "option_names",
    "rollout_expert",
    "task_names",
]
