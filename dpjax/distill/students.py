"""Students of a trained policy: a run directory that `dpjax eval` and `load_policy` accept.

consistency: a 1-3 step diffusion student. The student learns the teacher's consistency
    function f(x_t, t) = the end of the teacher's deterministic sampling trajectory through
    x_t. Targets are computed, not bootstrapped: every training batch draws x_T, runs the
    teacher's ODE sampler (DDIM or flow Euler, `teacher_steps` denoiser calls) on the batch's
    observations, and the student regresses that endpoint from x_T and from one random point
    of the trajectory (Luhman & Luhman 2021's one-step distillation, extended to every
    trajectory point as the consistency function is; Song et al.'s self-consistency loss
    replaces the endpoint by a one-step bootstrap because for images the full trajectory is
    too expensive, which for action chunks it is not). The student is the teacher's network,
    initialized from the teacher, predicting the clean chunk (VP: prediction_type="sample",
    sampled with DDIM at 1 step; flow teacher: a flow student whose velocity is
    (x_s - endpoint) / s, sampled with flow_euler at 1 step). With gate_modes K > 1 the
    student has a mode gate (`dpjax.nets.NoiseGate`, `gate_fit`): x_T and the observation
    pick one of K codes of the conditioning, so the one-step map can jump between the
    teacher's modes where one smooth network would blur across their boundaries.
bc: a regression (BC) student fitting the teacher's sampled chunks (its default sampler) on
    the dataset's observations: one forward pass, the seed's "train small BC from diffusion",
    and the backup of `dpjax.policy.fallback.FallbackPolicy`. With policy.bc_head.num_hypotheses=K
    (`--set`) its head proposes K chunks and draws one per call (a multimodal teacher's modes
    stay apart instead of being averaged).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from dpjax import losses, samplers
from dpjax.config import TrainConfig
from dpjax.errors import ConfigError, unknown_name
from dpjax.policy.loading import load_policy, load_run_config
from dpjax.policy.policies import PolicyNetwork

DISTILL_METHODS: tuple[str, ...] = ("consistency", "bc")
# The teacher's grid: 12 trailing steps over T = 100 visit 99, 66, 49, 32 and 24, the first
# timesteps of the student's 1-, 2-, 3- and 4-step trailing grids.
DEFAULT_TEACHER_STEPS = 12


def student_config(
    teacher: TrainConfig,
    method: str,
    *,
    num_steps: int,
    hidden_dims: tuple[int, ...] | None = None,
    gate_modes: int = 1,
) -> TrainConfig:
    """The student's TrainConfig: the teacher's data, horizons and observation keys."""
    tp = teacher.policy
    if gate_modes != 1 and method != "consistency":
        raise ConfigError(f"a mode gate is part of a consistency student; --method {method} "
                          "takes none (a BC student's modes: policy.bc_head.num_hypotheses)")  # fmt: skip
    if method == "consistency":
        if tp.objective == "flow_matching":
            policy = dataclasses.replace(tp, sampler="flow_euler", num_inference_steps=1)
        else:
            policy = dataclasses.replace(
                tp, prediction_type="sample", sampler="ddim", num_inference_steps=1,
                timestep_spacing="trailing", eta=0.0, loss_weighting="none",
                clip_sample=tp.clip_sample if tp.clip_sample is not None else 1.0,
            )  # fmt: skip
        policy = dataclasses.replace(policy, gate_modes=gate_modes)
    elif method == "bc":
        head = dataclasses.replace(tp.bc_head, hidden_dims=hidden_dims or (256, 256))
        policy = dataclasses.replace(tp, kind="bc", bc_head=head)
    else:
        raise unknown_name("distillation method", method, DISTILL_METHODS)
    # In-training rollouts stay available (the loop runs them on the student's policy).
    return dataclasses.replace(teacher, policy=policy, num_steps=num_steps)


def teacher_options(teacher_policy, method: str, teacher_sampler: str | None, teacher_steps):
    """The teacher's sampler: deterministic for consistency (the ODE whose map is learned)."""
    tc = teacher_policy.config
    if method == "consistency":
        default = "flow_euler" if tc.objective == "flow_matching" else "ddim"
        options = tc.sampler_options(
            sampler=teacher_sampler or default,
            num_inference_steps=teacher_steps or DEFAULT_TEACHER_STEPS,
            eta=0.0,
        )
        if samplers.get_sampler(options.sampler).is_stochastic(options):
            raise ConfigError(
                f"--teacher-sampler {options.sampler!r} is stochastic; consistency distillation "
                "learns the map of a deterministic sampler (ddim, dpmsolver++, euler, heun, "
                "flow_euler, flow_midpoint)"
            )
        return options
    return tc.sampler_options(sampler=teacher_sampler, num_inference_steps=teacher_steps)


