"""PushT from pixels (Diffusion Policy's image PushT): a 96 x 96 RGB frame + 2-D agent position,
2 observation steps, 16 predicted / 8 executed actions; random 84 x 84 crops in training
(center crops at evaluation), as Diffusion Policy does.

    dpjax collect pusht --episodes 200 --out data/pusht_img --task-option obs_type=pixels
    dpjax train pusht_image --set dataset=data/pusht_img          # the CPU recipe
    dpjax train pusht_image:PAPER --set dataset=data/pusht_img    # the paper's size (GPU)
    dpjax eval runs/pusht_image                                   # 50 episodes, mean_max_reward

CONFIG is sized for a 2-core CPU: the small CNN encoder on half-resolution crops
(`small_cnn_pool2`: 84 x 84 crops averaged to 42 x 42, three stride-2 3x3 convs, a spatial
softmax; on one AMD EPYC core a train step takes 0.85 s at full resolution, 0.29 s at half,
the convolutions' backward pass making the difference: `python benchmarks/nets_primitives.py
--encoders`) and the keypoint recipe's denoiser, 12,000 steps at batch 64 with closed-loop
rollouts every 4,000. Measured on 3 seeds (experiments/results/pusht_image.md): mean_max_reward
0.897 (0.881-0.921), success 49%, DDIM 10, last checkpoint; 90 min a seed on a 2-core CPU
with three seeds trained side by side (Diffusion Policy, image, CNN: 0.91 best / 0.84 last). PAPER is Diffusion Policy's image
configuration: a ResNet-18 (group norm, spatial softmax) per camera, ConditionalUnet1D
(256, 512, 1024), epsilon prediction, DDPM 100 / 100 steps, batch 64, AdamW 1e-4, EMA, 3000
epochs (~300k steps at batch 64 on 200 demonstrations): a GPU job (LeRobot reports ~7 h for
200k steps on an RTX 3090).
"""

import dataclasses
from pathlib import Path

from dpjax.config import load_config_file

_HERE = Path(__file__).resolve().with_name("pusht_keypoints.py")  # beside this file
_KEYPOINTS = load_config_file(str(_HERE))
_KEYPOINTS_PAPER = load_config_file(f"{_HERE}:PAPER")

CONFIG = dataclasses.replace(
    _KEYPOINTS,
    dataset="data/pusht_img",
    policy=dataclasses.replace(
        _KEYPOINTS.policy,
        low_dim_keys=("agent_pos",),
        image_keys=("image",),
        image_encoder="small_cnn_pool2",
        crop_hw=(84, 84),
    ),
    batch_size=64,
    num_steps=12_000,
    eval_every=2_000,
    checkpoint_every=2_000,
    max_to_keep=12,
    rollout_every=4_000,
)

PAPER = dataclasses.replace(
    _KEYPOINTS_PAPER,
    dataset="data/pusht_img",
    policy=dataclasses.replace(
        _KEYPOINTS_PAPER.policy,
        low_dim_keys=("agent_pos",),
        image_keys=("image",),
        image_encoder="resnet18",
        crop_hw=(84, 84),
    ),
    batch_size=64,
    num_steps=300_000,
)
