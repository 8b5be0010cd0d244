"""Policies: observation history -> normalized conditioning -> action chunk.

`DiffusionPolicy` runs the observation encoder once per call, then the whole reverse process
of any sampler (one `lax.scan`) over a (B, pred_horizon, A) chunk, and returns the
`action_horizon` actions starting at the current step (index obs_horizon - 1, as Diffusion
Policy does): receding-horizon control. `BCPolicy` is the seed's behavioral-cloning
baseline: the same encoder and a regression head, one forward pass.

Both normalize every low-dim observation key and the actions to [-1, 1] with the dataset's
min/max (`dpjax.data.Normalizer`), which is saved with the checkpoint.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dpjax import losses, samplers, schedules
from dpjax.config import DTYPES, POLICY_KINDS, PolicyConfig, TransformerConfig, UNet1DConfig
from dpjax.data import Normalizer
from dpjax.data.features import ArraySpec
from dpjax.errors import ConfigError, DataError, ShapeError, unknown_name
from dpjax.nets import BCHead, NoiseGate, ObservationEncoder, make_denoiser
from dpjax.nets.precision import with_precision

Observation = Mapping[str, jnp.ndarray]  # {key: (B, obs_horizon, *shape)}


def _build_encoder(config: PolicyConfig) -> ObservationEncoder:
    tokens = config.kind == "diffusion" and isinstance(config.denoiser, TransformerConfig)
    return ObservationEncoder(
        low_dim_keys=config.low_dim_keys,
        image_keys=config.image_keys,
        output="tokens" if tokens else "vector",
        low_dim_features=config.low_dim_features,
        image_encoder=config.image_encoder,
        crop_hw=config.crop_hw,
        dtype=DTYPES[config.dtype],
        **({"token_dim": config.denoiser.width} if tokens else {}),
    )


def _build_denoiser(config: PolicyConfig, cond_dim: int) -> nn.Module:
    """The denoiser `config.denoiser` names, with its sizes and the policy's shapes."""
    d = config.denoiser
    shapes = dict(action_dim=config.action_dim, cond_dim=cond_dim, dtype=DTYPES[config.dtype])
    if not isinstance(d, UNet1DConfig):  # the UNet takes any horizon, the others a fixed one
        shapes["pred_horizon"] = config.pred_horizon
    if isinstance(d, TransformerConfig):
        shapes["max_cond_tokens"] = max(32, 2 * config.obs_horizon * 8)
    return make_denoiser(d.name, **shapes, **dataclasses.asdict(d))


class PolicyNetwork(nn.Module):
    """Encoder + denoiser (diffusion) or encoder + regression head (bc), one parameter tree."""

    config: PolicyConfig
    cond_dim: int

    def setup(self):
        self.encoder = _build_encoder(self.config)
        if self.config.kind == "diffusion":
            self.denoiser = _build_denoiser(self.config, self.cond_dim)
            if self.config.gate_modes > 1:
                c = self.config
                self.noise_gate = NoiseGate(c.gate_modes, c.pred_horizon, c.action_dim,
                                            self.cond_dim)  # fmt: skip
        else:
            head = self.config.bc_head
            self.head = BCHead(
                self.config.pred_horizon,
                self.config.action_dim,
                head.hidden_dims,
                DTYPES[self.config.dtype],
                head.num_hypotheses,
            )

    def encode(self, observation: Observation, train: bool = False) -> jnp.ndarray:
        return self.encoder(observation, train=train)

    def denoise(self, noisy_actions, timestep, cond) -> jnp.ndarray:
        return self.denoiser(noisy_actions, timestep, cond)

    def mode_logits(self, x_T, cond) -> jnp.ndarray:
        """(B, K) the gate's logits for samplers starting at x_T (config.gate_modes K > 1)."""
        return self.noise_gate.logits(x_T, cond)

    def mode_centroids(self, cond) -> jnp.ndarray:
        """(B, K, H, A): the chunks that define, in training, which mode a chunk is in."""
        return self.noise_gate.centroids(cond)

    def condition_on_mode(self, cond, mode) -> jnp.ndarray:
        return self.noise_gate.condition(cond, mode)

    def regress(self, cond) -> tuple[jnp.ndarray, jnp.ndarray]:
        """(chunks (B, K, H, A), logits (B, K)), K = config.bc_head.num_hypotheses."""
        return self.head(cond)

    def __call__(self, observation: Observation, noisy_actions, timestep):
        cond = self.encode(observation)
        if self.config.kind == "diffusion":
            if self.config.gate_modes > 1:
                _, _, cond = self.noise_gate(noisy_actions, cond)
            return self.denoise(noisy_actions, timestep, cond)
        return self.regress(cond)


