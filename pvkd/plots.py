"""Bird's-eye-view pictures of labelled point clouds (ground truth, predictions, disagreement maps).

``render_bev`` takes points and one integer per point (a training id, or any small class
index) and draws a top-down scatter coloured per id, with a legend of the ids present. Colours
default to SemanticKITTI's official colour map (``semantic-kitti.yaml``, converted from its BGR
to RGB and indexed by training id); pass ``colors`` for other label sets (nuScenes, or a
two-colour right/wrong map).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pvkd.labels import SEMANTICKITTI_CLASSES  # noqa: E402

# RGB per SemanticKITTI training id (0 = unlabeled, drawn grey so it stays visible on white).
SEMANTICKITTI_COLORS: tuple[tuple[int, int, int], ...] = (
    (160, 160, 160),
    (100, 150, 245),
    (100, 230, 245),
    (30, 60, 150),
    (80, 30, 180),
    (0, 0, 255),
    (255, 30, 30),
    (255, 40, 200),
    (150, 30, 90),
    (255, 0, 255),
    (255, 150, 255),
    (75, 0, 75),
    (175, 0, 75),
    (255, 200, 0),
    (255, 120, 50),
    (0, 175, 0),
    (135, 60, 0),
    (150, 240, 80),
    (255, 240, 150),
    (255, 0, 0),
)


def render_bev(
    points: np.ndarray,
    labels: np.ndarray,
    path: str | Path,
    class_names: Sequence[str] = SEMANTICKITTI_CLASSES,
    title: str | None = None,
    extent_m: float = 50.0,
    colors: Sequence[tuple[int, int, int]] = SEMANTICKITTI_COLORS,
    point_size: float = 1.0,
) -> Path:
    """Draw ``points[:, :2]`` seen from above, coloured by ``labels``, into the PNG ``path``.

    Only points within ``extent_m`` of the sensor (in x and y) are drawn; ``labels`` index
    ``colors`` and ``class_names``. Returns the path written.
    """
    labels = np.asarray(labels).astype(np.int64)
    if len(labels) != len(points):
        raise ValueError(f"render_bev: {len(points)} points but {len(labels)} labels")
    if len(labels) and labels.max() >= len(colors):
        raise ValueError(f"render_bev: label {labels.max()} has no colour ({len(colors)} colours given)")
    xy = np.asarray(points)[:, :2]
    inside = (np.abs(xy) <= extent_m).all(axis=1)
    xy, labels = xy[inside], labels[inside]
    palette = np.asarray(colors, dtype=np.float64) / 255.0

    fig, ax = plt.subplots(figsize=(8, 8), dpi=120)
    ax.scatter(xy[:, 0], xy[:, 1], c=palette[labels], s=point_size, marker=".", linewidths=0)
    ax.plot(0, 0, marker="^", color="black", markersize=6)  # the sensor, pointing along +x
    present = np.unique(labels)
    handles = [
        plt.Line2D([], [], marker="o", linestyle="", color=palette[c], label=class_names[c]) for c in present
    ]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    ax.set_xlim(-extent_m, extent_m)
    ax.set_ylim(-extent_m, extent_m)
    ax.set_aspect("equal")
    ax.set_xlabel("x (m)")
    ax.set_ylabel("y (m)")
    if title:
        ax.set_title(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path
