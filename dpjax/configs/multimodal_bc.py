"""Behavioral-cloning baseline on the multimodal cup task: the diffusion recipe's encoder and
horizons, a regression head, 4000 steps (the setting with the lowest validation loss in
experiments/results/cup.md's BC sweep); what `dpjax demo` trains as its baseline.

    dpjax collect multimodal --episodes 200 --out data/multimodal
    dpjax train multimodal_bc --set dataset=data/multimodal
"""

from dpjax.configs.multimodal_diffusion import recipe

CONFIG = recipe("data/multimodal", kind="bc", num_steps=4000)