def observation_spec_from_stats(stats, keys: Sequence[str]) -> dict[str, ArraySpec]:
    """Per-step shapes/dtypes of the observation keys, from `DatasetStats.spec`."""
    spec = {}
    for key in keys:
        name = f"observation/{key}" if f"observation/{key}" in stats.spec else key
        if name not in stats.spec:
            available = sorted(
                k.split("/", 1)[1] for k in stats.spec if k.startswith("observation/")
            )
            raise DataError(f"dataset has no observation {key!r}; it has {available}")
        shape, dtype = stats.spec[name]
        spec[key] = ArraySpec(tuple(shape), str(dtype))
    return spec


class Policy:
    """Shared machinery of both policies: normalization, observation checks, parameters."""

    def __init__(
        self,
        config: PolicyConfig,
        normalizer: Normalizer,
        observation_spec: Mapping[str, ArraySpec],
    ):
        config.validate()
        self.config = config
        self.normalizer = normalizer
        self.observation_spec = dict(observation_spec)
        missing = [
            k for k in (*config.low_dim_keys, *config.image_keys) if k not in observation_spec
        ]
        if missing:
            raise ConfigError(f"observation keys {missing} are not in the dataset's spec")
        cond_shape = jax.eval_shape(
            lambda o: _build_encoder(config).init_with_output(jax.random.key(0), o)[0],
            self.example_observation(1),
        ).shape
        self.network = PolicyNetwork(config, int(cond_shape[-1]))
        # the network's forward (and so backward) pass at the config's matmul precision
        self.apply = with_precision(self.network.apply, config.precision)

    @functools.cached_property
    def observation_keys(self) -> tuple[str, ...]:
        """The observation keys the policy reads, in the dataset spec's order."""
        used = (*self.config.low_dim_keys, *self.config.image_keys)
        return tuple(k for k in self.observation_spec if k in used)

    def describe(self, sampler: str | None = None, num_inference_steps: int | None = None):
        """What a client of this policy needs to know (servers and exports send it): kind,
        the observations it reads, horizons, action size, and the sampler it runs with
        these options (None for BC)."""
        c = self.config
        o = (
            c.sampler_options(sampler=sampler, num_inference_steps=num_inference_steps)
            if c.kind == "diffusion" else None
        )  # fmt: skip
        return {
            "policy_kind": c.kind,
            "observation_spec": {
                k: {
                    "shape": list(self.observation_spec[k].shape),
                    "dtype": str(self.observation_spec[k].dtype),
                }
                for k in self.observation_keys
            },  # fmt: skip
            "obs_horizon": c.obs_horizon,
            "action_horizon": c.action_horizon,
            "pred_horizon": c.pred_horizon,
            "action_dim": c.action_dim,
            "sampler": o.sampler if o else None,
            "num_inference_steps": o.num_inference_steps if o else None,
        }

    def example_observation(self, batch_size: int) -> dict[str, jnp.ndarray]:
        return {
            k: jnp.zeros((batch_size, self.config.obs_horizon, *s.shape), s.dtype)
            for k, s in self.observation_spec.items()
            if k in self.observation_keys
        }

    def init(self, key: jax.Array) -> Any:
        """Initial parameters, compiled once with LLVM optimization off: a program run once
        compiles ~3x faster that way (34 s eager vs 12 s for a small UNet here). Not
        traceable (top-level jit); use `init_params` inside jit / eval_shape."""
        return jax.jit(self.init_params, compiler_options={"xla_backend_optimization_level": 0})(
            key
        )

    def init_params(self, key: jax.Array) -> Any:
        c = self.config
        noisy = jnp.zeros((1, c.pred_horizon, c.action_dim))
        return self.network.init(
            key, self.example_observation(1), noisy, jnp.zeros((1,), jnp.int32)
        )

    def check_observation(self, observation: Mapping[str, Any]) -> int:
        """Host-side validation of a raw observation batch; returns the batch size."""
        expected = {k: self.observation_spec[k] for k in self.observation_keys}
        missing = [k for k in expected if k not in observation]
        if missing:
            raise ShapeError(f"observation is missing keys {missing}; expected {sorted(expected)}")
        batch = None
        for key, spec in expected.items():
            value = np.asarray(observation[key])
            want = (self.config.obs_horizon, *spec.shape)
            if value.ndim != len(want) + 1 or tuple(value.shape[1:]) != want:
                raise ShapeError(
                    f"observation {key!r}: expected shape (B, {', '.join(map(str, want))}), "
                    f"got {tuple(value.shape)}"
                )
            if batch is not None and value.shape[0] != batch:
                raise ShapeError(f"observation {key!r}: batch {value.shape[0]} != {batch}")
            batch = value.shape[0]
            if value.dtype.kind not in "biuf":  # str / object arrays would crash in jnp.asarray
                raise ShapeError(
                    f"observation {key!r}: expected a numeric dtype ({spec.dtype}), "
                    f"got {value.dtype}"
                )
            if np.issubdtype(value.dtype, np.floating) and not np.all(np.isfinite(value)):
                raise DataError(f"observation {key!r} contains NaN or inf")
        return int(batch)

    def _encode(self, params, observation, train: bool, key=None):
        normalized = self.normalizer.normalize_observation(observation)
        rngs = None
        if train and key is not None:
            if self.config.obs_noise_std > 0:  # else the crop key stays as it always was
                key, key_noise = jax.random.split(key)
                normalized = self._add_observation_noise(normalized, key_noise)
            rngs = {"augment": key}
        return self.apply(params, normalized, train, method=PolicyNetwork.encode,
                                  rngs=rngs)  # fmt: skip

    def _add_observation_noise(self, normalized: dict, key: jax.Array) -> dict:
        """Adds N(0, obs_noise_std^2) to the normalized low-dim keys (not images, not
        pass-through keys such as language embeddings)."""
        std = self.config.obs_noise_std
        noisy = [k for k in self.config.low_dim_keys if self.normalizer.has(f"observation/{k}")]
        if not noisy:
            return normalized
        keys = dict(zip(noisy, jax.random.split(key, len(noisy)), strict=True))
        return {
            k: v + std * jax.random.normal(keys[k], v.shape, v.dtype) if k in keys else v
            for k, v in normalized.items()
        }

    @property
    def plan_length(self) -> int:
        """L: the actions a chunk plans from the current step on (`PolicyConfig.plan_length`);
        `plan_fn` returns them all, `inference_fn` the first action_horizon."""
        return self.config.plan_length

    def _planned(self, chunk: jnp.ndarray) -> jnp.ndarray:
        return chunk[:, self.config.obs_horizon - 1 :]

    def _executed(self, chunk: jnp.ndarray) -> jnp.ndarray:
        return self._planned(chunk)[:, : self.config.action_horizon]

    def validation_loss(self, params, batch: Mapping[str, Any], key: jax.Array):
        """The loss runs report as val_loss: the training loss unless a subclass says so."""
        return self.loss(params, batch, key)

    def act(self, params, observation: Mapping[str, Any], key: jax.Array, **options):
        """Checks the observation on the host, then returns (B, action_horizon, A) actions."""
        self.check_observation(observation)
        fn = self.inference_fn(**options)
        return fn(params, {k: jnp.asarray(observation[k]) for k in self.observation_keys}, key)


