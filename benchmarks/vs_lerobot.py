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
    python benchmarks/vs_lerobot.py --parity       # same weights in both UNets: do they agree?

`--parity` times nothing: it initializes dpjax's `ConditionalUnet1D` at random, converts the
parameters into a state_dict for LeRobot's `DiffusionConditionalUnet1d`
(`dpjax_unet_to_lerobot_state_dict`, loaded with strict=True, so every torch parameter is
assigned), runs both on the same random noisy actions, timesteps and global conditioning, with
both of dpjax's conv implementations ("matmul" and "lax"), and prints the largest differences.
Exit status 0 when every case's max |dpjax - LeRobot| / max |LeRobot| is within `--tolerance`,
1 otherwise.
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.machinery
import os
import re
import sys
import time
import types
from collections.abc import Mapping
from typing import Any

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
PARITY_COLUMNS = [
    ("case", "s"),
    ("conv|dpjax conv", "s"),
    ("batch", "d"),
    ("max_abs_diff|max abs(dpjax - LeRobot)", ".2e"),
    ("max_abs_lerobot|max abs(LeRobot)", ".3f"),
    ("rel_err|relative error", ".2e"),
]
# float32 on both sides: measured differences are ~1e-6 of the output scale; a wrong layer order,
# epsilon, activation or kernel layout gives O(1e-2..1).
PARITY_TOLERANCE = 1e-4


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
        from lerobot.policies.diffusion.modeling_diffusion import (
            DiffusionConditionalUnet1d,
            DiffusionPolicy,
        )
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
        DiffusionConditionalUnet1d=DiffusionConditionalUnet1d,
    ), None


def lerobot_config(lr, scheduler: str, steps: int, **overrides):
    f = lr.FeatureType
    sizes = {"down_dims": (256, 512, 1024), **overrides}
    return lr.DiffusionConfig(
        input_features={
            "observation.state": lr.PolicyFeature(f.STATE, (2,)),
            "observation.environment_state": lr.PolicyFeature(f.ENV, (16,)),
        },
        output_features={"action": lr.PolicyFeature(f.ACTION, (_common.ACTION_DIM,))},
        n_obs_steps=2,
        horizon=16,
        n_action_steps=8,
        noise_scheduler_type=scheduler,
        num_train_timesteps=100,
        num_inference_steps=steps,
        device="cpu",
        **sizes,
    )


def lerobot_policy(lr, scheduler: str, steps: int):
    return lr.DiffusionPolicy(lerobot_config(lr, scheduler, steps))


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


# ------------------------------------------------ --parity: same weights, same function?

_BLOCK = re.compile(r"ConditionalResidualBlock1D_(\d+)$")


def _width(flat: Mapping[tuple[str, ...], Any], block: str) -> int | None:
    """Output channels of a residual block, from whichever of its leaves is there."""
    for path, leaf in flat.items():
        if path[0] != block:
            continue
        if path[1:3] in (("Conv1DBlock_0", "GroupNorm_0"), ("Conv1DBlock_1", "GroupNorm_0")):
            return int(leaf.shape[0])
        if path[1] in ("Conv1DBlock_0", "Conv1DBlock_1") and path[2:3] == ("Conv1D_0",):
            return int(leaf.shape[0])
        if path[1:] == ("Dense_0", "bias"):
            return int(leaf.shape[0]) // 2
    return None


def _conv(prefix: tuple[str, ...], name: str, kind: str = "conv") -> dict:
    return {
        (*prefix, "kernel"): (f"{name}.weight", kind),
        (*prefix, "bias"): (f"{name}.bias", "copy"),
    }


def _dense(prefix: tuple[str, ...], name: str) -> dict:
    return _conv(prefix, name, "dense")


