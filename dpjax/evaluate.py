"""Closed-loop evaluation: receding-horizon rollouts and the metrics the seed's claims need.

Receding horizon: at each replanning step the policy sees the last `obs_horizon`
observations, predicts a chunk, and the next `action_horizon` actions are executed before it
replans. On the pure-JAX multimodal task all episodes, the environment and the policy run
inside one compiled program (`lax.scan` over time, the policy batched over episodes).

Metrics: success rate with a 95% Wilson interval, mode frequencies against the expert's,
smoothness (mean squared jerk of executed actions; the jump between consecutive chunks
against the typical step within a chunk), time per action chunk (median, p95) and the
resulting control rate, and denoiser evaluations per chunk.
"""

from __future__ import annotations

import functools
import math
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dpjax.errors import ConfigError


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion (sound at 0% and 100%)."""
    if trials == 0:
        return (0.0, 1.0)
    p = successes / trials
    denom = 1 + z**2 / trials
    center = (p + z**2 / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z**2 / (4 * trials**2)) / denom
    return (max(0.0, center - half), min(1.0, center + half))


def mean_squared_jerk(actions: np.ndarray, lengths: np.ndarray) -> float:
    """Mean over episodes and valid steps of |third difference of actions|^2.

    actions (N, T, A), lengths (N,) executed steps per episode.
    """
    values = []
    for a, n in zip(actions, lengths, strict=True):
        if n >= 4:
            jerk = np.diff(a[:n], n=3, axis=0)
            values.append(float(np.mean(np.sum(jerk**2, axis=-1))))
    return float(np.mean(values)) if values else float("nan")


def chunk_boundary_jumps(actions: np.ndarray, lengths: np.ndarray, action_horizon: int):
    """(mean |a_t - a_{t-1}| where t starts a new chunk, mean |a_t - a_{t-1}| inside chunks)."""
    boundary, inside = [], []
    for a, n in zip(actions, lengths, strict=True):
        steps = np.linalg.norm(np.diff(a[:n], axis=0), axis=-1)  # step t -> t+1 at index t
        for t in range(1, n):
            (boundary if t % action_horizon == 0 else inside).append(steps[t - 1])
    mean = lambda x: float(np.mean(x)) if x else float("nan")
    return mean(boundary), mean(inside)


def measure_chunk_latency(policy, params, repeats: int = 20, **options) -> dict[str, float]:
    """Median and p95 wall time of one (batch-1) observation -> action chunk call."""
    fn = policy.inference_fn(**options)
    observation = policy.example_observation(1)
    key = jax.random.key(0)
    jax.block_until_ready(fn(params, observation, key))  # compile
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(params, observation, jax.random.fold_in(key, i)))
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    return {
        "chunk_latency_ms": median * 1e3,
        "chunk_latency_p95_ms": float(np.percentile(times, 95)) * 1e3,
        "max_control_hz": policy.config.action_horizon / median,
    }


# ----------------------------------------------------------------- multimodal (pure JAX)


@functools.lru_cache(maxsize=8)
def _multimodal_program(chunk_fn, c, config):
    """The jitted `run(params, seeds (N,) uint32, key)` of `rollout_multimodal`, built once per
    (compiled chunk function, policy config, task config): periodic rollouts during training
    and evaluations at several sampler settings reuse its compilation."""
    from dpjax.envs import multimodal as mm

    horizon = c.action_horizon
    observe = jax.vmap(lambda s: {k: v for k, v in mm.observation(s, config).items()
                                  if k in c.low_dim_keys})  # fmt: skip

    @jax.jit
    def run(params, seeds, key):
        reset_keys = jax.vmap(lambda s: mm.episode_keys(jax.random.key(s))[0])(seeds)
        states = jax.vmap(lambda k: mm.reset(k, config))(reset_keys)
        history = jax.tree.map(
            lambda x: jnp.repeat(x[:, None], c.obs_horizon, axis=1), observe(states)
        )
        queue = jnp.zeros((seeds.shape[0], horizon, c.action_dim))

        def body(carry, t):
            states, history, queue = carry
            history = jax.tree.map(
                lambda h, x: jnp.concatenate([h[:, 1:], x[:, None]], axis=1),
                history, observe(states),
            )  # fmt: skip
            index = t % horizon
            queue = jax.lax.cond(
                index == 0,
                lambda: chunk_fn(params, history, jax.random.fold_in(key, t)),
                lambda: queue,
            )
            action = queue[:, index]
            states, *_ = jax.vmap(lambda s, a: mm.step(s, a, config))(states, action)
            return (states, history, queue), (action, states.agent)

        (final, _, _), (actions, positions) = jax.lax.scan(
            body, (states, history, queue), jnp.arange(config.max_episode_steps)
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


def rollout_multimodal(
    policy, params, *, num_episodes: int, seed: int, env_config=None, **options
) -> dict[str, np.ndarray]:
    """All episodes and the policy in one compiled program. Episode i starts as the expert's
    episode with seed `seed + i` does. `env_config` (a MultimodalConfig) changes the task,
    e.g. held-out start regions or goal conditioning. Returns numpy arrays: positions
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
    run = _multimodal_program(policy.inference_fn(**options), c, config)
    seeds = jnp.arange(seed, seed + num_episodes, dtype=jnp.uint32)
    return jax.device_get(run(params, seeds, jax.random.key(seed)))


