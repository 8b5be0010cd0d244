"""Receding-horizon rollouts: at each replanning step the policy sees the last `obs_horizon`
observations, predicts a chunk, and the next `action_horizon` actions are executed before it
replans. On the pure-JAX multimodal task all episodes, the environment and the policy run
inside one compiled program (`lax.scan` over time, the policy batched over episodes); gym
tasks (PushT, Meta-World) step a batch of environments in Python around one batched policy
call per replanning step."""

from __future__ import annotations

import functools
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dpjax.errors import ConfigError
from dpjax.evaluate.metrics import measure_chunk_latency, summarize_gym, summarize_multimodal
from dpjax.policy import execution as execution_lib
from dpjax.policy.execution import Execution


@functools.lru_cache(maxsize=8)
def _multimodal_program(plan_fn, c, config, execution: Execution):
    """The jitted `run(params, seeds (N,) uint32, key)` of `rollout_multimodal`, built once per
    (compiled planner, policy config, task config, execution): periodic rollouts during
    training and evaluations at several sampler settings reuse its compilation."""
    from dpjax.envs import multimodal as mm

    horizon = c.action_horizon
    plan_length = c.plan_length
    observe = jax.vmap(lambda s: {k: v for k, v in mm.observation(s, config).items()
                                  if k in c.low_dim_keys})  # fmt: skip

    @jax.jit
    def run(params, seeds, key):
        reset_keys = jax.vmap(lambda s: mm.episode_keys(jax.random.key(s))[0])(seeds)
        states = jax.vmap(lambda k: mm.reset(k, config))(reset_keys)
        history = jax.tree.map(
            lambda x: jnp.repeat(x[:, None], c.obs_horizon, axis=1), observe(states)
        )
        plans = execution_lib.empty_state(seeds.shape[0], plan_length, c.action_dim, horizon)

        def body(carry, t):
            states, history, plans = carry
            history = jax.tree.map(
                lambda h, x: jnp.concatenate([h[:, 1:], x[:, None]], axis=1),
                history, observe(states),
            )  # fmt: skip
            plans = jax.lax.cond(
                t % horizon == 0,
                lambda: _replan(
                    plan_fn,
                    params,
                    history,
                    jax.random.fold_in(key, t),
                    plans,
                    t,
                    execution,
                    horizon,
                ),  # fmt: skip
                lambda: plans,
            )
            action = execution_lib.action(plans, t, execution)
            states, *_ = jax.vmap(lambda s, a: mm.step(s, a, config))(states, action)
            return (states, history, plans), (action, states.agent)

        (final, _, _), (actions, positions) = jax.lax.scan(
            body, (states, history, plans), jnp.arange(config.max_episode_steps)
        )
        return {
            "positions": jnp.concatenate([states.agent[:, None], positions.swapaxes(0, 1)], 1),
            "actions": actions.swapaxes(0, 1),
            "cup": final.cup,
            "success": final.success,
            "collision": final.collided,
            "mode": jax.vmap(mm.mode_of_offset)(final.closest_offset, final.closest_distance),
            "goal": final.goal,
            "length": final.t,
        }

    return run


def _replan(plan_fn, params, observation, key, plans, t, execution: Execution, horizon: int):
    """The execution state after planning at step t (guided towards the committed actions
    under "rtc")."""
    guide = execution_lib.guide(plans, t, execution, horizon) if execution.mode == "rtc" else None
    return execution_lib.add_chunk(plans, plan_fn(params, observation, key, guide), t)


def _checked_execution(policy, execution: Execution | None, plan_length=None) -> Execution:
    execution = execution or Execution()
    execution.validate(
        plan_length=plan_length or policy.plan_length,
        action_horizon=policy.config.action_horizon,
        kind=policy.config.kind,
    )
    return execution


def _first_switch(policy, execution: Execution) -> int:
    """The first step at which a new chunk takes over: action_horizon + delay."""
    return policy.config.action_horizon + execution.delay