def _teacher_sample(teacher, teacher_params, cond, key, options, sample_fn):
    """`sample_fn` (samplers.sample_with_options or sample_trajectory) of the teacher on fresh
    x_T given its encoded observation `cond` (B, C), in normalized action space, with no
    gradient."""
    c = teacher.config
    key_noise, key_sampler = jax.random.split(key)
    x_T = jax.random.normal(key_noise, (cond.shape[0], c.pred_horizon, c.action_dim))
    denoise = teacher.denoiser(teacher_params, teacher.gated(teacher_params, x_T, cond))
    out = sample_fn(denoise, x_T, teacher.schedule, options, key_sampler)
    return jax.tree.map(jax.lax.stop_gradient, out)


def consistency_loss(student, teacher, options, mode_seeking: ModeSeeking | None = None):
    """loss(params, batch, key, teacher_params): the student's clean-chunk estimate from x_T
    and from a random point of the teacher's trajectory, against the trajectory's end; with
    `mode_seeking`, plus its pull of the one-step chunk toward the teacher's modes."""
    sc, tc = student.config, teacher.config
    student_process = samplers.get_sampler(sc.sampler).process
    teacher_process = samplers.get_sampler(tc.sampler).process

    def loss(params, batch, key, teacher_params):
        key_teacher, key_pick, key_aug, key_pull = jax.random.split(key, 4)
        teacher_cond = teacher._encode(teacher_params, batch["observation"], False)
        x0, inputs, ts = _teacher_sample(
            teacher, teacher_params, teacher_cond, key_teacher, options,
            samplers.sample_trajectory,
        )  # fmt: skip
        cond = student._encode(params, batch["observation"], True, key_aug)
        gate_loss, gate_metrics = 0.0, {}
        if sc.gate_modes > 1:
            x_T = inputs[0]
            mode, gate_loss, gate_metrics = gate_fit(
                student.apply(params, cond, method=PolicyNetwork.mode_centroids),
                student.apply(params, x_T, cond, method=PolicyNetwork.mode_logits),
                x0,
            )
            cond = student.gated(params, x_T, cond, mode)
        denoise = student.denoiser(params, cond)

        def estimate(x_t, t):
            out = denoise(x_t, t).astype(jnp.float32)
            return samplers.clean_estimate(out, x_t, t, student.schedule, student_process,
                                           sc.prediction_type)  # fmt: skip

        pull = None
        if mode_seeking is not None:
            teacher_denoise = teacher.denoiser(teacher_params, teacher_cond)

            def teacher_clean(x_t, t):
                out = teacher_denoise(x_t, t).astype(jnp.float32)
                return samplers.clean_estimate(out, x_t, t, teacher.schedule, teacher_process,
                                               tc.prediction_type)  # fmt: skip

            renoise = lambda x, t, noise: samplers.noised(x, t, noise, teacher.schedule,
                                                          teacher_process)  # fmt: skip
            pull = lambda sample: mode_seeking.pull(
                sample, teacher_clean, renoise, key_pull, tc.num_train_timesteps,
                continuous=teacher_process == "flow",
            )  # fmt: skip
        loss, metrics = consistency_regression(estimate, x0, inputs, ts, key_pick, pull)
        loss = loss + gate_loss
        return loss, {**metrics, **gate_metrics, "loss": loss}

    return loss


