"""Closed-loop evaluation: `rollouts` (receding horizon, the multimodal task in one compiled
program, gym tasks batched), `metrics` (what the seed's claims need), `plots`, and
`protocol` (held-out seeds; a trained run directory evaluated with any sampler)."""

from dpjax.evaluate.metrics import (
    chunk_boundary_jumps,
    demonstration_mode_frequencies,
    max_reward,
    mean_squared_jerk,
    measure_chunk_latency,
    summarize_gym,
    summarize_multimodal,
    wilson_interval,
)
from dpjax.evaluate.plots import plot_frames, plot_multimodal
from dpjax.evaluate.protocol import (
    EVAL_SEED,
    best_rollout_step,
    default_episodes,
    evaluate_run,
    markdown,
)
from dpjax.evaluate.rollouts import (
    evaluate_multimodal,
    evaluate_on_task,
    rollout_gym,
    rollout_multimodal,
)

__all__ = [
    "EVAL_SEED",
    "best_rollout_step",
    "chunk_boundary_jumps",
    "default_episodes",
    "demonstration_mode_frequencies",
    "evaluate_multimodal",
    "evaluate_on_task",
    "evaluate_run",
    "markdown",
    "max_reward",
    "mean_squared_jerk",
    "measure_chunk_latency",
    "plot_frames",
    "plot_multimodal",
    "rollout_gym",
    "rollout_multimodal",
    "summarize_gym",
    "summarize_multimodal",
    "wilson_interval",
]
