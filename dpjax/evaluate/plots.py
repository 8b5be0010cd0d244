"""Pictures of rollouts: multimodal trajectories colored by mode, a strip of gym frames."""

from __future__ import annotations

import numpy as np


def plot_multimodal(rollouts_by_name: dict[str, dict], path, max_episodes: int = 60):
    """Trajectories of each policy, colored by the mode (side) they approached the cup from."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.patches as patches
    import matplotlib.pyplot as plt

    from dpjax.envs import multimodal as mm

    colors = {0: "tab:blue", 1: "tab:orange", 2: "tab:green", -1: "tab:gray"}
    names = list(rollouts_by_name)
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 4.2), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        r = rollouts_by_name[name]
        for i in range(min(max_episodes, len(r["success"]))):
            p = r["positions"][i, : int(r["length"][i]) + 1] - r["cup"][i]
            style = "-" if r["success"][i] else ":"
            ax.plot(p[:, 0], p[:, 1], style, color=colors[int(r["mode"][i])], lw=1, alpha=0.7)
        ax.add_patch(patches.Circle((0, 0), mm.CUP_RADIUS, color="black"))
        ax.add_patch(patches.Rectangle(
            (mm.WALL_X[0], -mm.WALL_HALF_HEIGHT), mm.WALL_X[1] - mm.WALL_X[0],
            2 * mm.WALL_HALF_HEIGHT, color="dimgray"))  # fmt: skip
        rate = float(np.mean(r["success"]))
        ax.set_title(f"{name}: success {rate:.0%}")
        ax.set_xlim(-1.05, 0.45)
        ax.set_ylim(-0.75, 0.75)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [plt.Line2D([], [], color=colors[k], label=lbl) for k, lbl in
               [(0, "north"), (1, "east"), (2, "south"), (-1, "no valid side")]]  # fmt: skip
    fig.legend(handles=handles, loc="lower center", ncol=4, frameon=False)
    fig.suptitle("Rollouts in the cup frame (solid: success, dotted: failure; wall at left)")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_frames(frames: list[tuple[int, np.ndarray]], path, title: str = "", max_frames: int = 8):
    """A strip of (step, image) frames, e.g. `rollout_gym(..., frames=6)["frames"]`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if len(frames) > max_frames:  # keep the first and last, evenly in between
        picks = np.linspace(0, len(frames) - 1, max_frames).round().astype(int)
        frames = [frames[i] for i in picks]
    fig, axes = plt.subplots(1, len(frames), figsize=(2.2 * len(frames), 2.5), squeeze=False)
    for ax, (step, image) in zip(axes[0], frames, strict=True):
        ax.imshow(image)
        ax.set_title(f"step {step}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
