"""Training: the step (`step`: optimizer, EMA, mesh, the jitted data-parallel update) apart
from the run (`loop`: run directory, logs, checkpoints, resume, in-training rollouts)."""

from dpjax._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "train": "dpjax.training.loop",
        "TrainingDivergedError": "dpjax.training.loop",
        "make_train_step": "dpjax.training.step",
        "make_optimizer": "dpjax.training.step",
    },
)
