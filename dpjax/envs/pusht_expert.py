"""Scripted PushT expert: push primitives chosen by simulating each one in a copy of the physics.

Why a planner and not a geometric controller: gym-pusht's contacts are frictionless (the
package sets `friction` on bodies, which pymunk ignores, so shapes keep friction 0) and the
block stops as soon as contact ends (space damping 0 keeps no velocity). A push therefore moves
the block along the touched face's normal only, and a disc pushing off-centre slides along the
face while the block spins; success also needs ~2 px / ~1.5 degree precision. Predicting that by
hand is brittle, simulating it is exact.

One decision: for every contact point on the T (20 points on its 8 faces, in the block frame)
route the agent around the block (shortest path through the corners of the T grown by the
disc's radius and a margin) to just outside that point, push straight in, and hold still for
a moment; score the end state by the keypoint error to the goal plus a cost per env step (see
`_Candidate`); execute the best action sequence, then decide again from the real state. Push
lengths are checkpoints along one simulated push (branching from saved body states), so each
contact costs one rollout. The copy reproduces the env to ~1e-6 px, so plans play out as
simulated.

Speed: the commanded target never moves more than `max_step_px` (default 12 px) per 0.1 s
step, i.e. 120 px/s: the workspace is crossed in ~4 s, about a human moving a mouse with care,
as in Diffusion Policy's PushT teleoperation demos.

Strategies (`first_contact`, one of STRATEGIES; `dpjax.envs.demonstrators`): the first push of
the episode starts from a contact point on that part of the T only ("bar": its top, ends and
underside; "stem": its sides and bottom), so the same scene is solved along different routes;
planning is free from the second push on. `contact_mode` classifies the part of the T an agent
touches first, for the expert and a learned policy alike (the env reports it, `pusht.py`).

Mixed quality (`make_expert`'s `quality_mix`): "slow" plans and moves at SLOW_SPEED of the
expert's speed, "hesitant" holds its target for HESITATION_STEPS at a random step of the first
HESITATE_WITHIN, "noisy" jitters every target by N(0, NOISY_STD^2) px (recorded as taken).
"""

from __future__ import annotations

import math

import numpy as np

from dpjax.envs import demonstrators
from dpjax.envs.pusht import GOAL_POSE, SUCCESS_COVERAGE, import_gym_pusht

AGENT_RADIUS = 15.0
STANDOFF = 4.0  # gap between disc and face before a push starts, px
# Distance from the T a routed path keeps, px; just under the pre-contact distance so that the
# last leg of a route can reach it.
CLEARANCE = AGENT_RADIUS + STANDOFF - 0.5
CORNER_OFFSET = AGENT_RADIUS + 8.0  # the disc lags its target and cuts corners
ORBIT_RADIUS = 100.0  # T circumradius about its centre of gravity (~77) + disc + margin
ARENA = (20.0, 492.0)  # the walls are at 5 and 506, 2 px thick; the disc must fit
PUSH_DISTANCES = (3.0, 8.0, 16.0, 32.0, 64.0, 110.0)  # target travel past contact, px
STRATEGIES = ("bar", "stem")  # the part of the T the first push starts from
CONTACT_GAP = 1.5  # px beyond the disc's radius that counts as touching the T
SLOW_SPEED = 0.6
HESITATION_STEPS, HESITATE_WITHIN = 10, 60  # PushT episodes: ~100-300 steps
NOISY_STD = 3.0  # px; the arena is 512 px, success needs ~2 px, so the planner corrects

# Contact points of the T in its body frame (gym-pusht `add_tee`, scale 30: bar x in [-60, 60],
# y in [0, 30]; stem x in [-15, 15], y in [30, 120]) as (point on face, outward normal).
_FACES = (
    # (fixed coordinate axis, value, offsets along the face, outward normal)
    ("y", 0.0, (-50.0, -25.0, 0.0, 25.0, 50.0), (0.0, -1.0)),  # bar top
    ("x", 60.0, (15.0,), (1.0, 0.0)),  # bar right end
    ("x", -60.0, (15.0,), (-1.0, 0.0)),  # bar left end
    ("y", 30.0, (36.0, 52.0, -36.0, -52.0), (0.0, 1.0)),  # bar underside, either side of stem
    ("x", 15.0, (56.0, 85.0, 112.0), (1.0, 0.0)),  # stem right
    ("x", -15.0, (56.0, 85.0, 112.0), (-1.0, 0.0)),  # stem left
    ("y", 120.0, (-10.0, 0.0, 10.0), (0.0, 1.0)),  # stem bottom
)


