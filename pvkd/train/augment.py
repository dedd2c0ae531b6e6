"""Training augmentation of the published Cylinder3D recipe, one random draw per scan.

In order: rotation about z by a uniform angle in +-``rotation_deg`` (SemanticKITTI 45,
nuScenes 180), a flip of x and/or y (each with probability 1/2: the published code picks one
of the four flip cases uniformly), one uniform x-y scale factor, and a translation drawn from
N(0, ``translate_std``) per axis. The composition is one affine map ``p -> A p + t``.

Draws come from a generator the dataset seeds with (seed, epoch, scan), so a scan gets the same
augmentation whatever worker, process or resumed run loads it.
"""

from __future__ import annotations

import numpy as np

from pvkd.train.config import AugmentConfig


def random_transform(cfg: AugmentConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One draw of the affine map: ``(A (3, 3), t (3,))``. Every draw is made whatever the flags,
    so switching one augmentation off leaves the others' random values unchanged."""
    angle = np.deg2rad(rng.uniform(-cfg.rotation_deg, cfg.rotation_deg))
    flip = rng.random(2) < 0.5
    scale = rng.uniform(*cfg.scale)
    translation = rng.normal(0.0, cfg.translate_std, 3)
    c, s = np.cos(angle), np.sin(angle)
    rotation = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    sign_x = -1.0 if cfg.flip_x and flip[0] else 1.0
    sign_y = -1.0 if cfg.flip_y and flip[1] else 1.0
    return np.diag([sign_x * scale, sign_y * scale, 1.0]) @ rotation, translation


def augment(xyz: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """(N, 3) float32 points -> their augmented copy."""
    matrix, translation = random_transform(cfg, rng)
    return (xyz.astype(np.float64) @ matrix.T + translation).astype(np.float32)