def gate_fit(centroids, logits, x0):
    """A mode gate (`dpjax.nets.NoiseGate`) against the teacher's chunks x0 (B, H, A): its
    centroids (B, K, H, A) fit x0 by relaxed winner-takes-all and its logits (B, K), read from
    the noise x0 was sampled from, learn each chunk's winner (`losses.multi_hypothesis_loss`).
    Returns (winner (B,), the gate's loss, its metrics): the student then regresses each
    chunk with its winner's code, so that no code's map spans two modes."""
    gate_loss, fit = losses.multi_hypothesis_loss(centroids, logits, x0)
    mode = jnp.argmin(losses.hypothesis_errors(centroids, x0), axis=1)
    metrics = {
        "gate_cross_entropy": fit["cross_entropy"],
        "gate_accuracy": jnp.mean(jnp.argmax(logits, axis=-1) == mode),
        "centroid_mse": fit["mse"],
    }
    return mode, gate_loss, metrics


@dataclasses.dataclass(frozen=True)
class ModeSeeking:
    """A mode-seeking term for a one-step student: score distillation (Poole et al. 2022's
    SDS; the teacher's half of One-Step Diffusion Policy's and DMD's KL gradient). The
    student's one-step chunk x is re-noised to x_t at a random time t <= max_time * T and
    pulled toward the teacher's clean estimate of x_t (no gradient through the teacher):
    weight * |x - sg(x0_teacher(x_t, t))|^2. A chunk between two modes is pulled to the nearer
    one, so where a regression blurs the noise -> mode map it picks a mode instead; small
    times keep the pull local (at large ones the teacher's estimate is the modes' mean).
    Too strong a pull moves samples across the boundaries (mode frequencies drift) and
    narrows each mode."""

    weight: float = 3.0
    max_time: float = 0.2

    def __post_init__(self):
        if not self.weight > 0:
            raise ConfigError(f"mode-seeking weight must be > 0, got {self.weight}")
        if not 0 < self.max_time <= 1:
            raise ConfigError(f"mode-seeking max time must be in (0, 1], got {self.max_time}")

    def pull(self, sample, teacher_clean, renoise, key, num_train_timesteps: int,
             continuous: bool = False) -> jnp.ndarray:  # fmt: skip
        """The weighted pull on `sample` (B, ...); teacher_clean(x_t, t) -> x_0 estimate,
        renoise(x_0, t, noise) -> x_t; integer times 1..max_time*T, or uniform on
        (0, max_time*T] for a flow teacher (`continuous`)."""
        key_t, key_noise = jax.random.split(key)
        batch_size = sample.shape[0]
        top = self.max_time * num_train_timesteps
        if continuous:
            t = top * (1.0 - jax.random.uniform(key_t, (batch_size,)))
        else:
            t = jax.random.randint(key_t, (batch_size,), 1, max(int(round(top)), 1) + 1)
        x_t = renoise(sample, t, jax.random.normal(key_noise, sample.shape, sample.dtype))
        target = jax.lax.stop_gradient(teacher_clean(x_t, t))
        return self.weight * jnp.mean((sample - target) ** 2)


def consistency_regression(clean_estimate, x0, inputs, ts, key, pull=None):
    """(loss, metrics) of a student `clean_estimate(x_t (B, ...), t (B,)) -> x_0 estimate`
    against a teacher trajectory's end x0 (B, ...), from its start inputs[0] = x_T and from
    one random point inputs[k] (inputs (S, B, ...), their times ts (S,)), weighted 1:1;
    `pull(one_step_estimate) -> scalar` (a ModeSeeking term) is added when given.
    metrics["mse"] is the one-step error alone."""
    batch_size = x0.shape[0]
    pick = jax.random.randint(key, (batch_size,), 0, inputs.shape[0])
    first = clean_estimate(inputs[0], jnp.full((batch_size,), ts[0]))
    middle = clean_estimate(inputs[pick, jnp.arange(batch_size)], ts[pick])
    one_step = jnp.mean((first - x0) ** 2)
    loss = 0.5 * (one_step + jnp.mean((middle - x0) ** 2))
    metrics = {"mse": one_step}
    if pull is not None:
        metrics["mode_seeking"] = pull(first)
        loss = loss + metrics["mode_seeking"]
    return loss, {"loss": loss, **metrics}


