"""Who demonstrates: strategies (solution modes chosen per episode) and demonstrator qualities
(mixed-quality data), shared by the task families.

Strategies: a multimodal expert solves the same task in different ways, one drawn per episode
with stated probabilities (`--task-option strategies=...`). A family names its strategies
(PushT: `pusht_expert.STRATEGIES`, Meta-World: `metaworld.STRATEGIES`; the cup's modes are its
`mode_probs`); the env classifies the mode an episode shows from its geometry, for the expert
and for a learned policy alike, in `info["mode"]` (an index into the task's `modes`).

Qualities (Diffusion Policy's "MH" data, robomimic's mixed human): each episode's demonstrator
is "proficient" (the scripted expert), "slow" (the same strategy at a fraction of the speed),
"hesitant" (stops for a while at a random point) or "noisy" (jitter on every action, recorded
as taken), drawn with `quality_mix` = [p_proficient, p_slow, p_hesitant, p_noisy]. What "slow"
and the noise scale mean is the family's; `MixedQualityExpert` adds the hesitation and the
noise to any expert. Episode metadata["quality"] names the demonstrator.

Draws use a random stream of their own per episode seed (`draw`), so the scene of an episode
and the proficient expert's own randomness do not change when a mix or strategies are asked for.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from dpjax.errors import ConfigError

QUALITIES = ("proficient", "slow", "hesitant", "noisy")
PROFICIENT = (1.0, 0.0, 0.0, 0.0)
# Random streams of an episode seed, apart from the env's and the expert's own.
STRATEGY_STREAM, QUALITY_STREAM = 7_001, 7_002


def check_quality_mix(quality_mix: Any) -> tuple[float, float, float, float]:
    """`quality_mix` as normalized probabilities over QUALITIES; ConfigError if it is not
    four non-negative numbers with a positive sum."""
    try:
        mix = () if isinstance(quality_mix, str) else tuple(float(p) for p in quality_mix)
    except (TypeError, ValueError):
        mix = ()
    if len(mix) != len(QUALITIES) or min(mix) < 0 or not sum(mix) > 0:
        raise ConfigError(
            f"quality_mix must be {len(QUALITIES)} probabilities ({', '.join(QUALITIES)}) "
            f"with a positive sum, e.g. [0.6,0.2,0.1,0.1], got {quality_mix!r}"
        )
    total = sum(mix)
    return tuple(p / total for p in mix)  # type: ignore[return-value]


def check_strategies(strategies: Any, names: Sequence[str]) -> tuple[float, ...] | None:
    """Probabilities over the family's strategy `names` from `strategies`: None (the expert's
    own single strategy), a {name: probability} mapping (missing names: 0) or a list of names
    (equally likely). ConfigError naming the valid strategies otherwise."""
    if strategies is None:
        return None
    valid = f"valid strategies: {', '.join(names)}"
    if isinstance(strategies, str):
        strategies = [s.strip() for s in strategies.split(",") if s.strip()]
    if isinstance(strategies, Mapping):
        weights = dict(strategies)
    elif isinstance(strategies, Sequence) and all(isinstance(s, str) for s in strategies):
        weights = {s: 1.0 for s in strategies}
    else:
        raise ConfigError(
            f"strategies must be a {{name: probability}} mapping or a list of names, got "
            f"{strategies!r}; {valid}"
        )
    unknown = sorted(set(weights) - set(names))
    if unknown:
        raise ConfigError(f"unknown strateg{'ies' if len(unknown) > 1 else 'y'} {unknown}; {valid}")
    try:
        probs = [float(weights.get(n, 0.0)) for n in names]
    except (TypeError, ValueError):
        probs = [-1.0]
    if min(probs) < 0 or not sum(probs) > 0:
        raise ConfigError(
            f"strategy probabilities must be >= 0 with a positive sum: {strategies!r}"
        )
    return tuple(p / sum(probs) for p in probs)


def draw(probs: Sequence[float], seed: int, stream: int) -> int:
    """An index drawn with `probs` from episode `seed`'s random `stream`."""
    u = np.random.default_rng((int(seed), stream)).random()
    return int(min(np.searchsorted(np.cumsum(probs), u * sum(probs), side="right"), len(probs) - 1))


def draw_strategy(
    strategies: Sequence[float] | None, names: Sequence[str], seed: int
) -> str | None:
    """The strategy (a name in `names`) of episode `seed` drawn with `strategies`
    (probabilities over `names`); None where no strategies are asked for."""
    return None if strategies is None else names[draw(strategies, seed, STRATEGY_STREAM)]


def draw_quality(quality_mix: Sequence[float], seed: int) -> str:
    """The demonstrator quality (a name in QUALITIES) of episode `seed`."""
    return QUALITIES[draw(quality_mix, seed, QUALITY_STREAM)]


def mode_frequencies(modes, names: Sequence[str]) -> dict[str, float]:
    """{name: fraction of the episodes with a mode (>= 0) that show it} for integer `modes`
    (indices into `names`; -1: none)."""
    modes = np.asarray(list(modes), np.int64)
    with_mode = modes[modes >= 0]
    return {
        name: float(np.mean(with_mode == k)) if len(with_mode) else 0.0
        for k, name in enumerate(names)
    }


class MixedQualityExpert:
    """`expert` as the demonstrator `quality` of episode `seed` would act.

    "hesitant": for `hesitation_steps` calls, starting at a step drawn uniformly from
    [0, hesitate_within), returns `hold(last_action)` (the action that keeps the robot where it
    is) instead of asking the expert, which then resumes where it stopped. "slow" with
    `slow_every` = k: every k-th call holds likewise while `slow_while(last_action)` (default:
    always), so the expert advances at (k-1)/k of its pace with its own gains and forces
    (None: the family builds "slow" into the expert).
    "noisy": adds N(0, noise_std^2) per action dimension (then `clip`, where given).
    `quality` is readable (the collector records it as episode metadata).
    """

    def __init__(
        self,
        expert: Callable[[dict], np.ndarray],
        quality: str,
        seed: int,
        *,
        hold: Callable[[np.ndarray], np.ndarray],
        noise_std: float,
        hesitation_steps: int,
        hesitate_within: int,
        slow_every: int | None = None,
        slow_while: Callable[[np.ndarray], bool] = lambda last: True,
        clip: tuple[float, float] | None = None,
    ):
        if quality not in QUALITIES:
            raise ConfigError(f"unknown demonstrator quality {quality!r}; valid: {QUALITIES}")
        self.expert, self.quality, self.hold, self.clip = expert, quality, hold, clip
        self._rng = rng = np.random.default_rng((int(seed), QUALITY_STREAM, 1))
        self._noise_std = noise_std if quality == "noisy" else 0.0
        start = int(rng.integers(0, max(hesitate_within, 1))) if quality == "hesitant" else -1
        self._pause = range(start, start + hesitation_steps) if start >= 0 else range(0)
        self._slow_every = slow_every if quality == "slow" else None
        self._slow_while = slow_while
        self._t = 0
        self._last: np.ndarray | None = None

    def __call__(self, observation: dict) -> np.ndarray:
        t, self._t = self._t, self._t + 1
        if self._last is not None and (
            t in self._pause
            or (self._slow_every and t % self._slow_every == 0 and self._slow_while(self._last))
        ):
            return self.hold(self._last)
        action = np.asarray(self.expert(observation), np.float32)
        if self._noise_std > 0:
            action = action + self._rng.normal(0.0, self._noise_std, action.shape)
            if self.clip is not None:
                action = np.clip(action, *self.clip)
        self._last = action.astype(np.float32)
        return self._last