def _conv_block(prefix: tuple[str, ...], name: str) -> dict:
    """dpjax Conv1DBlock (Conv1D, GroupNorm) -> LeRobot DiffusionConv1dBlock (block.0, block.1)."""
    return {
        **_conv((*prefix, "Conv1D_0"), f"{name}.block.0"),
        (*prefix, "GroupNorm_0", "scale"): (f"{name}.block.1.weight", "copy"),
        (*prefix, "GroupNorm_0", "bias"): (f"{name}.block.1.bias", "copy"),
    }


def _residual_block(index: int, name: str, channels_in: int, channels_out: int) -> dict:
    block = (f"ConditionalResidualBlock1D_{index}",)
    names = {
        **_conv_block((*block, "Conv1DBlock_0"), f"{name}.conv1"),
        **_dense((*block, "Dense_0"), f"{name}.cond_encoder.1"),  # FiLM [scale | bias], both
        **_conv_block((*block, "Conv1DBlock_1"), f"{name}.conv2"),
    }
    if channels_in != channels_out:
        names.update(_conv((*block, "Conv1D_0"), f"{name}.residual_conv"))
    return names


def lerobot_unet_names(params: Mapping) -> dict[tuple[str, ...], tuple[str, str]]:
    """dpjax ConditionalUnet1D leaf path -> (LeRobot DiffusionConditionalUnet1d parameter, layout).

    The layout is read off `params` (the number of residual blocks gives the levels, their
    widths the down_dims); raises ValueError naming every leaf that is missing or has no
    LeRobot counterpart.
    """
    from flax.traverse_util import flatten_dict

    tree = params["params"] if set(params) == {"params"} else params
    flat = flatten_dict(dict(tree))
    blocks = sorted({int(m.group(1)) for m in map(_BLOCK.match, (p[0] for p in flat)) if m})
    levels = max(1, round(len(blocks) / 4))  # per level: 2 down, 2 up (but the coarsest); 2 mid
    down_dims = []
    for level in range(levels):
        width = _width(flat, f"ConditionalResidualBlock1D_{2 * level}")
        width = width or _width(flat, f"ConditionalResidualBlock1D_{2 * level + 1}")
        if width is None:
            raise ValueError(
                f"dpjax UNet params: no leaves for ConditionalResidualBlock1D_{2 * level} or "
                f"_{2 * level + 1}, so level {level}'s width is unknown (blocks found: {blocks})"
            )
        down_dims.append(width)
    first = flat.get(("ConditionalResidualBlock1D_0", "Conv1DBlock_0", "Conv1D_0", "kernel"))
    final = flat.get(("Conv1D_0", "kernel"), flat.get(("Conv1D_0", "bias")))
    if first is None and final is None:
        raise ValueError("dpjax UNet params: neither the first conv nor the final conv is there")
    action_dim = int(final.shape[0] if final is not None else first.shape[-1])

    names = {
        **_dense(("TimestepEmbedding_0", "Dense_0"), "diffusion_step_encoder.1"),
        **_dense(("TimestepEmbedding_0", "Dense_1"), "diffusion_step_encoder.3"),
    }
    index = 0
    for level, width in enumerate(down_dims):
        channels_in = action_dim if level == 0 else down_dims[level - 1]
        names.update(_residual_block(index, f"down_modules.{level}.0", channels_in, width))
        names.update(_residual_block(index + 1, f"down_modules.{level}.1", width, width))
        index += 2
        if level < levels - 1:
            names.update(_conv((f"Downsample1D_{level}",), f"down_modules.{level}.2"))
    for i in range(2):
        names.update(_residual_block(index, f"mid_modules.{i}", down_dims[-1], down_dims[-1]))
        index += 1
    for up in range(levels - 1):
        width, coarser = down_dims[levels - 2 - up], down_dims[levels - 1 - up]
        names.update(_residual_block(index, f"up_modules.{up}.0", 2 * coarser, width))
        names.update(_residual_block(index + 1, f"up_modules.{up}.1", width, width))
        names.update(_conv((f"Upsample1D_{up}",), f"up_modules.{up}.2", "conv_transpose"))
        index += 2
    names.update(_conv_block(("Conv1DBlock_0",), "final_conv.0"))
    names.update(_conv(("Conv1D_0",), "final_conv.1"))

    missing = sorted("/".join(p) for p in names.keys() - flat.keys())
    extra = sorted("/".join(p) for p in flat.keys() - names.keys())
    if missing or extra:
        problems = [f"missing (LeRobot needs them): {', '.join(missing)}"] if missing else []
        problems += [f"no LeRobot counterpart: {', '.join(extra)}"] if extra else []
        raise ValueError(
            f"dpjax UNet params do not match LeRobot's DiffusionConditionalUnet1d with "
            f"down_dims {tuple(down_dims)}, action_dim {action_dim}: " + "; ".join(problems)
        )
    return {path: names[path] for path in flat}


