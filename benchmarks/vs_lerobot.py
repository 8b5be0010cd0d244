"""dpjax vs LeRobot's PyTorch Diffusion Policy, side by side in one run, printed as ratios.

Both policies are Diffusion Policy's state-only PushT configuration: UNet down_dims
(256, 512, 1024), kernel 5, FiLM conditioning on 2 observation steps of a 2-D agent position
and a 16-D environment state (36-D global conditioning, 63,497,090 UNet parameters in both),
horizon 16, 8 executed actions, 100 training timesteps, squaredcos_cap_v2 betas.
Sampling: LeRobot's `diffusion.generate_actions` (encoder + its Python loop over diffusers'
scheduler) under `torch.inference_mode`, vs dpjax's `DiffusionPolicy.act` (host checks,
normalization, encoder, one compiled scan); DDPM for 100 steps, DDIM for 10, same batch.
Training: one LeRobot step (forward, backward, grad-norm clip, AdamW) vs dpjax's full train step
(also window sampling and EMA). Each pair is timed back to back, so the ratio sees the same
machine load; times are medians, with the minimum alongside.

LeRobot is an optional extra: `pip install 'dpjax[lerobot]'`. It imports torchvision at module
level only for image backbones; where no torchvision matching the installed torch exists (a
CPU-only torch next to PyPI's CUDA torchvision), a stub that raises on use stands in for it,
which the state-only policy never touches.

    python benchmarks/vs_lerobot.py                # batch 1 (10, 100 steps), batch 64 (10), train 64
    python benchmarks/vs_lerobot.py --full --json vs_lerobot.json   # adds batch 64 x 100 steps
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.machinery
import os
import sys
import time
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402
import training  # noqa: E402

INSTALL_HINT = "vs_lerobot needs LeRobot: pip install 'dpjax[lerobot]'"
SCHEDULERS = {100: ("DDPM", "ddpm"), 10: ("DDIM", "ddim")}
COLUMNS = [
    ("case", "s"),
    ("batch", "d"),
    ("lerobot_s|LeRobot (s)", ".3f"),
    ("dpjax_s|dpjax (s)", ".3f"),
    ("speedup|dpjax speedup", ".2f"),
    ("lerobot_min_s|LeRobot min (s)", ".3f"),
    ("dpjax_min_s|dpjax min (s)", ".3f"),
    ("speedup_min|speedup (min)", ".2f"),
]


class _Unusable:
    def __init__(self, *args, **kwargs):
        raise ImportError("torchvision is not installed; only image policies need it")


class _StubModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Unusable


class _TorchvisionStub(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        if name == "torchvision" or name.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        return _StubModule(spec.name)

    def exec_module(self, module):
        module.__path__ = []


def _torchvision_usable() -> bool:
    try:
        import torchvision  # noqa: F401
    except Exception:  # missing, or built for another torch (its C ops fail to register)
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        return False
    return True


def import_lerobot():
    """LeRobot's diffusion modules, or None with the reason when it cannot be imported."""
    try:
        import torch  # noqa: F401
    except ImportError as e:
        return None, f"torch: {e}"
    stub = None if _torchvision_usable() else _TorchvisionStub()
    if stub is not None:
        sys.meta_path.insert(0, stub)
    try:
        from lerobot.configs.types import FeatureType, PolicyFeature
        from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
        from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy
    except Exception as e:  # ImportError, or a dependency of the wrong version
        return None, f"{type(e).__name__}: {e}"
    finally:
        if stub is not None:
            sys.meta_path.remove(stub)
    return types.SimpleNamespace(
        FeatureType=FeatureType,
        PolicyFeature=PolicyFeature,
        DiffusionConfig=DiffusionConfig,
        DiffusionPolicy=DiffusionPolicy,
    ), None


def lerobot_policy(lr, scheduler: str, steps: int):
    f = lr.FeatureType
    config = lr.DiffusionConfig(
        input_features={
            "observation.state": lr.PolicyFeature(f.STATE, (2,)),
            "observation.environment_state": lr.PolicyFeature(f.ENV, (16,)),
        },
        output_features={"action": lr.PolicyFeature(f.ACTION, (_common.ACTION_DIM,))},
        n_obs_steps=2,
        horizon=16,
        n_action_steps=8,
        down_dims=(256, 512, 1024),
        noise_scheduler_type=scheduler,
        num_train_timesteps=100,
        num_inference_steps=steps,
        device="cpu",
    )
    return lr.DiffusionPolicy(config)


def lerobot_batch(batch: int, with_action: bool = False):
    import torch

    obs = torch.from_numpy(_common.observation(batch)["state"])
    out = {"observation.state": obs[..., :2], "observation.environment_state": obs[..., 2:]}
    if with_action:
        out["action"] = torch.rand(batch, 16, _common.ACTION_DIM) * 2 - 1
        out["action_is_pad"] = torch.zeros(batch, 16, dtype=torch.bool)
    return out


