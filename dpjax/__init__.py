"""dpjax: diffusion policies for robot control in JAX/Flax.

The public surface (the rest is reachable through the modules, without promises):

    from dpjax import samplers, schedules           # the pure core: sample(denoise_fn, ...)
    from dpjax import PolicyConfig, OptimConfig, TrainConfig, train
    from dpjax import MLPConfig, UNet1DConfig, TransformerConfig, BCHeadConfig  # PolicyConfig's parts
    from dpjax import load_policy, evaluate_run, make_task, load_dataset
"""

from dpjax._lazy import lazy_exports

__version__ = "0.1.0"

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "PolicyConfig": "dpjax.config",
        "OptimConfig": "dpjax.config",
        "TrainConfig": "dpjax.config",
        "MLPConfig": "dpjax.config",
        "UNet1DConfig": "dpjax.config",
        "TransformerConfig": "dpjax.config",
        "BCHeadConfig": "dpjax.config",
        "apply_overrides": "dpjax.config",
        "load_config_file": "dpjax.config",
        "train": "dpjax.training.loop",
        "load_policy": "dpjax.policy.loading",
        "make_policy": "dpjax.policy.policies",
        "evaluate_run": "dpjax.evaluate",
        "make_task": "dpjax.envs",
        "load_dataset": "dpjax.data",
        "sample": "dpjax.samplers",
        "make_schedule": "dpjax.schedules",
    },
)