def dpjax_unet_to_lerobot_state_dict(params: Mapping) -> dict[str, Any]:
    """dpjax `ConditionalUnet1D` params (with or without the "params" collection) -> a state_dict
    for LeRobot's `DiffusionConditionalUnet1d` (float32 torch tensors).

    Layouts: Dense kernels (in, out) -> Linear weight (out, in); conv kernels (out, k, in) ->
    Conv1d weight (out, in, k); the upsample's (out, k, in), already in PyTorch's tap order
    (tap j sends input i to output 2i - 1 + j) -> ConvTranspose1d weight (in, out, k), no flip;
    GroupNorm scale -> weight. FiLM's Dense emits [scale | bias] in both.
    """
    names = lerobot_unet_names(params)  # before torch: a mismatch is reported without it
    import numpy as np
    import torch
    from flax.traverse_util import flatten_dict

    tree = params["params"] if set(params) == {"params"} else params
    flat = flatten_dict(dict(tree))
    axes = {"copy": None, "dense": (1, 0), "conv": (0, 2, 1), "conv_transpose": (2, 0, 1)}
    state = {}
    for path, (name, kind) in names.items():
        value = np.asarray(flat[path]).astype(np.float32)
        if axes[kind] is not None:
            value = value.transpose(axes[kind])
        state[name] = torch.from_numpy(np.ascontiguousarray(value))
    return state


def parity_rows(lr, args) -> tuple[list[dict], dict]:
    import jax
    import numpy as np
    import torch

    from dpjax.nets.unet1d import ConditionalUnet1D

    unet = _common.DENOISERS["unet1d"]
    horizon, action_dim = _common.PUSHT["pred_horizon"], _common.ACTION_DIM
    cond_dim = _common.PUSHT["obs_horizon"] * _common.STATE_DIM  # 36, as LeRobot computes it
    sizes = dict(
        down_dims=tuple(args.down_dims),
        kernel_size=unet.kernel_size,
        n_groups=args.n_groups,
    )
    config = lerobot_config(lr, "DDPM", 100, **sizes, diffusion_step_embed_dim=unet.step_embed_dim)
    theirs = lr.DiffusionConditionalUnet1d(config, global_cond_dim=cond_dim).eval()

    rng = np.random.default_rng(args.seed)
    cases = []
    for batch in args.parity_batches:
        for case in ("random timesteps", "timestep 0", "timestep 99"):
            if case == "random timesteps":
                t = rng.integers(0, 100, batch)
            else:
                t = np.full(batch, int(case.split()[-1]))
            x = rng.standard_normal((batch, horizon, action_dim)).astype(np.float32)
            cond = rng.standard_normal((batch, cond_dim)).astype(np.float32)
            cases.append((case, batch, x, t.astype(np.int32), cond))

    def model(impl: str) -> ConditionalUnet1D:
        return ConditionalUnet1D(
            action_dim=action_dim,
            cond_dim=cond_dim,
            step_embed_dim=unet.step_embed_dim,
            conv_impl=impl,
            **sizes,
        )

    _, _, x0, t0, c0 = cases[0]
    params = jax.jit(model("matmul").init)(jax.random.key(args.seed), x0, t0, c0)
    theirs.load_state_dict(dpjax_unet_to_lerobot_state_dict(params), strict=True)
    with torch.inference_mode():
        reference = [
            theirs(torch.from_numpy(x), torch.from_numpy(t.astype(np.int64)), torch.from_numpy(c))
            .numpy()
            .astype(np.float64)
            for _, _, x, t, c in cases
        ]
    counts = {
        "dpjax_params": sum(int(np.size(a)) for a in jax.tree.leaves(params)),
        "lerobot_params": sum(p.numel() for p in theirs.parameters()),
    }
    rows = []
    for impl in ("matmul", "lax"):
        apply = jax.jit(model(impl).apply)
        for (case, batch, x, t, c), ref in zip(cases, reference, strict=True):
            ours = np.asarray(apply(params, x, t, c), dtype=np.float64)
            diff, scale = float(np.max(np.abs(ours - ref))), float(np.max(np.abs(ref)))
            rows.append({
                "case": case,
                "conv": impl,
                "batch": batch,
                "max_abs_diff": diff,
                "max_abs_lerobot": scale,
                "rel_err": diff / scale,
            })  # fmt: skip
            print(f"{impl} {case} batch {batch}: max diff {diff:.2e}, relative {diff / scale:.2e}",
                  file=sys.stderr, flush=True)  # fmt: skip
    return rows, counts