# The part of the T each face of _FACES belongs to (an index of STRATEGIES).
_FACE_PARTS = (0, 0, 0, 0, 1, 1, 1)


def contact_points() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Contact points on the T's faces, their outward normals (block frame) and the part of
    the T they are on (an index of STRATEGIES): (K, 2), (K, 2), (K,)."""
    points, normals, parts = [], [], []
    for (axis, value, offsets, normal), part in zip(_FACES, _FACE_PARTS, strict=True):
        for offset in offsets:
            points.append((value, offset) if axis == "x" else (offset, value))
            normals.append(normal)
            parts.append(part)
    return np.asarray(points), np.asarray(normals), np.asarray(parts)


def contact_mode(agent: np.ndarray, keypoints: np.ndarray) -> int:
    """The part of the T (an index of STRATEGIES) the disc at `agent` (2,) touches, -1 if it
    touches none; `keypoints` (8, 2): the T's corners in the world frame (bar, then stem), as
    gym-pusht's keypoint observation has them."""
    import shapely.geometry as sg

    point = sg.Point(float(agent[0]), float(agent[1]))
    distances = [
        sg.Polygon(keypoints[:4]).distance(point),
        sg.Polygon(keypoints[4:]).distance(point),
    ]
    if min(distances) > AGENT_RADIUS + CONTACT_GAP:
        return -1
    return int(np.argmin(distances))


def _rotation(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s], [s, c]])


class PhysicsCopy:
    """A private gym-pusht pymunk space whose body states are copied from the real env."""

    def __init__(self, physics):
        import_gym_pusht()
        self.env = type(physics)(
            obs_type="state", block_cog=physics.block_cog, damping=physics.damping
        )
        self.env._setup()
        self.agent, self.block = self.env.agent, self.env.block
        self._substeps = int(1 / (physics.dt * physics.control_hz))
        self._dt, self._kp, self._kv = physics.dt, physics.k_p, physics.k_v
        # Bar then stem, as the package lists them (`block.shapes` is a set: no fixed order).
        local = [np.asarray(v) for s in self.env._block_shapes for v in s.get_vertices()]
        self.local_keypoints = np.asarray(local)  # (8, 2)
        self.goal_keypoints = self.local_keypoints @ _rotation(GOAL_POSE[2]).T + GOAL_POSE[:2]

    def load(self, physics) -> None:
        self.restore(self.state_of(physics.agent, physics.block))

    @staticmethod
    def state_of(agent, block) -> tuple:
        return (
            tuple(agent.position),
            tuple(agent.velocity),
            block.angle,
            tuple(block.position),
            tuple(block.velocity),
            block.angular_velocity,
        )

    def save(self) -> tuple:
        return self.state_of(self.agent, self.block)

    def restore(self, state: tuple) -> None:
        agent_pos, agent_vel, angle, block_pos, block_vel, block_angvel = state
        self.agent.position, self.agent.velocity = agent_pos, agent_vel
        # Angle first: setting it rotates about the centre of gravity and moves the origin.
        self.block.angle = angle
        self.block.position = block_pos
        self.block.velocity, self.block.angular_velocity = block_vel, block_angvel

    def step(self, target) -> None:
        """One env step: PD-drive the agent towards `target` (2,) as gym-pusht does."""
        tx, ty = float(target[0]), float(target[1])
        agent, space, dt, kp, kv = self.agent, self.env.space, self._dt, self._kp, self._kv
        for _ in range(self._substeps):
            px, py = agent.position
            vx, vy = agent.velocity
            agent.velocity = (
                vx + (kp * (tx - px) - kv * vx) * dt,
                vy + (kp * (ty - py) - kv * vy) * dt,
            )
            space.step(dt)

    def keypoints(self) -> np.ndarray:
        """The block's 8 corners in the world frame: (8, 2)."""
        return self.local_keypoints @ _rotation(self.block.angle).T + np.asarray(
            self.block.position
        )

    def keypoint_error(self) -> float:
        """Root-mean-square distance of the block's corners to the goal's, px."""
        return float(np.sqrt(np.mean(np.sum((self.keypoints() - self.goal_keypoints) ** 2, -1))))

    def coverage(self) -> float:
        return float(self.env._get_coverage())


