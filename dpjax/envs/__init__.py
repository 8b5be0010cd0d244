"""Tasks with scripted experts: a pure-JAX multimodal task, PushT, Meta-World.

`make_task(name, **options)` (`dpjax.envs.tasks`) is the one entry point; `collect` records
an expert's demonstrations into a dataset (`dpjax.envs.collect`).
"""

from dpjax.envs.base import Episode, Task, iter_expert_episodes, rollout_expert
from dpjax.envs.tasks import check_options, make_task, option_names, task_names

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