def _execution_record(execution: Execution) -> dict[str, Any]:
    record = {"execution": execution.mode, "delay": execution.delay}
    if execution.mode == "temporal_ensemble":
        record["ensemble_decay"] = execution.ensemble_decay
    if execution.mode == "rtc":
        record["max_guidance"] = execution.max_guidance
    return record


def rollout_multimodal(
    policy, params, *, num_episodes: int, seed: int, env_config=None, execution=None, **options
) -> dict[str, np.ndarray]:
    """All episodes and the policy in one compiled program. Episode i starts as the expert's
    episode with seed `seed + i` does. `env_config` (a MultimodalConfig) changes the task,
    e.g. held-out start regions or goal conditioning; `execution` (an `Execution`; default
    chunked, no delay) how chunks become actions. Returns numpy arrays: positions
    (N, T+1, 2), actions (N, T, 2), cup (N, 2), success, collision (N,) bool, mode (N,),
    goal (N,) (-1: any side), length (N,)."""
    from dpjax.envs import multimodal as mm

    config = env_config or mm.DEFAULT_CONFIG
    c = policy.config
    available = ("state", "goal") if config.goal_conditioned else ("state",)
    if not set(c.low_dim_keys) <= set(available) or c.image_keys:
        raise ConfigError(
            f"the policy observes {[*c.low_dim_keys, *c.image_keys]}, but this multimodal task "
            f"gives {list(available)} (goal only with the goal_conditioned task option)"
        )
    execution = _checked_execution(policy, execution)
    plan_fn = policy.plan_fn(max_guidance=execution.max_guidance, **options)
    run = _multimodal_program(plan_fn, c, config, execution)
    seeds = jnp.arange(seed, seed + num_episodes, dtype=jnp.uint32)
    return jax.device_get(run(params, seeds, jax.random.key(seed)))