def straight_line(start: np.ndarray, end: np.ndarray, max_step: float) -> list[np.ndarray]:
    """Targets from `start` (excluded) to `end` (included), at most `max_step` apart: [(2,)]."""
    n = max(1, math.ceil(float(np.linalg.norm(end - start)) / max_step - 1e-9))
    return [start + (end - start) * (i / n) for i in range(1, n + 1)]


def polyline(points: list[np.ndarray], max_step: float) -> list[np.ndarray]:
    targets: list[np.ndarray] = []
    for a, b in zip(points[:-1], points[1:], strict=True):
        if np.linalg.norm(b - a) > 1e-6:
            targets += straight_line(a, b, max_step)
    return targets


class Router:
    """Short collision-free waypoints for the disc around the T at its current pose.

    A visibility graph over the corners of the T grown by `CORNER_OFFSET` (mitred, so that the
    edges between neighbouring corners keep `CLEARANCE` from the faces); an orbit around the
    centre of gravity is the fallback when the walls cut the graph.
    """

    def __init__(self, copy: PhysicsCopy):
        import shapely.geometry as sg
        from shapely.ops import nearest_points

        self._sg, self._nearest_points = sg, nearest_points
        world = copy.keypoints()
        self.polygon = sg.Polygon(world[:4]).union(sg.Polygon(world[4:]))
        self.centre = np.asarray(copy.block.local_to_world(copy.block.center_of_gravity))
        grown = self.polygon.buffer(CORNER_OFFSET, join_style="mitre")
        corners = [np.asarray(c) for c in grown.exterior.coords[:-1]]
        self.corners = [c for c in corners if _inside_arena([c])]
        n = len(self.corners)
        self._corner_edges = {
            (i, j): self.clear(self.corners[i], self.corners[j])
            for i in range(n)
            for j in range(i + 1, n)
        }

    def clear(self, a: np.ndarray, b: np.ndarray) -> bool:
        line = self._sg.LineString([a, b]) if np.linalg.norm(b - a) > 1e-6 else self._sg.Point(a)
        return self.polygon.distance(line) >= CLEARANCE - 1e-6

    def _retreat(self, start: np.ndarray) -> np.ndarray:
        """A point near `start` clear of the T (the disc may be touching it)."""
        point = self._sg.Point(start)
        distance = self.polygon.distance(point)
        if distance >= CLEARANCE:
            return start
        nearest = np.asarray(self._nearest_points(self.polygon, point)[0].coords[0])
        away = start - nearest
        away = away / max(np.linalg.norm(away), 1e-6)
        return start + away * (CLEARANCE + 1.0 - distance)

    def _shortest(self, start: np.ndarray, end: np.ndarray) -> list[np.ndarray] | None:
        """Dijkstra from `start` to `end` through the corners; None if they are not linked."""
        nodes = [start, end, *self.corners]

        def linked(i: int, j: int) -> bool:
            if i >= 2 and j >= 2:
                return self._corner_edges[(min(i, j) - 2, max(i, j) - 2)]
            return self.clear(nodes[i], nodes[j])

        dist, parent, done = {0: 0.0}, {}, set()
        while True:
            frontier = [(d, i) for i, d in dist.items() if i not in done]
            if not frontier:
                return None
            d, i = min(frontier)
            if i == 1:
                break
            done.add(i)
            for j in range(len(nodes)):
                if j in done or j == i or not linked(i, j):
                    continue
                dj = d + float(np.linalg.norm(nodes[j] - nodes[i]))
                if dj < dist.get(j, math.inf):
                    dist[j], parent[j] = dj, i
        path, i = [end], 1
        while i != 0:
            i = parent[i]
            path.append(nodes[i])
        return path[::-1]

    def _arc(self, start: np.ndarray, end: np.ndarray, direction: int) -> list[np.ndarray]:
        c, r = self.centre, ORBIT_RADIUS
        a0 = math.atan2(*(start - c)[::-1])
        a1 = math.atan2(*(end - c)[::-1])
        sweep = (a1 - a0) % (2 * math.pi) if direction > 0 else -((a0 - a1) % (2 * math.pi))
        n = max(1, math.ceil(abs(sweep) * r / 10.0))
        return [
            c + r * np.array([math.cos(a0 + sweep * i / n), math.sin(a0 + sweep * i / n)])
            for i in range(n + 1)
        ]

    def route(self, start: np.ndarray, end: np.ndarray) -> list[np.ndarray]:
        """Waypoints from `start` to `end` (both (2,)), keeping the disc off the T."""
        if self.clear(start, end):
            return [start, end]
        out = self._retreat(start)
        path = self._shortest(out, end)
        if path is not None:
            return [start, *path]
        arcs = [self._arc(out, end, d) for d in (1, -1)]
        arcs.sort(key=lambda arc: (not _inside_arena(arc), len(arc)))
        return [start, out, *[np.clip(p, *ARENA) for p in arcs[0]], end]