def parity_main(lr, args) -> int:
    import lerobot
    import torch

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    info = _common.machine()
    t0 = time.perf_counter()
    rows, counts = parity_rows(lr, args)
    worst = max(r["rel_err"] for r in rows)
    ok = worst <= args.tolerance
    versions = (
        f"lerobot {getattr(lerobot, '__version__', '?')}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads)"
    )
    print(_common.header("dpjax ConditionalUnet1D vs LeRobot DiffusionConditionalUnet1d, "
                         "same weights", info))  # fmt: skip
    print(f"# {versions}; down_dims {tuple(args.down_dims)}, kernel 5, n_groups {args.n_groups}, "
          f"step embed 128, global cond 36, horizon 16, action dim 2; "
          f"{counts['dpjax_params']:,} parameters (LeRobot {counts['lerobot_params']:,}); "
          f"float32; {time.perf_counter() - t0:.0f} s")  # fmt: skip
    print("# relative error = max |dpjax - LeRobot| / max |LeRobot| over the (B, 16, 2) output")
    print(_common.markdown_table(PARITY_COLUMNS, rows))
    print(f"# max relative error {worst:.2e}, tolerance {args.tolerance:.0e}: "
          f"{'PASS' if ok else 'FAIL'}")  # fmt: skip
    _common.write_json(args.json, "vs_lerobot", args, rows, versions=versions, parity=counts)
    return 0 if ok else 1


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
    parity = parser.add_argument_group("--parity (times nothing; the options above but --json "
                                       "and --torch-threads are ignored)")  # fmt: skip
    parity.add_argument("--parity", action="store_true",
                        help="compare dpjax's and LeRobot's UNet outputs with the same weights")  # fmt: skip
    parity.add_argument("--parity-batches", type=int, nargs="+", default=[1, 8],
                        help="batch sizes; each runs random timesteps, timestep 0 and 99")  # fmt: skip
    parity.add_argument("--down-dims", type=int, nargs="+",
                        default=list(_common.DENOISERS["unet1d"].down_dims),
                        help="UNet widths (default %(default)s; the test uses 16 32)")  # fmt: skip
    parity.add_argument("--n-groups", type=int, default=_common.DENOISERS["unet1d"].n_groups,
                        help="GroupNorm groups of the residual blocks (the final block has 8 "
                        "in both)")  # fmt: skip
    parity.add_argument("--tolerance", type=float, default=PARITY_TOLERANCE,
                        help="largest relative error that passes (default %(default)g)")  # fmt: skip
    parity.add_argument("--seed", type=int, default=0)
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
    if args.parity:
        return parity_main(lr, args)
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