class DiffusionPolicy(Policy):
    def __init__(self, config, normalizer, observation_spec):
        super().__init__(config, normalizer, observation_spec)
        self.schedule = schedules.make_schedule(config.beta_schedule, config.num_train_timesteps)

    def loss(self, params, batch: Mapping[str, Any], key: jax.Array, *, standard: bool = False):
        """Noise-prediction (sample / v; flow matching's velocity) loss on a raw batch
        {"observation", "action"}.

        standard=True: uniform timesteps and no weighting whatever the config trains with, so
        validation losses of runs with different objectives compare (`validation_loss`).
        """
        c = self.config
        if c.gate_modes > 1:
            raise ConfigError(
                f"gate_modes={c.gate_modes}: a mode gate learns a teacher's noise -> chunk map "
                "and trains by distillation only (dpjax distill RUN --method consistency "
                "--gate-modes K)"
            )
        key_aug, key_loss = jax.random.split(key)
        cond = self._encode(params, batch["observation"], True, key_aug)
        x0 = self.normalizer.normalize("action", batch["action"])
        denoise = self.denoiser(params, cond)
        sampling = "uniform" if standard else c.timestep_sampling
        if c.objective == "flow_matching":
            return losses.flow_matching_loss(
                denoise, x0, key_loss, c.num_train_timesteps,
                prediction_type=c.prediction_type, timestep_sampling=sampling,
            )  # fmt: skip
        return losses.diffusion_loss(
            denoise,
            x0,
            key_loss,
            self.schedule,
            prediction_type=c.prediction_type,
            timestep_sampling=sampling,
            weighting="none" if standard else c.loss_weighting,
        )

    def validation_loss(self, params, batch: Mapping[str, Any], key: jax.Array):
        return self.loss(params, batch, key, standard=True)

    def denoiser(self, params, cond) -> samplers.DenoiseFn:
        """`denoise_fn(x_t (B, pred_horizon, A), t (B,))` for the encoded observations `cond`:
        what the samplers and losses call."""
        return lambda x_t, t: self.apply(params, x_t, t, cond, method=PolicyNetwork.denoise)

    def gated(self, params, x_T, cond, mode=None):
        """The conditioning of a reverse process that starts at x_T (B, H, A): `cond` itself,
        or with config.gate_modes K > 1 `cond` plus the code of `mode` (B,) (default: the
        gate's pick for x_T). Called once per chunk, before the sampler's scan."""
        if self.config.gate_modes == 1:
            return cond
        if mode is None:
            logits = self.apply(params, x_T, cond, method=PolicyNetwork.mode_logits)
            mode = jnp.argmax(logits, axis=-1)
        return self.apply(params, cond, mode, method=PolicyNetwork.condition_on_mode)

    def predict_action_chunk(
        self, params, observation, key, options: samplers.SamplerOptions, guide=None,
        max_guidance: float = 5.0,
    ):  # fmt: skip
        """(B, pred_horizon, A) unnormalized actions: encoder once, then one scan.

        `guide` (target (B, L, A) unnormalized actions from the current step on, weights
        (L,)): sample with `samplers.inpainting_guidance` towards the target (real-time
        chunking; see `dpjax.policy.execution`)."""
        c = self.config
        cond = self._encode(params, observation, False)
        batch = cond.shape[0]
        key_noise, key_sampler = jax.random.split(key)
        x_T = jax.random.normal(key_noise, (batch, c.pred_horizon, c.action_dim))
        denoise = self.denoiser(params, self.gated(params, x_T, cond))
        if guide is not None:
            target, weights = guide
            past = c.obs_horizon - 1  # the chunk's first entries are past steps: unguided
            target = jnp.pad(self.normalizer.normalize("action", target),
                             ((0, 0), (past, 0), (0, 0)))  # fmt: skip
            weights = jnp.pad(jnp.asarray(weights, x_T.dtype), (past, 0))[None, :, None]
            denoise = samplers.inpainting_guidance(
                denoise, self.schedule, options, target, weights, max_guidance
            )
        x0 = samplers.sample_with_options(denoise, x_T, self.schedule, options, key_sampler)
        return self.normalizer.unnormalize("action", x0)

    @functools.cache  # noqa: B019 - one compiled sampler per option set, for the policy's life
    def _compiled(self, options: samplers.SamplerOptions):
        samplers.validate_options(options, self.config.num_train_timesteps)
        return jax.jit(
            lambda params, obs, key: self._executed(
                self.predict_action_chunk(params, obs, key, options)
            )
        )

    def inference_fn(self, *, sampler=None, num_inference_steps=None, **overrides):
        """Jitted `(params, observation, key) -> (B, action_horizon, A)`, cached per options."""
        options = self.config.sampler_options(
            sampler=sampler, num_inference_steps=num_inference_steps, **overrides
        )
        return self._compiled(options)

    @functools.cache  # noqa: B019 - one compiled planner per option set
    def _compiled_plan(self, options: samplers.SamplerOptions, max_guidance: float):
        samplers.validate_options(options, self.config.num_train_timesteps)
        return jax.jit(
            lambda params, obs, key, guide: self._planned(
                self.predict_action_chunk(params, obs, key, options, guide, max_guidance)
            )
        )

    def plan_fn(self, *, sampler=None, num_inference_steps=None, max_guidance=5.0, **overrides):
        """Jitted `(params, observation, key, guide) -> (B, L, A)`: the whole planned chunk
        from the current step on (see `plan_length`); `guide` None or (target (B, L, A),
        weights (L,)) for guided inpainting (`predict_action_chunk`)."""
        options = self.config.sampler_options(
            sampler=sampler, num_inference_steps=num_inference_steps, **overrides
        )
        return self._compiled_plan(options, float(max_guidance))

    def num_denoiser_evaluations(self, sampler=None, num_inference_steps=None) -> int:
        o = self.config.sampler_options(sampler=sampler, num_inference_steps=num_inference_steps)
        return samplers.num_denoiser_evaluations(
            o.sampler, o.num_inference_steps, self.config.num_train_timesteps
        )