def _inside_arena(points: list[np.ndarray]) -> bool:
    return all(ARENA[0] <= p[0] <= ARENA[1] and ARENA[0] <= p[1] <= ARENA[1] for p in points)


class _Candidate:
    """The best plan found so far.

    Ranking: a plan that reaches success (fewest steps first); else one that lowers the error by
    at least `min_progress` (lowest error + step_cost * steps); else the lowest error. Without
    the middle tier a cheap nudge that makes things slightly worse beats a long detour that
    helps, and the expert dithers in front of the block.
    """

    def __init__(self, error: float, step_cost: float, min_progress: float = 0.5):
        self.threshold, self.step_cost = error - min_progress, step_cost
        self.key, self.targets = (math.inf,), []

    def offer(self, error: float, targets: list[np.ndarray], success: bool = False) -> None:
        if success:
            key = (0, len(targets))
        elif error < self.threshold:
            key = (1, error + self.step_cost * len(targets))
        else:
            key = (2, error)
        if key < self.key:
            self.key, self.targets = key, list(targets)


class PushTExpert:
    """Plans push primitives in a `PhysicsCopy` of `physics` (the unwrapped gym-pusht env).

    Call with an observation (ignored: the expert reads the true state from `physics`, which it
    also needs for planning) to get the next target (2,) float32.
    """

    def __init__(
        self,
        physics,
        max_step_px: float = 12.0,
        push_step_px: float = 8.0,
        settle_steps: int = 2,
        step_cost: float = 0.3,
        max_episode_steps: int = 300,
        first_contact: str | None = None,
    ):
        self.physics = physics
        self.copy = PhysicsCopy(physics)
        self.max_step_px, self.push_step_px = max_step_px, min(push_step_px, max_step_px)
        self.settle_steps, self.step_cost = settle_steps, step_cost
        self.steps_left = max_episode_steps
        self.points, self.normals, self.parts = contact_points()
        if first_contact is not None and first_contact not in STRATEGIES:
            raise ValueError(f"first_contact must be one of {STRATEGIES}, got {first_contact!r}")
        self.first_contact = first_contact
        self.last_target = np.asarray(physics.agent.position, np.float64)
        self.queue: list[np.ndarray] = []
        self.num_plans = 0

    def __call__(self, observation=None) -> np.ndarray:
        if not self.queue:
            self.queue = self.plan()
            self.num_plans += 1
        target = self.queue.pop(0)
        self.last_target = target
        self.steps_left -= 1
        return np.asarray(target, np.float32)

    def plan(self) -> list[np.ndarray]:
        """Targets (each (2,)) of the best push primitive from the env's current state."""
        copy = self.copy
        copy.load(self.physics)
        root = copy.save()
        router = Router(copy)
        rotation = _rotation(copy.block.angle)
        origin = np.asarray(copy.block.position)
        agent = np.asarray(copy.agent.position)
        best = _Candidate(copy.keypoint_error(), self.step_cost)
        contacts = zip(self.points, self.normals, self.parts, strict=True)
        first = STRATEGIES.index(self.first_contact) if self.first_contact else None
        for point, normal, part in contacts:
            if self.num_plans == 0 and first is not None and part != first:
                continue
            normal_w = rotation @ normal
            contact = rotation @ point + origin + normal_w * AGENT_RADIUS
            pre_contact = contact + normal_w * STANDOFF
            # The route starts at the agent, but the first target continues from the last one.
            waypoints = router.route(agent, pre_contact)
            approach = polyline([self.last_target, *waypoints[1:]], self.max_step_px)
            copy.restore(root)
            self._rollout(approach, pre_contact, -normal_w, best)
        if not best.targets:  # nothing fits the remaining steps: hold still
            return [self.last_target]
        return best.targets

    def _rollout(self, approach, pre_contact, push_dir, best: _Candidate) -> None:
        """Simulates approach then a push, offering `best` a plan at every push checkpoint."""
        copy, budget = self.copy, self.steps_left
        targets = list(approach)[:budget]
        if self._simulate(targets, best):
            return
        position = pre_contact
        for distance in PUSH_DISTANCES:
            end = pre_contact + push_dir * (STANDOFF + distance)
            push = straight_line(position, end, self.push_step_px)
            position = end
            if len(targets) + len(push) > budget:
                return
            if self._simulate(push, best, prefix=targets):
                return
            targets += push
            branch = copy.save()
            settle = [end] * min(self.settle_steps, budget - len(targets))
            if not self._simulate(settle, best, prefix=targets):
                best.offer(copy.keypoint_error(), targets + settle)
            copy.restore(branch)

    def _simulate(self, targets, best: _Candidate, prefix=()) -> bool:
        """Steps the copy through `targets`; offers `best` a success and returns True on one."""
        copy = self.copy
        for i, target in enumerate(targets):
            copy.step(target)
            # Coverage (shapely) is slow; only near the goal can it pass the threshold.
            if copy.keypoint_error() < 6.0 and copy.coverage() > SUCCESS_COVERAGE:
                plan = [*prefix, *targets[: i + 1]]
                best.offer(0.0, plan, success=True)
                return True
        return False