def _pair(case: str, batch: int, lerobot_fn, dpjax_fn, seconds: float) -> dict:
    lerobot_fn(), dpjax_fn()  # warm-up (and dpjax's compile)
    lt = _common.time_call(lerobot_fn, min_seconds=seconds, min_repeats=2)
    dt = _common.time_call(dpjax_fn, min_seconds=seconds, min_repeats=2)
    row = {
        "case": case,
        "batch": batch,
        "lerobot_s": lt["median_s"],
        "dpjax_s": dt["median_s"],
        "speedup": lt["median_s"] / dt["median_s"],
        "lerobot_min_s": lt["min_s"],
        "dpjax_min_s": dt["min_s"],
        "speedup_min": lt["min_s"] / dt["min_s"],
    }
    print(f"{case} batch {batch}: LeRobot {lt['median_s']:.3f} s, dpjax {dt['median_s']:.3f} s, "
          f"x{row['speedup']:.2f}", file=sys.stderr, flush=True)  # fmt: skip
    return row


def sampling_rows(lr, cases, seconds: float) -> list[dict]:
    import jax
    import torch

    policy = _common.make_pusht_policy("unet1d")
    params = policy.init(jax.random.key(0))
    rows = []
    for batch, steps in cases:
        scheduler, method = SCHEDULERS[steps]
        theirs = lerobot_policy(lr, scheduler, steps).eval()
        tb = lerobot_batch(batch)
        obs = _common.observation(batch)
        key = jax.random.key(0)

        def lerobot_fn(theirs=theirs, tb=tb):
            with torch.inference_mode():
                return theirs.diffusion.generate_actions(tb)

        def dpjax_fn(obs=obs, method=method, steps=steps, key=key):
            out = policy.act(params, obs, key, sampler=method, num_inference_steps=steps)
            return jax.block_until_ready(out)

        case = f"sample {steps} {scheduler} steps"
        rows.append(_pair(case, batch, lerobot_fn, dpjax_fn, seconds))
        del theirs
    return rows


def training_rows(lr, batches, seconds: float) -> list[dict]:
    import jax
    import torch

    rows = []
    for batch in batches:
        theirs = lerobot_policy(lr, "DDPM", 100).train()
        optimizer = torch.optim.AdamW(
            theirs.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6
        )
        tb = lerobot_batch(batch, with_action=True)

        def lerobot_fn(theirs=theirs, optimizer=optimizer, tb=tb):
            loss, _ = theirs.forward(tb)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(theirs.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad()

        step, state, data, _ = training.make_step("unet1d", batch, 1)
        holder = {"state": state}

        def dpjax_fn(step=step, data=data, holder=holder):
            holder["state"], metrics = step(holder["state"], data)
            jax.block_until_ready(metrics)

        rows.append(_pair("train 1 step", batch, lerobot_fn, dpjax_fn, seconds))
        del theirs, optimizer
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sample", nargs="*", default=["1x10", "1x100", "64x10"],
                        help="sampling cases BATCHxSTEPS, steps 10 (DDIM) or 100 (DDPM)")  # fmt: skip
    parser.add_argument("--train-batches", type=int, nargs="*", default=[64])
    parser.add_argument("--seconds", type=float, default=2.0, help="timing budget per side")
    parser.add_argument(
        "--torch-threads", type=int, help="torch.set_num_threads (default: torch's)"
    )
    parser.add_argument("--full", action="store_true", help="also batch 64 x 100 steps")
    parser.add_argument("--json", help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    cases = []
    for spec in args.sample + (["64x100"] if args.full and "64x100" not in args.sample else []):
        batch, _, steps = spec.partition("x")
        if not steps.isdigit() or int(steps) not in SCHEDULERS or not batch.isdigit():
            parser.error(f"--sample {spec!r}: expected BATCHxSTEPS with steps 10 or 100")
        cases.append((int(batch), int(steps)))
    lr, reason = import_lerobot()
    if lr is None:
        print(f"{INSTALL_HINT} ({reason})", file=sys.stderr)
        return 2
    import lerobot
    import torch

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    info = _common.machine()
    t0 = time.perf_counter()
    rows = sampling_rows(lr, cases, args.seconds) + training_rows(
        lr, args.train_batches, args.seconds
    )
    versions = (
        f"lerobot {getattr(lerobot, '__version__', '?')}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads)"
    )
    print(_common.header("dpjax vs LeRobot Diffusion Policy (PushT state, UNet 63.5M)", info))
    print(f"# {versions}; speedup = LeRobot time / dpjax time; {time.perf_counter() - t0:.0f} s")
    print(_common.markdown_table(COLUMNS, rows))
    _common.write_json(args.json, "vs_lerobot", args, rows, versions=versions)
    return 0


if __name__ == "__main__":
    sys.exit(main())
