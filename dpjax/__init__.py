"""dpjax: diffusion policies for robot control in JAX/Flax."""

__version__ = "0.1.0"
