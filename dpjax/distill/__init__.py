"""Students of a trained diffusion policy: consistency (1-3 steps) and BC (`dpjax distill`)."""

from dpjax.distill.students import DISTILL_METHODS, ModeSeeking, distill, student_config

__all__ = ["DISTILL_METHODS", "ModeSeeking", "distill", "student_config"]
