"""Tasks with scripted experts: a pure-JAX multimodal task, PushT, Meta-World."""
