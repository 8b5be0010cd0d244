"""The task registry: each task family's factory (its env, its scripted expert, its
observation spec), and `make_task(name, **options)`, the one entry point. Names:
  "multimodal"              the pure-JAX three-approach task (dpjax.envs.multimodal)
  "pusht"                   gym-pusht (extra `dpjax[pusht]`)
  "metaworld-<env>"         any Meta-World v3 env, e.g. "metaworld-pick-place-v3"
                            (extra `dpjax[metaworld]`)
Options are the keyword arguments of the family's factory; an unknown one is a ConfigError
that lists the valid ones.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable, Iterable

from dpjax.envs import demonstrators, multimodal, multimodal_expert, pusht, pusht_expert
from dpjax.envs.base import ArraySpec, Task
from dpjax.errors import ConfigError, unknown_name

_METAWORLD_PREFIX = "metaworld-"


def task_names() -> list[str]:
    return sorted(_TASK_FACTORIES) + [_METAWORLD_PREFIX + "<env-name>-v3"]


def make_task(name: str, **options) -> Task:
    """The task registered as `name` with `options` (its factory's keyword arguments)."""
    if name.startswith(_METAWORLD_PREFIX):
        # Imported here: Meta-World's adapter pulls in mujoco (the `metaworld` extra).
        make_metaworld_task = importlib.import_module("dpjax.envs.metaworld").make_task
        check_options(make_metaworld_task, options, f"task {name!r}", positional=1)
        return make_metaworld_task(name[len(_METAWORLD_PREFIX) :], **options)
    if name not in _TASK_FACTORIES:
        raise unknown_name("task", name, task_names())
    factory = _TASK_FACTORIES[name]
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


def multimodal_task(
    max_episode_steps: int = 100,
    mode_probs: tuple[float, float, float] = multimodal.MODE_PROBS,
    goal_conditioned: bool = False,
    quality_mix: tuple[float, float, float, float] = demonstrators.PROFICIENT,
) -> Task:
    """The "multimodal" task; options are `MultimodalConfig` fields (`quality_mix`: mixed-
    quality demonstrators, proficient / slow / hesitant / noisy, `demonstrators.QUALITIES`)."""
    config = multimodal.config_from_options(
        max_episode_steps=max_episode_steps,
        mode_probs=mode_probs,
        goal_conditioned=goal_conditioned,
        quality_mix=quality_mix,
    )
    spec = {"state": ArraySpec((multimodal.STATE_DIM,), "float32")}
    if config.goal_conditioned:
        spec["goal"] = ArraySpec((len(multimodal.MODES),), "float32")
    return Task(
        name="multimodal",
        observation_spec=spec,
        action_dim=multimodal.ACTION_DIM,
        max_episode_steps=max_episode_steps,
        make_env=lambda seed: multimodal.MultimodalEnv(config, seed),
        make_expert=multimodal_expert.make_expert,
        modes=multimodal.MODES,
        control_hz=10.0,
        collect_episodes=functools.partial(multimodal_expert.collect_episodes, config=config),
    )


def pusht_task(
    obs_type: str = "state",
    strategies: dict[str, float] | list[str] | None = None,
    quality_mix: tuple[float, float, float, float] = demonstrators.PROFICIENT,
    **options,
) -> Task:
    """The PushT task with the simulator-planning expert (`dpjax.envs.pusht_expert`).

    `strategies`: the multimodal expert's first contacts, {name: probability} or names (equally
    likely) of `pusht_expert.STRATEGIES`; the env then reports the part of the T touched first
    as the mode. `quality_mix`: mixed-quality demonstrators (`demonstrators.QUALITIES`).
    Other `options` go to gym-pusht's env (e.g. `damping`, `block_cog`), except
    `expert_options`, a dict for `pusht_expert.PushTExpert` (e.g. {"max_step_px": 10.0}).
    """
    if obs_type not in pusht.OBSERVATION_SPECS:
        raise ConfigError(
            f"unknown PushT obs_type {obs_type!r}; valid: {', '.join(pusht.OBSERVATION_SPECS)}"
        )
    expert_options = dict(options.pop("expert_options", {}))
    probs = demonstrators.check_strategies(strategies, pusht_expert.STRATEGIES)
    mix = demonstrators.check_quality_mix(quality_mix)
    pusht.import_gym_pusht()  # fail at task creation, not at the first episode
    from gym_pusht.envs import PushTEnv as PackageEnv

    # The other options go to the package's own env constructor.
    check_options(
        PackageEnv.__init__, options, "task 'pusht'", positional=1,
        extra=("expert_options", "strategies", "quality_mix"),
    )  # fmt: skip
    check_options(pusht_expert.PushTExpert, expert_options, "PushT expert_options", positional=1)

    return Task(
        name="pusht",
        observation_spec=pusht.OBSERVATION_SPECS[obs_type],
        action_dim=2,
        max_episode_steps=pusht.MAX_EPISODE_STEPS,
        make_env=lambda seed: pusht.PushTEnv(obs_type, classify_modes=probs is not None, **options),
        make_expert=lambda env, seed: pusht_expert.make_expert(
            env, seed, strategies=probs, quality_mix=mix, **expert_options
        ),
        expert_name="pusht-sim-planner",
        control_hz=pusht.CONTROL_HZ,
        modes=pusht_expert.STRATEGIES if probs is not None else (),
    )


# name -> factory(**options) -> Task.
_TASK_FACTORIES: dict[str, Callable[..., Task]] = {
    "multimodal": multimodal_task,
    "pusht": pusht_task,
}
