"""The configs a user edits, and how they are loaded, overridden and stored.

`PolicyConfig` (architecture, objective, default inference), `OptimConfig` (AdamW, schedule,
EMA) and `TrainConfig` (a run: dataset, policy, optimizer, steps, logging) are frozen
dataclasses; an experiment is a Python file defining `CONFIG = TrainConfig(...)`.

A config file is a Python file defining `CONFIG` (a frozen dataclass instance). Overrides
address nested fields with dots and are parsed by the field's declared type, so a typo or
a value of the wrong type fails before any work starts, naming the valid fields.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import re
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import jax.numpy as jnp

from dpjax import samplers
from dpjax.data.windows import check_horizons
from dpjax.errors import ConfigError, unknown_name

POLICY_KINDS: tuple[str, ...] = ("diffusion", "bc")
# What a "diffusion" policy's denoiser learns: the VP noising process (eps / x0 / v targets,
# DDPM/DDIM/DPM-Solver++/Euler/Heun samplers) or flow matching's straight path (velocity
# target, flow_euler/flow_midpoint samplers).
OBJECTIVES: tuple[str, ...] = ("diffusion", "flow_matching")
_PROCESS = {"diffusion": "vp", "flow_matching": "flow"}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class MLPConfig:
    """The seed's MLP denoiser: [conditioning, step embedding, flattened noisy chunk] through
    `hidden_dims` (Mish) to the chunk (`dpjax.nets.MLPDenoiser`)."""

    name: typing.ClassVar[str] = "mlp"
    hidden_dims: tuple[int, ...] = (512, 512, 256)
    step_embed_dim: int = 128


@dataclasses.dataclass(frozen=True)
class UNet1DConfig:
    """Diffusion Policy's ConditionalUnet1D: Conv1d residual blocks at widths `down_dims`,
    FiLM from [step embedding, conditioning], GroupNorm of `n_groups` in the residual blocks
    and, as in the reference, 8 in the final block (`dpjax.nets`)."""

    name: typing.ClassVar[str] = "unet1d"
    down_dims: tuple[int, ...] = (256, 512, 1024)
    kernel_size: int = 5
    n_groups: int = 8
    step_embed_dim: int = 128


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Action tokens that self-attend (optionally causally) and cross-attend to the observation
    tokens; `width` is the token width of the encoder too (`dpjax.nets.TransformerDenoiser`)."""

    name: typing.ClassVar[str] = "transformer"
    width: int = 256
    num_layers: int = 4
    num_heads: int = 4
    causal: bool = False


DenoiserConfig = MLPConfig | UNet1DConfig | TransformerConfig
# A denoiser's registry name -> its config ("mlp", "unet1d", "transformer"; as dpjax.nets).
DENOISER_CONFIGS: dict[str, type] = {c.name: c for c in typing.get_args(DenoiserConfig)}


@dataclasses.dataclass(frozen=True)
class BCHeadConfig:
    """The regression head of a BC policy (kind="bc"): an MLP of `hidden_dims`. With
    `num_hypotheses` K > 1 it proposes K chunks and a categorical over them (multiple-
    hypothesis prediction) and draws one per call, which can keep several modes apart."""

    hidden_dims: tuple[int, ...] = (512, 512, 256)
    num_hypotheses: int = 1


