"""Policies (`policies`: observation history -> normalized conditioning -> action chunk;
diffusion and BC) and loading a trained one from its run directory (`loading`)."""

from dpjax.policy.loading import build_policy, load_policy, load_run_config
from dpjax.policy.policies import (
    BCPolicy,
    DiffusionPolicy,
    Policy,
    make_policy,
    observation_spec_from_stats,
    with_action_horizon,
)

__all__ = [
    "BCPolicy",
    "DiffusionPolicy",
    "Policy",
    "build_policy",
    "load_policy",
    "load_run_config",
    "make_policy",
    "observation_spec_from_stats",
    "with_action_horizon",
]