def summarize_multimodal(
    rollouts: dict[str, np.ndarray], action_horizon: int, expert_mode_frequencies=None
) -> dict[str, Any]:
    """Success, collisions, modes, smoothness of multimodal rollouts. `expert_mode_frequencies`
    ({mode: fraction}) is what the policy's modes are compared with: measure it from the
    demonstrations (`mode_frequencies` of their episode modes); default: the task's
    configured probabilities. "mode_frequency_error" is the largest |policy - expert|."""
    from dpjax.envs.multimodal import MODE_PROBS, MODES, mode_frequencies

    n = len(rollouts["success"])
    successes = int(np.sum(rollouts["success"]))
    modes = np.asarray(rollouts["mode"])

    success_modes = modes[np.asarray(rollouts["success"], bool)]
    expert = dict(expert_mode_frequencies or zip(MODES, MODE_PROBS, strict=True))
    policy_modes = mode_frequencies(modes)
    boundary, inside = chunk_boundary_jumps(rollouts["actions"], rollouts["length"], action_horizon)
    goals = np.asarray(rollouts.get("goal", np.full(n, -1)))
    commanded = goals >= 0
    goal_side = (
        {"goal_side_rate": float(np.mean(modes[commanded] == goals[commanded]))}
        if commanded.any()
        else {}
    )
    return {
        **goal_side,
        "episodes": n,
        "success_rate": successes / n,
        "success_ci95": wilson_interval(successes, n),
        "collision_rate": float(np.mean(rollouts["collision"])),
        "mode_frequencies": policy_modes,
        "success_mode_frequencies": mode_frequencies(success_modes),
        "no_mode_fraction": float(np.mean(modes < 0)),
        "expert_mode_frequencies": expert,
        "mode_frequency_error": max(abs(policy_modes[m] - expert[m]) for m in MODES),
        "mean_squared_jerk": mean_squared_jerk(rollouts["actions"], rollouts["length"]),
        "chunk_jump": boundary,
        "within_chunk_step": inside,
        "mean_episode_length": float(np.mean(rollouts["length"])),
    }


def demonstration_mode_frequencies(episodes) -> dict[str, float]:
    """The expert's mode frequencies measured on demonstrations (episodes of a multimodal
    dataset, each with `episode_metadata["mode"]`): what a policy's modes should match."""
    from dpjax.envs.multimodal import mode_frequencies

    return mode_frequencies(int(e["episode_metadata"].get("mode", -1)) for e in episodes)


