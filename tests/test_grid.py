import math

import numpy as np
import pytest
import torch

from pvkd.errors import ParamsError
from pvkd.grid import Grid, grid_from_params

FULL = Grid("cylinder", (480, 360, 32), (0.0, -math.pi, -4.0), (50.0, math.pi, 2.0))


def cells(grid, rho_phi_z):
    return grid.cell_of(np.asarray(rho_phi_z, dtype=np.float64)).tolist()


def test_cylinder_cell_size_follows_cylinder3d():
    # Cylinder3D: interval = range / (size - 1)
    assert FULL.cell_size == pytest.approx((50 / 479, 2 * math.pi / 359, 6 / 31))


def test_cylinder_cells_at_borders_by_hand():
    d_rho, d_phi, d_z = 50 / 479, 2 * math.pi / 359, 6 / 31
    eps = 1e-9
    got = cells(
        FULL,
        [
            [0.0, -math.pi, -4.0],  # the lower corner
            [3 * d_rho - eps, -math.pi + 7 * d_phi - eps, -4 + 5 * d_z - eps],  # just below a border
            [3 * d_rho + eps, -math.pi + 7 * d_phi + eps, -4 + 5 * d_z + eps],  # just above it
            [49.99, 0.0, 0.0],  # 49.99 / d_rho = 478.9; pi / d_phi = 179.5; 4 / d_z = 20.67
            [50.0, math.pi, 2.0],  # the upper bounds: the last index holds only them
        ],
    )
    assert got == [[0, 0, 0], [2, 6, 4], [3, 7, 5], [478, 179, 20], [479, 359, 31]]


def test_points_outside_the_range_go_to_border_cells():
    got = cells(FULL, [[80.0, 0.0, -10.0], [120.0, 0.0, 10.0]])
    assert got == [[479, 179, 0], [479, 179, 31]]


def test_phi_seam_at_plus_minus_pi_from_cartesian():
    # atan2 gives +pi for y = +0.0 and -pi for y = -0.0: opposite ends of the phi axis
    xyz = np.array([[-10.0, 0.0, 0.0], [-10.0, -0.0, 0.0], [-10.0, 0.5, 0.0], [-10.0, -0.5, 0.0]], np.float32)
    phi_idx = FULL.cell_of(FULL.to_grid_coords(xyz))[:, 1].tolist()
    # atan2(+-0.5, -10) = +-(pi - 0.04996): 0.04996 / (2 pi / 359) = 2.85 cells from either end
    assert phi_idx == [359, 0, 356, 2]


def test_float32_upper_bound_stays_inside_grid():
    xyz = np.array([[-50.0, 0.0, 2.0], [0.0, 50.0, 2.0]], np.float32)  # pi rounds up in float32
    idx = FULL.cell_of(FULL.to_grid_coords(xyz))
    assert (idx < np.array(FULL.size)).all() and (idx >= 0).all()


def test_torch_and_numpy_agree():
    rng = np.random.default_rng(0)
    xyz = rng.uniform(-60, 60, (5000, 3)).astype(np.float32)
    np_idx = FULL.cell_of(FULL.to_grid_coords(xyz))
    t_idx = FULL.cell_of(FULL.to_grid_coords(torch.from_numpy(xyz))).numpy()
    assert (np_idx == t_idx).mean() > 0.999  # float rounding of atan2/sqrt may flip a border point


def test_cell_centre_is_inside_its_cell():
    idx = np.array([[0, 0, 0], [10, 100, 5], [478, 358, 30]])
    centres = FULL.cell_centre(idx)
    assert (FULL.cell_of(centres) == idx).all()


def test_linear_index_row_major():
    assert FULL.linear_index(np.array([[1, 2, 3]])).tolist() == [(1 * 360 + 2) * 32 + 3]


def test_cubic_grid_from_params():
    g = grid_from_params(
        {"type": "cubic", "cubic": {"min_bound": [-50, -50, -4], "max_bound": [50, 50, 2], "voxel_size": [0.4] * 3}}
    )
    assert g.size == (250, 250, 15)
    assert g.cell_size == pytest.approx((0.4, 0.4, 0.4))
    got = g.cell_of(np.array([[-50.0, -0.2, -4.0], [49.99, 0.2, 1.99], [60.0, 0.0, 5.0]])).tolist()
    assert got == [[0, 124, 0], [249, 125, 14], [249, 125, 14]]


def test_bad_grid_type_names_the_key():
    with pytest.raises(ParamsError, match="grid.type"):
        grid_from_params({"type": "hexagonal"})