class BCPolicy(Policy):
    """One forward pass a chunk. With bc_head.num_hypotheses K > 1 the head proposes K chunks and a
    categorical over them (fit by `losses.multi_hypothesis_loss`); each call draws one with
    its PRNG key (the most probable one without a key), so it can commit to one of several
    modes where a single regressed chunk averages them."""

    def fit_loss(self, params, cond, target):
        """(loss, metrics) of the head on `cond` against normalized target chunks (B, H, A)."""
        chunks, logits = self.apply(params, cond, method=PolicyNetwork.regress)
        return losses.multi_hypothesis_loss(chunks, logits, target)

    def loss(self, params, batch: Mapping[str, Any], key: jax.Array):
        cond = self._encode(params, batch["observation"], True, key)
        return self.fit_loss(params, cond, self.normalizer.normalize("action", batch["action"]))

    def predict_action_chunk(self, params, observation, key=None, options=None):
        cond = self._encode(params, observation, False)
        chunks, logits = self.apply(params, cond, method=PolicyNetwork.regress)
        if key is None:
            pick = jnp.argmax(logits, axis=-1)
        else:
            pick = jax.random.categorical(key, logits, axis=-1)
        prediction = jnp.take_along_axis(chunks, pick[:, None, None, None], axis=1)[:, 0]
        return self.normalizer.unnormalize("action", prediction.astype(jnp.float32))

    @functools.cached_property
    def _compiled(self):
        return jax.jit(
            lambda params, obs, key: self._executed(self.predict_action_chunk(params, obs, key))
        )

    def inference_fn(self, **ignored):
        """Jitted `(params, observation, key) -> (B, action_horizon, A)`; one forward pass."""
        return self._compiled

    @functools.cached_property
    def _compiled_plan(self):
        def plan(params, obs, key, guide):
            if guide is not None:
                raise ConfigError("a BC policy has no denoiser to guide (guided inpainting)")
            return self._planned(self.predict_action_chunk(params, obs, key))

        return jax.jit(plan)

    def plan_fn(self, **ignored):
        """Jitted `(params, observation, key, guide=None) -> (B, L, A)`; one forward pass."""
        return self._compiled_plan

    def num_denoiser_evaluations(self, *args, **kwargs) -> int:
        return 1


def with_action_horizon(policy: Policy, action_horizon: int) -> Policy:
    """The same trained policy executing `action_horizon` actions of each predicted chunk
    (1: replan every step); the parameters are shared, nothing is retrained."""
    config = dataclasses.replace(policy.config, action_horizon=action_horizon)
    return make_policy(config, policy.normalizer, policy.observation_spec)


def make_policy(config: PolicyConfig, normalizer: Normalizer, observation_spec) -> Policy:
    cls = {"diffusion": DiffusionPolicy, "bc": BCPolicy}.get(config.kind)
    if cls is None:
        raise unknown_name("policy kind", config.kind, POLICY_KINDS)
    return cls(config, normalizer, observation_spec)