@dataclasses.dataclass(frozen=True)
class PolicyConfig:
    """Everything that fixes a policy's architecture and its default inference."""

    kind: str = "diffusion"
    action_dim: int = 2
    obs_horizon: int = 2
    pred_horizon: int = 16
    action_horizon: int = 8
    # Observation encoder.
    low_dim_keys: tuple[str, ...] = ("state",)
    image_keys: tuple[str, ...] = ()
    image_encoder: str = "resnet18"
    crop_hw: tuple[int, int] | None = None
    low_dim_features: int | None = 64
    # Training-time augmentation: Gaussian noise of this std added to every normalized
    # ([-1, 1]) low-dim observation, against overfitting a few hundred demonstrations.
    obs_noise_std: float = 0.0
    # The network after the encoder: a diffusion policy's denoiser (`--set
    # policy.denoiser=mlp` switches to that denoiser's defaults, `policy.denoiser.FIELD=...`
    # sets one of its sizes) or a BC policy's head.
    denoiser: DenoiserConfig = UNet1DConfig()
    bc_head: BCHeadConfig = BCHeadConfig()
    # K > 1: a one-step student's mode gate (`dpjax.nets.NoiseGate`): the initial noise and
    # the observation pick one of K learned codes added to the conditioning before sampling.
    # Trained by distillation only (`dpjax distill RUN --method consistency --gate-modes K`).
    gate_modes: int = 1
    dtype: str = "float32"
    # Matmul precision of the networks (dpjax.nets.precision): "float32", "bfloat16-matmul"
    # (bfloat16 operands, float32 parameters, accumulation and everything else) or "auto"
    # (the faster of the two on the backend that runs it, resolved when the policy is built).
    precision: str = "float32"
    # Diffusion process and training objective. flow_matching: the time input is s * T for
    # s in [0, 1], prediction_type "velocity" or "sample" (x0), a flow sampler
    # (flow_euler, flow_midpoint); beta_schedule and loss_weighting do not apply.
    objective: str = "diffusion"
    num_train_timesteps: int = 100
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: str = "epsilon"
    timestep_sampling: str = "uniform"
    loss_weighting: str = "none"
    # Default inference (any sampler / step count can be chosen later without retraining).
    # dpmsolver++: at 10 steps the closest of the ODE solvers to the 1000-step answer on the
    # exact-denoiser test (tests/test_samplers.py: 0.13 against DDIM's 0.23).
    sampler: str = "dpmsolver++"
    num_inference_steps: int = 10
    clip_sample: float | None = 1.0
    timestep_spacing: str = "trailing"
    eta: float = 0.0

    def validate(self) -> None:
        if self.kind not in POLICY_KINDS:
            raise unknown_name("policy kind", self.kind, POLICY_KINDS)
        if self.dtype not in DTYPES:
            raise unknown_name("dtype", self.dtype, DTYPES)
        from dpjax.nets.precision import PRECISIONS

        if self.precision not in PRECISIONS:
            raise unknown_name("precision", self.precision, PRECISIONS)
        if self.precision != "float32" and self.dtype != "float32":
            raise ConfigError(f"precision={self.precision!r} needs dtype='float32' (it keeps the "
                              f"parameters float32), got dtype={self.dtype!r}")  # fmt: skip
        check_horizons(self.obs_horizon, self.pred_horizon, self.action_horizon)
        if self.obs_horizon - 1 + self.action_horizon > self.pred_horizon:
            raise ConfigError(
                f"obs_horizon - 1 + action_horizon ({self.obs_horizon - 1 + self.action_horizon})"
                f" must be <= pred_horizon ({self.pred_horizon}): the executed actions start at "
                "the current step, index obs_horizon - 1 of the predicted chunk"
            )
        if not self.low_dim_keys and not self.image_keys:
            raise ConfigError("a policy needs at least one observation key")
        if not self.obs_noise_std >= 0:
            raise ConfigError(f"obs_noise_std must be >= 0, got {self.obs_noise_std}")
        k = self.bc_head.num_hypotheses
        if not (isinstance(k, int) and k >= 1):
            raise ConfigError(f"bc_head.num_hypotheses must be an integer >= 1, got {k!r}")
        if self.kind == "diffusion" and k != 1:
            raise ConfigError("bc_head.num_hypotheses is a setting of the BC head (kind='bc'); "
                              "a diffusion policy draws its modes from noise")  # fmt: skip
        g = self.gate_modes
        if not (isinstance(g, int) and g >= 1):
            raise ConfigError(f"gate_modes must be an integer >= 1, got {g!r}")
        if self.kind != "diffusion" and g != 1:
            raise ConfigError("gate_modes is a setting of a diffusion student (kind='diffusion'); "
                              "a BC head's modes are bc_head.num_hypotheses")  # fmt: skip
        if isinstance(self.denoiser, str):
            if self.denoiser not in DENOISER_CONFIGS:
                raise unknown_name("denoiser", self.denoiser, DENOISER_CONFIGS)
            raise ConfigError(
                f"denoiser={self.denoiser!r} is a name: give its config, "
                f"{DENOISER_CONFIGS[self.denoiser].__name__}() (by name only in --set "
                f"policy.denoiser={self.denoiser})"
            )
        if not isinstance(self.denoiser, tuple(DENOISER_CONFIGS.values())):
            names = ", ".join(c.__name__ for c in DENOISER_CONFIGS.values())
            raise ConfigError(f"denoiser must be one of {names}, got {self.denoiser!r}")
        if self.kind == "diffusion":
            if self.objective not in OBJECTIVES:
                raise unknown_name("objective", self.objective, OBJECTIVES)
            if self.objective == "flow_matching" and self.loss_weighting != "none":
                raise ConfigError(
                    f"loss_weighting={self.loss_weighting!r} is a diffusion (SNR) weighting; "
                    "flow_matching trains with loss_weighting='none'"
                )
            samplers.validate_options(self.sampler_options(), self.num_train_timesteps)

    @property
    def plan_length(self) -> int:
        """The actions a predicted chunk holds from the current step (index obs_horizon - 1)
        on: pred_horizon - obs_horizon + 1."""
        return self.pred_horizon - self.obs_horizon + 1

    def sampler_options(self, **overrides) -> samplers.SamplerOptions:
        fields = dict(
            sampler=self.sampler,
            num_inference_steps=self.num_inference_steps,
            prediction_type=self.prediction_type,
            clip_sample=self.clip_sample,
            timestep_spacing=self.timestep_spacing,
            eta=self.eta,
        )
        # None means "the config's" for the sampler and step count; for the other options
        # (clip_sample=None: no clipping) it is a value.
        unset = {k for k in ("sampler", "num_inference_steps") if overrides.get(k) is None}
        fields.update({k: v for k, v in overrides.items() if k not in unset})
        options = samplers.SamplerOptions(**fields)
        self.check_sampler(options.sampler)
        return options

    def check_sampler(self, sampler: str) -> None:
        """ConfigError unless `sampler` integrates the process this policy learned."""
        process = _PROCESS.get(self.objective)
        if process is None or samplers.get_sampler(sampler).process == process:
            return
        raise ConfigError(
            f"sampler {sampler!r} does not sample a policy trained with objective="
            f"{self.objective!r}; its samplers: {', '.join(samplers.sampler_names_for(process))}"
        )


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """Diffusion Policy's defaults: AdamW(1e-4, betas 0.95/0.999, wd 1e-6), warmup + cosine."""

    learning_rate: float = 1e-4
    b1: float = 0.95
    b2: float = 0.999
    weight_decay: float = 1e-6
    warmup_steps: int = 500
    max_grad_norm: float = 1.0
    ema_power: float = 0.75
    ema_max_decay: float = 0.9999
    ema_inv_gamma: float = 1.0


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    dataset: str = ""
    policy: PolicyConfig = PolicyConfig()
    optim: OptimConfig = OptimConfig()
    seed: int = 0
    batch_size: int = 64
    num_steps: int = 1000
    log_every: int = 50
    eval_every: int = 250
    checkpoint_every: int = 250
    max_to_keep: int = 3
    val_fraction: float = 0.05
    val_batches: int = 4
    num_devices: int | None = None
    # Devices per FSDP group (1: data parallel, every device holds the whole train state).
    # N > 1: parameters, EMA and optimizer state of arrays >= 64 KiB are split N ways.
    fsdp_devices: int = 1
    max_episodes: int | None = None
    # Where training reads its windows: "memory" (every step of the dataset on every device,
    # sampled inside the compiled step), "stream" (read from disk by host threads, a few
    # batches ahead, each process only its rows of each batch; the same windows, so the same
    # training), "auto" (stream when the training steps exceed data_memory_mb).
    data_loader: str = "auto"
    data_memory_mb: float = 2048.0
    # Closed-loop rollouts of the EMA policy during training (0: never): every N steps (a
    # checkpoint is saved there too), `rollout_episodes` episodes on the dataset's task from
    # seed `rollout_seed`, apart from `dpjax eval`'s 100000.. so that choosing a checkpoint
    # by them (`dpjax eval --best-rollout`) does not pick on the test episodes.
    rollout_every: int = 0
    rollout_episodes: int = 50
    rollout_seed: int = 200_000