def evaluate_multimodal(
    policy,
    params,
    *,
    num_episodes: int = 100,
    seed: int = 100_000,
    latency: bool = True,
    env_config=None,
    expert_mode_frequencies=None,
    execution=None,
    **options,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(metrics, rollouts) of `policy` on the multimodal task; sampler options pass through.
    With a goal-conditioned `env_config`, "goal_side_rate" is how often the approach was
    from the commanded side. `expert_mode_frequencies`: see `summarize_multimodal` (default:
    `env_config`'s mode probabilities)."""
    from dpjax.envs.multimodal import DEFAULT_CONFIG, MODES

    execution = execution or Execution()
    rollouts = rollout_multimodal(
        policy, params, num_episodes=num_episodes, seed=seed, env_config=env_config,
        execution=execution, **options,
    )  # fmt: skip
    probs = np.asarray((env_config or DEFAULT_CONFIG).mode_probs, np.float64)
    expert = expert_mode_frequencies or dict(zip(MODES, probs / probs.sum(), strict=True))
    metrics = summarize_multimodal(
        rollouts,
        policy.config.action_horizon,
        expert,
        first_switch=_first_switch(policy, execution),
    )
    metrics.update(_execution_record(execution))
    metrics["denoiser_evaluations"] = policy.num_denoiser_evaluations(
        options.get("sampler"), options.get("num_inference_steps")
    )
    if latency:
        guided = execution.mode == "rtc"
        metrics.update(measure_chunk_latency(policy, params, guided=guided, **options))
    return metrics, rollouts


def _film(out: dict[str, list], step: int, env) -> bool:
    """Appends env's frame at `step` to out["frames"]; False (no more frames) where the env
    cannot render here (a headless machine without EGL/OSMesa): the pictures are optional,
    the rollouts' numbers are not."""
    try:
        out["frames"].append((step, env.render()))
        return True
    except Exception as e:  # mujoco raises its own FatalError, gym envs their own
        warnings.warn(f"no frames: {type(e).__name__}: {e}", RuntimeWarning, stacklevel=2)
        out["frames"].clear()
        return False


def rollout_gym(
    task,
    policy,
    params,
    *,
    num_episodes: int,
    seed: int,
    num_envs: int = 10,
    progress=None,
    act_fn=None,
    frames: int = 0,
    execution=None,
    **options,
) -> dict[str, Any]:
    """Episodes on seeds seed..seed+N-1, `num_envs` environments stepped in lockstep so the
    policy is called on a batch. Returns lists: success, length, actions (T_i, A), and where
    the env reports it (PushT) max/final coverage, and mode (the env's `info["mode"]` at the
    episode's end, -1 where it reports none).

    `act_fn`, where given, stands in for the policy's compiled inference: any batched
    controller `act_fn(observations, key, *, envs, seeds) -> (B, >= action_horizon, A)`, called
    at the same replanning steps with the same observation histories ({key: (B, obs_horizon,
    ...)} numpy) plus the live envs and their seeds, e.g. a scripted expert that reads the
    simulator, to check this loop against the expert's own rollouts. `policy` then only has to
    supply `config` (observation keys, obs_horizon, action_horizon); `params` and `options` are
    unused.

    `frames` > 0 (envs with `render()`): "frames" holds (step, image) pairs of the first
    episode, about that many evenly spaced plus its last step, for a picture strip.

    `execution` (an `Execution`; default chunked, no delay): how the planned chunks become
    actions (`dpjax.policy.execution`); an `act_fn` plans what it returns."""
    c = policy.config
    keys = [*c.low_dim_keys, *c.image_keys]
    execution = execution or Execution()
    if act_fn is None:
        execution = _checked_execution(policy, execution)
        plan_fn = policy.plan_fn(max_guidance=execution.max_guidance, **options)
    out: dict[str, list] = {"seed": [], "success": [], "length": [], "actions": [], "mode": [],
                            "max_coverage": [], "final_coverage": []}  # fmt: skip
    key = jax.random.key(seed)
    frame_every = max(task.max_episode_steps // max(frames, 1), 1)
    out["frames"] = []
    for start in range(seed, seed + num_episodes, num_envs):
        seeds = list(range(start, min(start + num_envs, seed + num_episodes)))
        envs = [task.make_env(s) for s in seeds]
        try:
            first = [env.reset(seed=s)[0] for env, s in zip(envs, seeds, strict=True)]
            filming = frames > 0 and start == seed and hasattr(envs[0], "render")
            if filming:
                filming = _film(out, 0, envs[0])
            history = {k: np.stack([np.repeat(o[k][None], c.obs_horizon, 0) for o in first])
                       for k in keys}  # fmt: skip
            done = np.zeros(len(envs), bool)
            success = np.zeros(len(envs), bool)
            length = np.zeros(len(envs), int)
            mode = np.full(len(envs), -1)
            coverage = [[] for _ in envs]
            actions = [[] for _ in envs]
            plans = None
            for t in range(task.max_episode_steps):
                if t % c.action_horizon == 0:
                    # Per batch, then per step: with `start + t` alone, the batch starting d
                    # seeds later drew at step t - d the same sampling noise.
                    chunk_key = jax.random.fold_in(jax.random.fold_in(key, start), t)
                    if act_fn is None:
                        batch = {k: jnp.asarray(v) for k, v in history.items()}
                        if plans is None:
                            plans = execution_lib.empty_state(
                                len(envs), policy.plan_length, c.action_dim, c.action_horizon
                            )
                        plans = _replan(plan_fn, params, batch, chunk_key, plans, t, execution,
                                        c.action_horizon)  # fmt: skip
                    else:
                        batch = {k: v.copy() for k, v in history.items()}
                        chunk = jnp.asarray(act_fn(batch, chunk_key, envs=envs, seeds=seeds))
                        if plans is None:
                            _checked_execution(policy, execution, chunk.shape[1])
                            plans = execution_lib.empty_state(
                                len(envs), chunk.shape[1], chunk.shape[2], c.action_horizon
                            )
                        plans = execution_lib.add_chunk(plans, chunk, t)
                    executed = np.asarray(
                        [
                            execution_lib.action(plans, u, execution)
                            for u in range(t, t + c.action_horizon)
                        ]  # fmt: skip
                    )  # (action_horizon, B, A): the steps until the next plan
                for i, env in enumerate(envs):
                    if done[i]:
                        continue
                    action = executed[t % c.action_horizon, i]
                    obs, _, terminated, truncated, info = env.step(action)
                    actions[i].append(action)
                    length[i] += 1
                    success[i] |= bool(info.get("success", False))
                    mode[i] = int(info.get("mode", mode[i]))
                    if "coverage" in info:
                        coverage[i].append(float(info["coverage"]))
                    done[i] = success[i] or terminated or truncated
                    if filming and i == 0 and (length[0] % frame_every == 0 or done[0]):
                        filming = _film(out, int(length[0]), env)
                    for k in keys:
                        history[k][i] = np.concatenate([history[k][i][1:], obs[k][None]], 0)
                if progress is not None:
                    progress()
                if done.all():
                    break
        finally:
            for env in envs:
                env.close()
        out["seed"] += seeds
        out["success"] += success.tolist()
        out["length"] += length.tolist()
        out["mode"] += mode.tolist()
        out["actions"] += [np.asarray(a) for a in actions]
        out["max_coverage"] += [max(cv) if cv else float("nan") for cv in coverage]
        out["final_coverage"] += [cv[-1] if cv else float("nan") for cv in coverage]
    return out


def evaluate_on_task(
    policy,
    params,
    task_name: str,
    task_options: dict | None = None,
    *,
    num_episodes: int,
    seed: int,
    latency: bool = True,
    frames: int = 0,
    progress: bool = False,
    expert_mode_frequencies=None,
    execution=None,
    **options,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(metrics, rollouts) of `policy` on task `task_name` (as `dpjax collect` names it, with
    its options): one compiled program on the multimodal task, `rollout_gym` with every
    episode of a batch of up to 50 stepped together elsewhere. Sampler options pass through.
    "score" is the task's headline number: `mean_max_reward` on PushT, else success."""
    task_options = dict(task_options or {})
    execution = execution or Execution()
    if task_name == "multimodal":
        from dpjax.envs.multimodal import config_from_options

        metrics, rollouts = evaluate_multimodal(
            policy, params, num_episodes=num_episodes, seed=seed, latency=latency,
            env_config=config_from_options(**task_options),
            expert_mode_frequencies=expert_mode_frequencies, execution=execution, **options,
        )  # fmt: skip
    else:
        from tqdm import tqdm

        from dpjax.envs import make_task

        task = make_task(task_name, **task_options)
        num_envs = min(num_episodes, 50)  # Diffusion Policy's 50 PushT episodes: 38 calls
        with tqdm(total=num_episodes * task.max_episode_steps, desc="eval", unit="step",
                  disable=not progress, dynamic_ncols=True) as bar:  # fmt: skip
            rollouts = rollout_gym(
                task, policy, params, num_episodes=num_episodes, seed=seed, num_envs=num_envs,
                progress=lambda: bar.update(num_envs), frames=frames, execution=execution,
                **options,
            )  # fmt: skip
        metrics = summarize_gym(
            rollouts, policy.config.action_horizon, first_switch=_first_switch(policy, execution),
            modes=task.modes, expert_mode_frequencies=expert_mode_frequencies,
        )  # fmt: skip
        metrics.update(_execution_record(execution))
        metrics["denoiser_evaluations"] = policy.num_denoiser_evaluations(
            options.get("sampler"), options.get("num_inference_steps")
        )
        if latency:
            guided = execution.mode == "rtc"
            metrics.update(measure_chunk_latency(policy, params, guided=guided, **options))
    metrics["score"] = metrics.get("mean_max_reward", metrics["success_rate"])
    return metrics, rollouts