def evaluate_multimodal(
    policy,
    params,
    *,
    num_episodes: int = 100,
    seed: int = 100_000,
    latency: bool = True,
    env_config=None,
    expert_mode_frequencies=None,
    **options,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(metrics, rollouts) of `policy` on the multimodal task; sampler options pass through.
    With a goal-conditioned `env_config`, "goal_side_rate" is how often the approach was
    from the commanded side. `expert_mode_frequencies`: see `summarize_multimodal` (default:
    `env_config`'s mode probabilities)."""
    from dpjax.envs.multimodal import DEFAULT_CONFIG, MODES

    rollouts = rollout_multimodal(
        policy, params, num_episodes=num_episodes, seed=seed, env_config=env_config, **options
    )
    probs = np.asarray((env_config or DEFAULT_CONFIG).mode_probs, np.float64)
    expert = expert_mode_frequencies or dict(zip(MODES, probs / probs.sum(), strict=True))
    metrics = summarize_multimodal(rollouts, policy.config.action_horizon, expert)
    metrics["denoiser_evaluations"] = policy.num_denoiser_evaluations(
        options.get("sampler"), options.get("num_inference_steps")
    )
    if latency:
        metrics.update(measure_chunk_latency(policy, params, **options))
    return metrics, rollouts


def plot_multimodal(rollouts_by_name: dict[str, dict], path, max_episodes: int = 60):
    """Trajectories of each policy, colored by the mode (side) they approached the cup from."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.patches as patches
    import matplotlib.pyplot as plt

    from dpjax.envs import multimodal as mm

    colors = {0: "tab:blue", 1: "tab:orange", 2: "tab:green", -1: "tab:gray"}
    names = list(rollouts_by_name)
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 4.2), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        r = rollouts_by_name[name]
        for i in range(min(max_episodes, len(r["success"]))):
            p = r["positions"][i, : int(r["length"][i]) + 1] - r["cup"][i]
            style = "-" if r["success"][i] else ":"
            ax.plot(p[:, 0], p[:, 1], style, color=colors[int(r["mode"][i])], lw=1, alpha=0.7)
        ax.add_patch(patches.Circle((0, 0), mm.CUP_RADIUS, color="black"))
        ax.add_patch(patches.Rectangle(
            (mm.WALL_X[0], -mm.WALL_HALF_HEIGHT), mm.WALL_X[1] - mm.WALL_X[0],
            2 * mm.WALL_HALF_HEIGHT, color="dimgray"))  # fmt: skip
        rate = float(np.mean(r["success"]))
        ax.set_title(f"{name}: success {rate:.0%}")
        ax.set_xlim(-1.05, 0.45)
        ax.set_ylim(-0.75, 0.75)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [plt.Line2D([], [], color=colors[k], label=lbl) for k, lbl in
               [(0, "north"), (1, "east"), (2, "south"), (-1, "no valid side")]]  # fmt: skip
    fig.legend(handles=handles, loc="lower center", ncol=4, frameon=False)
    fig.suptitle("Rollouts in the cup frame (solid: success, dotted: failure; wall at left)")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ----------------------------------------------------------------- simulator tasks (gym)


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
    **options,
) -> dict[str, Any]:
    """Episodes on seeds seed..seed+N-1, `num_envs` environments stepped in lockstep so the
    policy is called on a batch. Returns lists: success, length, actions (T_i, A), and where
    the env reports it (PushT) max/final coverage.

    `act_fn`, where given, stands in for the policy's compiled inference: any batched
    controller `act_fn(observations, key, *, envs, seeds) -> (B, >= action_horizon, A)`, called
    at the same replanning steps with the same observation histories ({key: (B, obs_horizon,
    ...)} numpy) plus the live envs and their seeds, e.g. a scripted expert that reads the
    simulator, to check this loop against the expert's own rollouts. `policy` then only has to
    supply `config` (observation keys, obs_horizon, action_horizon); `params` and `options` are
    unused.

    `frames` > 0 (envs with `render()`): "frames" holds (step, image) pairs of the first
    episode, about that many evenly spaced plus its last step, for a picture strip."""
    c = policy.config
    keys = [*c.low_dim_keys, *c.image_keys]
    chunk_fn = policy.inference_fn(**options) if act_fn is None else None
    out: dict[str, list] = {"seed": [], "success": [], "length": [], "actions": [],
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
                out["frames"].append((0, envs[0].render()))
            history = {k: np.stack([np.repeat(o[k][None], c.obs_horizon, 0) for o in first])
                       for k in keys}  # fmt: skip
            done = np.zeros(len(envs), bool)
            success = np.zeros(len(envs), bool)
            length = np.zeros(len(envs), int)
            coverage = [[] for _ in envs]
            actions = [[] for _ in envs]
            queue = None
            for t in range(task.max_episode_steps):
                if t % c.action_horizon == 0:
                    # Per batch, then per step: with `start + t` alone, the batch starting d
                    # seeds later drew at step t - d the same sampling noise.
                    chunk_key = jax.random.fold_in(jax.random.fold_in(key, start), t)
                    if act_fn is None:
                        batch = {k: jnp.asarray(v) for k, v in history.items()}
                        queue = np.asarray(chunk_fn(params, batch, chunk_key))
                    else:
                        batch = {k: v.copy() for k, v in history.items()}
                        queue = np.asarray(act_fn(batch, chunk_key, envs=envs, seeds=seeds))
                for i, env in enumerate(envs):
                    if done[i]:
                        continue
                    action = queue[i, t % c.action_horizon]
                    obs, _, terminated, truncated, info = env.step(action)
                    actions[i].append(action)
                    length[i] += 1
                    success[i] |= bool(info.get("success", False))
                    if "coverage" in info:
                        coverage[i].append(float(info["coverage"]))
                    done[i] = success[i] or terminated or truncated
                    if filming and i == 0 and (length[0] % frame_every == 0 or done[0]):
                        out["frames"].append((int(length[0]), env.render()))
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
        out["actions"] += [np.asarray(a) for a in actions]
        out["max_coverage"] += [max(cv) if cv else float("nan") for cv in coverage]
        out["final_coverage"] += [cv[-1] if cv else float("nan") for cv in coverage]
    return out


def plot_frames(frames: list[tuple[int, np.ndarray]], path, title: str = "", max_frames: int = 8):
    """A strip of (step, image) frames, e.g. `rollout_gym(..., frames=6)["frames"]`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if len(frames) > max_frames:  # keep the first and last, evenly in between
        picks = np.linspace(0, len(frames) - 1, max_frames).round().astype(int)
        frames = [frames[i] for i in picks]
    fig, axes = plt.subplots(1, len(frames), figsize=(2.2 * len(frames), 2.5), squeeze=False)
    for ax, (step, image) in zip(axes[0], frames, strict=True):
        ax.imshow(image)
        ax.set_title(f"step {step}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def max_reward(max_coverage, success_coverage: float = 0.95) -> np.ndarray:
    """Diffusion Policy's PushT score of episodes: clip(max coverage / 0.95, 0, 1) each.

    `mean_max_reward` is its mean over episodes (the paper's metric; gym-pusht's own reward
    is the same function of coverage). A NaN coverage (no step taken) scores 0.
    """
    coverage = np.nan_to_num(np.asarray(max_coverage, np.float64), nan=0.0)
    return np.clip(coverage / success_coverage, 0.0, 1.0)


def summarize_gym(rollouts: dict[str, Any], action_horizon: int) -> dict[str, Any]:
    """Success (95% CI), smoothness, lengths and, where the env reports coverage (PushT),
    mean max / final coverage and `mean_max_reward`. "per_episode" keeps each episode's
    seed, success, length (and coverage and max reward), so results can be re-aggregated."""
    n = len(rollouts["success"])
    successes = int(np.sum(rollouts["success"]))
    horizon = max(len(a) for a in rollouts["actions"])
    dim = rollouts["actions"][0].shape[-1]
    padded = np.zeros((n, horizon, dim))
    for i, a in enumerate(rollouts["actions"]):
        padded[i, : len(a)] = a
    lengths = np.asarray(rollouts["length"])
    boundary, inside = chunk_boundary_jumps(padded, lengths, action_horizon)
    metrics = {
        "episodes": n,
        "success_rate": successes / n,
        "success_ci95": wilson_interval(successes, n),
        "mean_squared_jerk": mean_squared_jerk(padded, lengths),
        "chunk_jump": boundary,
        "within_chunk_step": inside,
        "mean_episode_length": float(np.mean(lengths)),
    }
    per_episode = {
        "seed": [int(s) for s in rollouts.get("seed", range(n))],
        "success": [bool(s) for s in rollouts["success"]],
        "length": [int(x) for x in lengths],
    }
    if not all(math.isnan(v) for v in rollouts["max_coverage"]):
        from dpjax.envs.pusht import SUCCESS_COVERAGE

        rewards = max_reward(rollouts["max_coverage"], SUCCESS_COVERAGE)
        metrics["mean_max_reward"] = float(np.mean(rewards))
        metrics["max_coverage"] = float(np.nanmean(rollouts["max_coverage"]))
        metrics["final_coverage"] = float(np.nanmean(rollouts["final_coverage"]))
        per_episode["max_coverage"] = [float(c) for c in rollouts["max_coverage"]]
        per_episode["max_reward"] = [float(r) for r in rewards]
    metrics["per_episode"] = per_episode
    return metrics


# ----------------------------------------------------------------- any task


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
    **options,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(metrics, rollouts) of `policy` on task `task_name` (as `dpjax collect` names it, with
    its options): one compiled program on the multimodal task, `rollout_gym` with every
    episode of a batch of up to 50 stepped together elsewhere. Sampler options pass through.
    "score" is the task's headline number: `mean_max_reward` on PushT, else success."""
    task_options = dict(task_options or {})
    if task_name == "multimodal":
        from dpjax.envs.multimodal import config_from_options

        metrics, rollouts = evaluate_multimodal(
            policy, params, num_episodes=num_episodes, seed=seed, latency=latency,
            env_config=config_from_options(**task_options),
            expert_mode_frequencies=expert_mode_frequencies, **options,
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
                progress=lambda: bar.update(num_envs), frames=frames, **options,
            )  # fmt: skip
        metrics = summarize_gym(rollouts, policy.config.action_horizon)
        metrics["denoiser_evaluations"] = policy.num_denoiser_evaluations(
            options.get("sampler"), options.get("num_inference_steps")
        )
        if latency:
            metrics.update(measure_chunk_latency(policy, params, **options))
    metrics["score"] = metrics.get("mean_max_reward", metrics["success_rate"])
    return metrics, rollouts