# The shipped recipes (`dpjax.configs`): inside the package, so an installed dpjax has them.
CONFIGS_DIR = Path(__file__).resolve().parent / "configs"


def config_names() -> list[str]:
    """The shipped recipes: dpjax/configs/*.py that define a CONFIG."""
    return sorted(
        p.stem
        for p in CONFIGS_DIR.glob("*.py")
        if p.stem[0] != "_" and re.search(r"^CONFIG\b", p.read_text(), re.MULTILINE)
    )


def load_config_file(path_or_name: str) -> Any:
    """`CONFIG` from a .py file, or from the shipped dpjax/configs/<name>.py; "NAME:ATTR" takes the file's
    `ATTR` instead (e.g. "pusht_keypoints:PAPER", the paper-size recipe)."""
    attribute = "CONFIG"
    head, sep, tail = path_or_name.rpartition(":")
    if sep and tail.isidentifier() and head:
        path_or_name, attribute = head, tail
    path = Path(path_or_name)
    if not path.suffix and not path.exists():
        path = CONFIGS_DIR / f"{path_or_name}.py"
    if not path.is_file():
        raise ConfigError(
            f"no config file {path_or_name!r}; shipped configs: {', '.join(config_names())}"
        )
    spec = importlib.util.spec_from_file_location(f"dpjax_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # a config file is user code: report, don't traceback
        raise ConfigError(f"{path}: failed to load: {type(e).__name__}: {e}") from e
    if not dataclasses.is_dataclass(getattr(module, attribute, None)):
        others = [k for k, v in vars(module).items() if k.isupper() and dataclasses.is_dataclass(v)
                  and not isinstance(v, type)]  # fmt: skip
        raise ConfigError(
            f"{path} does not define {attribute} = <a config dataclass>"
            + (f"; it defines {', '.join(others)}" if others else "")
        )
    return getattr(module, attribute)


def _resolved_hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _parse_value(text: str, annotation: Any, where: str) -> Any:
    """Parses `text` as the type `annotation` (int, float, bool, str, tuples, Optional)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if text.lower() in ("none", "null") and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _parse_value(text, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: cannot parse {text!r}")
    if annotation is bool:
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ConfigError(f"{where}: expected true/false, got {text!r}")
    if annotation in (int, float):
        try:
            return annotation(text) if annotation is float else int(text)
        except ValueError as e:
            raise ConfigError(f"{where}: expected {annotation.__name__}, got {text!r}") from e
    if annotation is str:
        return text
    if origin is tuple:
        try:
            value = ast.literal_eval(text if text.strip().startswith("(") else f"({text},)")
        except (ValueError, SyntaxError) as e:
            raise ConfigError(f"{where}: expected a tuple like (1, 2), got {text!r}") from e
        if not isinstance(value, tuple):
            value = (value,)
        item = args[0] if args else Any
        if item is Any or item is Ellipsis:
            return value
        return tuple(_parse_value(str(v), item, where) for v in value)
    raise ConfigError(f"{where}: cannot set a field of type {annotation!r} from the command line")


def apply_overrides(config: Any, overrides: Iterable[str]) -> Any:
    """Returns a copy of `config` with each "dotted.field=value" applied."""
    for override in overrides:
        name, sep, text = override.partition("=")
        if not sep:
            raise ConfigError(f"override {override!r} is not of the form field=value")
        config = _set_field(config, name.strip().split("."), text.strip(), name.strip())
    return config


def _set_field(config: Any, path: list[str], text: str, full: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(config)}
    head = path[0]
    if head not in fields:
        hint = ""
        if getattr(type(config), "name", None) in DENOISER_CONFIGS:
            hint = f" (the {type(config).name} denoiser's; set policy.denoiser=NAME to switch)"
        raise ConfigError(
            f"unknown config field {full!r}; valid fields here: {', '.join(sorted(fields))}{hint}"
        )
    current = getattr(config, head)
    annotation = _resolved_hints(type(config))[head]
    if len(path) > 1:
        if not dataclasses.is_dataclass(current):
            raise ConfigError(f"config field {head!r} has no sub-fields (in {full!r})")
        value = _set_field(current, path[1:], text, full)
    elif _named_choices(annotation):
        value = _choose_named(annotation, text, current, full)
    else:
        if dataclasses.is_dataclass(current):
            raise ConfigError(f"{full!r} is a group of fields; set one of its fields instead")
        value = _parse_value(text, annotation, full)
    return dataclasses.replace(config, **{head: value})


def _named_choices(annotation: Any) -> dict[str, type]:
    """{name: config class} when `annotation` is a union of named config dataclasses (the
    denoiser's), else {}."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) not in (typing.Union, types.UnionType) or not all(
        dataclasses.is_dataclass(a) and isinstance(getattr(a, "name", None), str) for a in args
    ):
        return {}
    return {a.name: a for a in args}


def _choose_named(annotation: Any, name: str, current: Any, where: str) -> Any:
    """The config named `name`: `current` itself when it already is that one (its sizes are
    kept), else the named config's defaults."""
    choices = _named_choices(annotation)
    if name not in choices:
        raise unknown_name(where.rsplit(".", 1)[-1], name, choices)
    return current if type(current) is choices[name] else choices[name]()


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-able dict of a (nested) config; a named choice (the denoiser) carries its "name"."""
    out = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            name = getattr(type(value), "name", None)
            value = to_dict(value) if name is None else {"name": name, **to_dict(value)}
        out[f.name] = _copy_lists(value)
    return out


def _copy_lists(value):
    if isinstance(value, (list, tuple)):
        return [_copy_lists(v) for v in value]
    return value


def from_dict(cls: type, data: Mapping[str, Any]) -> Any:
    """Rebuilds a (nested) config dataclass from `to_dict` output; unknown keys -> ConfigError.
    A PolicyConfig stored before the denoiser had its own config (flat `hidden_dims`,
    `down_dims`, ... beside `"denoiser": "mlp"`) is read too, so older runs still load."""
    if cls is PolicyConfig and isinstance(data.get("denoiser"), str):
        data = _nest_flat_policy(data)
    hints = _resolved_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown fields {sorted(unknown)}")
    kwargs = {}
    for name, value in data.items():
        annotation = hints[name]
        choices = _named_choices(annotation)
        if choices and isinstance(value, Mapping):
            value = dict(value)
            chosen = value.pop("name", None)
            if chosen not in choices:
                raise unknown_name(f"{cls.__name__}.{name}", chosen, choices)
            value = from_dict(choices[chosen], value)
        elif dataclasses.is_dataclass(annotation):
            value = from_dict(annotation, value)
        elif isinstance(value, list):
            value = _lists_to_tuples(value)
        kwargs[name] = value
    return cls(**kwargs)


# The denoiser and BC head sizes that PolicyConfig held flat before they had configs.
_FLAT_POLICY_FIELDS = frozenset(
    f.name for c in (*DENOISER_CONFIGS.values(), BCHeadConfig) for f in dataclasses.fields(c)
)


def _nest_flat_policy(data: Mapping[str, Any]) -> dict[str, Any]:
    """A flat PolicyConfig dict (runs written before the per-denoiser configs) in the nested
    form: the named denoiser takes the sizes it reads, the BC head its own."""
    flat = {k: data[k] for k in _FLAT_POLICY_FIELDS if k in data}
    nested = {k: v for k, v in data.items() if k not in flat}
    name = data["denoiser"]
    if name not in DENOISER_CONFIGS:
        raise unknown_name("denoiser", name, DENOISER_CONFIGS)
    own = {f.name for f in dataclasses.fields(DENOISER_CONFIGS[name])}
    nested["denoiser"] = {"name": name, **{k: v for k, v in flat.items() if k in own}}
    head = {f.name for f in dataclasses.fields(BCHeadConfig)}
    nested["bc_head"] = {k: v for k, v in flat.items() if k in head}
    return nested


def _lists_to_tuples(value):
    return tuple(_lists_to_tuples(v) for v in value) if isinstance(value, list) else value
