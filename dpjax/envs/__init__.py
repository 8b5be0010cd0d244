"""Tasks with scripted experts: a pure-JAX multimodal task, PushT, Meta-World.

`make_task(name, **options)` is the one entry point. Names:
  "multimodal"              the pure-JAX three-approach task (dpjax.envs.multimodal)
  "pusht"                   gym-pusht (extra `dpjax[pusht]`)
  "metaworld-<env>"         any Meta-World v3 env, e.g. "metaworld-pick-place-v3"
                            (extra `dpjax[metaworld]`)
"""

from __future__ import annotations

import importlib

from dpjax.envs.base import Episode, Task, iter_expert_episodes, rollout_expert
from dpjax.errors import unknown_name

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

        return make_metaworld_task(name[len(_METAWORLD_PREFIX) :], **options)
    if name not in _TASK_FACTORIES:
        raise unknown_name("task", name, task_names())
    module_name, function_name = _TASK_FACTORIES[name].split(":")
    return getattr(importlib.import_module(module_name), function_name)(**options)


__all__ = ["Episode", "Task", "iter_expert_episodes", "make_task", "rollout_expert", "task_names"]