def make_expert(
    env,
    seed: int,
    *,
    strategies: tuple[float, ...] | None = None,
    quality_mix: tuple[float, float, float, float] = demonstrators.PROFICIENT,
    **expert_options,
):
    """The expert of episode `seed` on `env` (a `pusht.PushTEnv`): its strategy drawn with
    `strategies` (probabilities over STRATEGIES; None: free planning), its demonstrator with
    `quality_mix`; named in the returned expert's `strategy` / `quality` where asked for."""
    strategy = demonstrators.draw_strategy(strategies, STRATEGIES, seed)
    quality = demonstrators.draw_quality(quality_mix, seed)
    if quality == "slow":
        for name, default in (("max_step_px", 12.0), ("push_step_px", 8.0)):
            expert_options[name] = SLOW_SPEED * expert_options.get(name, default)
    expert = PushTExpert(env.physics, first_contact=strategy, **expert_options)
    if quality_mix != demonstrators.PROFICIENT:
        expert = demonstrators.MixedQualityExpert(
            expert, quality, seed, hold=lambda last: last, noise_std=NOISY_STD,
            hesitation_steps=HESITATION_STEPS, hesitate_within=HESITATE_WITHIN,
            clip=(0.0, 512.0),
        )  # fmt: skip
        expert.quality = quality
    if strategy is not None:
        expert.strategy = strategy
    return expert