def bc_loss(student, teacher, options):
    """loss(params, batch, key, teacher_params): MSE to the teacher's sampled chunk."""

    def loss(params, batch, key, teacher_params):
        key_teacher, key_aug = jax.random.split(key)
        teacher_cond = teacher._encode(teacher_params, batch["observation"], False)
        target = _teacher_sample(
            teacher, teacher_params, teacher_cond, key_teacher, options,
            samplers.sample_with_options,
        )  # fmt: skip
        cond = student._encode(params, batch["observation"], True, key_aug)
        return student.fit_loss(params, cond, target)

    return loss


def starting_params(student, teacher_params, key: jax.Array):
    """A consistency student's first parameters: its teacher's, plus a fresh mode gate where
    the student has one and the teacher not. The shared modules must have the teacher's
    shapes (the student is the teacher's network)."""
    fresh = student.init(key)
    shared = teacher_params["params"]
    mismatch = [name for name in shared if name not in fresh["params"] or
                jax.tree.structure(shared[name]) != jax.tree.structure(fresh["params"][name])]  # fmt: skip
    if mismatch:
        raise ConfigError(f"the student's network differs from its teacher's in {mismatch}")
    return {**fresh, **teacher_params, "params": {**fresh["params"], **shared}}


def distill(
    teacher_run: str | Path,
    method: str,
    out: str | Path,
    *,
    num_steps: int | None = None,
    teacher_sampler: str | None = None,
    teacher_steps: int | None = None,
    hidden_dims: tuple[int, ...] | None = None,
    mode_seeking: ModeSeeking | None = None,
    gate_modes: int = 1,
    overrides: tuple[str, ...] = (),
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Trains a `method` student of the run in `teacher_run` into the run directory `out`."""
    from dpjax.config import apply_overrides
    from dpjax.data import load_dataset
    from dpjax.policy.loading import build_policy
    from dpjax.training.loop import Objective, train

    if method not in DISTILL_METHODS:
        raise unknown_name("distillation method", method, DISTILL_METHODS)
    teacher, teacher_params, teacher_meta = load_policy(teacher_run)
    if teacher.config.kind != "diffusion":
        raise ConfigError(f"{teacher_run} is a {teacher.config.kind} policy; a teacher must be "
                          "a diffusion (or flow matching) policy")  # fmt: skip
    teacher_config = load_run_config(Path(teacher_run))
    if num_steps is None:
        num_steps = teacher_config.num_steps // (2 if method == "consistency" else 3)
    config = student_config(teacher_config, method, num_steps=num_steps, hidden_dims=hidden_dims,
                            gate_modes=gate_modes)  # fmt: skip
    config = apply_overrides(config, overrides)
    config.policy.validate()
    options = teacher_options(teacher, method, teacher_sampler, teacher_steps)
    student, _, _ = build_policy(config, load_dataset(config.dataset))
    if student.normalizer.to_dict() != teacher.normalizer.to_dict():
        raise ConfigError(
            f"the dataset {config.dataset} is not the one the teacher was normalized on "
            "(its statistics differ)"
        )
    if mode_seeking is not None and method != "consistency":
        raise ConfigError("mode seeking is a term of the consistency student's loss; "
                          f"--method {method} takes none")  # fmt: skip
    if method == "consistency":
        loss = consistency_loss(student, teacher, options, mode_seeking)
    else:
        loss = bc_loss(student, teacher, options)
    objective = Objective(
        loss=loss,
        frozen=teacher_params,
        # A consistency student starts as its teacher (same network; a mode gate fresh
        # beside it); BC from scratch.
        init_params=(
            starting_params(student, teacher_params, jax.random.key(config.seed))
            if method == "consistency" else None
        ),
    )  # fmt: skip
    record = {
        "teacher_run_dir": str(Path(teacher_run).resolve()),
        "teacher_step": teacher_meta["step"],
        "method": method,
        "sampler": options.sampler,
        "num_inference_steps": options.num_inference_steps,
        "mode_seeking": dataclasses.asdict(mode_seeking) if mode_seeking else None,
        "gate_modes": config.policy.gate_modes,
        "denoiser_evaluations_per_chunk": samplers.num_denoiser_evaluations(
            options.sampler, options.num_inference_steps, teacher.config.num_train_timesteps
        ),
    }
    return train(
        config, out, resume=resume, overwrite=overwrite, progress=progress,
        objective=objective, extra_metadata={"distillation": record},
    )  # fmt: skip
