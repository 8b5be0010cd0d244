"""The shipped recipes in experiments/: each loads by name (and NAME:ATTR for its paper-size
variant), trains a few steps through `dpjax train` and evaluates end to end through `dpjax
eval`, writing the PushT metric with its per-episode values."""

import json

import pytest

from dpjax import cli
from dpjax.config import TrainConfig, config_names, load_config_file
from dpjax.errors import ConfigError
from dpjax.training.logs import read_metrics


def test_pusht_recipes_load_by_name_and_variant():
    assert {"pusht_keypoints", "pusht_image"} <= set(config_names())
    for name in ("pusht_keypoints", "pusht_image"):
        cpu, paper = load_config_file(name), load_config_file(f"{name}:PAPER")
        assert isinstance(cpu, TrainConfig) and isinstance(paper, TrainConfig)
        # PAPER is Diffusion Policy's configuration, not the CPU recipe renamed.
        assert paper.policy.denoiser.name == "unet1d"
        assert paper.policy.denoiser.down_dims == (256, 512, 1024)
        assert (paper.policy.prediction_type, paper.policy.sampler) == ("epsilon", "ddpm")
        assert paper.policy.num_inference_steps == paper.policy.num_train_timesteps == 100
        assert (paper.policy.obs_horizon, paper.policy.pred_horizon) == (2, 16)
        assert paper.policy.action_horizon == 8
    assert load_config_file("pusht_image:PAPER").policy.image_encoder == "resnet18"
    with pytest.raises(ConfigError, match="does not define NOPE.*defines CONFIG, PAPER"):
        load_config_file("pusht_keypoints:NOPE")


@pytest.mark.parametrize(
    "config_name, obs_type", [("pusht_keypoints", "keypoints"), ("pusht_image", "pixels")]
)
def test_pusht_recipe_trains_and_evaluates_end_to_end(tmp_path, capsys, config_name, obs_type):
    pytest.importorskip("gym_pusht")
    data, run = tmp_path / "data", tmp_path / "run"
    assert cli.main(["collect", "pusht", "--episodes", "2", "--out", str(data),
                     "--task-option", f"obs_type={obs_type}"]) == 0  # fmt: skip
    # The recipes roll out in training (their last step included): 2 episodes here.
    sets = [f"dataset={data}", "num_steps=3", "batch_size=8", "log_every=1", "eval_every=3",
            "checkpoint_every=3", "val_fraction=0.5", "rollout_episodes=2"]  # fmt: skip
    argv = ["train", config_name, "--out", str(run)]
    for s in sets:
        argv += ["--set", s]
    assert cli.main(argv) == 0
    (last,) = [r for r in read_metrics(run) if r["step"] == 3]
    assert 0.0 <= last["rollout_score"] <= 1.0
    assert cli.main(["eval", str(run), "--episodes", "2", "--steps", "2"]) == 0
    printed = capsys.readouterr().out
    assert "mean_max_reward" in printed
    (result,) = (run / "eval").glob("eval_*.json")
    metrics = json.loads(result.read_text())
    per_episode = metrics["per_episode"]
    assert per_episode["seed"] == [100_000, 100_001]  # Diffusion Policy's test seeds
    assert len(per_episode["max_reward"]) == 2
    assert metrics["mean_max_reward"] == pytest.approx(sum(per_episode["max_reward"]) / 2)
    assert all(0.0 <= r <= 1.0 for r in per_episode["max_reward"])
