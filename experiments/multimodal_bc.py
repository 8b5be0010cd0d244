"""Behavioral-cloning baseline on the multimodal cup task: same encoder, a regression head.

dpjax collect multimodal --episodes 200 --out data/multimodal
dpjax train multimodal_bc
"""

import dataclasses

from dpjax.config import load_config_file

DIFFUSION = load_config_file("multimodal_diffusion")
CONFIG = dataclasses.replace(DIFFUSION, policy=dataclasses.replace(DIFFUSION.policy, kind="bc"))
