"""Multiply-accumulates counted on the actual sparse rows of a scan, and inference latency.

A sparse conv costs one ``C_in x C_out`` multiply-accumulate block per *index pair* (an input
row feeding an output row through one kernel offset), so its MACs are ``pairs x C_in x C_out``.
Pairs come from spconv's own pair builder (``spconv.pytorch.ops.get_indice_pairs``, the Native
rulebook, which gives the same pairs whatever algorithm the layer runs with), recomputed from the
layer's input rows in a forward hook. How that rulebook stores pairs (``csrc/sparse/indices.py``
and ``convops.py`` of spconv 2.3.8):

* SubM: the centre offset is implicit (every row maps to itself: ``rows`` pairs), and only the
  offsets before the centre are stored, each standing for itself *and* its mirror offset (pair
  (i, j) at offset k is pair (j, i) at offset kv-1-k), so ``pairs = rows + 2 * sum(stored)``;
* strided and inverse convs: every offset stored, ``pairs = sum(stored)`` (an inverse conv has
  the pairs of the strided conv it inverts, read back through its ``indice_key``);
* a 1x1x1 conv (``conv1x1``) is a plain matrix product: ``pairs = rows``.

Dense-equivalent layers: ``nn.Linear`` costs ``rows x in x out``; BatchNorm costs ``rows x C`` (one
multiply-add per element once folded into a scale and a shift). Activations, max/mean pooling
(torch-scatter), gathers and concatenations are memory traffic, not MACs, and are not counted.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from spconv.core import ConvAlgo
from spconv.pytorch import ops
from spconv.pytorch.conv import SparseConvolution
from spconv.pytorch.core import SparseConvTensor
from torch import nn

from pvkd.models.common import PointBatch


@dataclass
class LayerMacs:
    name: str
    kind: str  # "sparse_conv" | "linear" | "batchnorm"
    rows: int  # index pairs for a sparse conv, feature rows for the others
    macs: int


@dataclass
class MacReport:
    layers: list[LayerMacs] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(layer.macs for layer in self.layers)

    def by_kind(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for layer in self.layers:
            out[layer.kind] = out.get(layer.kind, 0) + layer.macs
        return out

    def as_dict(self) -> dict:
        return {"total": self.total, **{f"{k}": v for k, v in self.by_kind().items()}}


def _geometry_pairs(
    indices, batch_size, spatial_shape, ksize, stride, padding, dilation, out_padding, subm, transposed
):
    _, _, pair_num = ops.get_indice_pairs(
        indices,
        batch_size,
        list(spatial_shape),
        ConvAlgo.Native,
        list(ksize),
        list(stride),
        list(padding),
        list(dilation),
        list(out_padding),
        subm,
        transposed,
    )
    stored = pair_num.long().cpu()
    if subm:
        kv = stored.numel()
        return int(indices.shape[0]) + 2 * int(stored[: kv // 2].sum())
    return int(stored.sum())


def sparse_conv_pairs(conv: SparseConvolution, x: SparseConvTensor) -> int:
    """Index pairs a sparse conv processes on input ``x`` (see the module docstring for the rulebook)."""
    if conv.conv1x1:
        return int(x.indices.shape[0])
    if conv.inverse:
        data = x.find_indice_pair(conv.indice_key)
        if data is None:
            raise RuntimeError(f"inverse conv with key {conv.indice_key!r} found no forward conv to invert")
        return _geometry_pairs(
            data.indices,
            x.batch_size,
            data.spatial_shape,
            data.ksize,
            data.stride,
            data.padding,
            data.dilation,
            [0] * len(data.ksize),
            False,
            False,
        )
    return _geometry_pairs(
        x.indices,
        x.batch_size,
        x.spatial_shape,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.output_padding,
        conv.subm,
        conv.transposed,
    )


def count_macs(model: nn.Module, *inputs) -> MacReport:
    """Run ``model(*inputs)`` once (eval, no grad) and count the MACs of every layer on the rows it saw."""
    report = MacReport()
    handles = []

    def hook_for(name: str) -> Callable:
        def hook(module, args, output):
            x = args[0]
            if isinstance(module, SparseConvolution):
                pairs = sparse_conv_pairs(module, x)
                report.layers.append(
                    LayerMacs(name, "sparse_conv", pairs, pairs * module.in_channels * module.out_channels)
                )
            elif isinstance(module, nn.Linear):
                rows = x.numel() // x.shape[-1]
                report.layers.append(LayerMacs(name, "linear", rows, rows * module.in_features * module.out_features))
            else:
                rows = x.shape[0]
                report.layers.append(LayerMacs(name, "batchnorm", rows, x.numel()))

        return hook

    for name, module in model.named_modules():
        if isinstance(module, (SparseConvolution, nn.Linear, nn.modules.batchnorm._BatchNorm)):
            handles.append(module.register_forward_hook(hook_for(name)))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(*inputs)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return report


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_latency(
    model: nn.Module, points: PointBatch, warmup: int = 2, runs: int = 5, autocast_dtype: torch.dtype | None = None
) -> dict[str, float]:
    """Inference latency in ms (eval, no grad): median, min and max of ``runs`` timed runs after ``warmup``.

    Includes everything the model does per scan (voxelization, index building, point MLP, convs).
    """
    device = points.device
    was_training = model.training
    model.eval()
    times = []
    try:
        with (
            torch.no_grad(),
            torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None),
        ):
            for i in range(warmup + runs):
                _sync(device)
                start = time.perf_counter()
                model(points)
                _sync(device)
                if i >= warmup:
                    times.append((time.perf_counter() - start) * 1e3)
    finally:
        model.train(was_training)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times), "runs": runs}


def synthetic_scan(num_points: int, batch_size: int = 1, seed: int = 0, max_range: float = 50.0) -> PointBatch:
    """LiDAR-like random scans for MAC counts and timings when no processed data is at hand.

    A 64-beam spinning sensor 1.73 m above flat ground (elevations -24.8 to +2 degrees, as an
    HDL-64), in a ring of obstacles: each of 180 azimuth sectors has a wall at a random distance
    (4 m to ``max_range``) and height (1 to 8 m). Every ray returns the nearer of the ground and
    the wall, or nothing; ``num_points`` returns are drawn from the hits, with 2 cm range noise.
    So the points are dense near the sensor, in rings on the ground, sparse far away: voxel
    counts per level like a real scan's, which uniform random points would not give.
    """
    gen = torch.Generator().manual_seed(seed)
    height = 1.73
    scans = []
    for _ in range(batch_size):
        columns = max(64, int(math.ceil(2.5 * num_points / 64)))
        elevation = torch.deg2rad(torch.linspace(-24.8, 2.0, 64))[:, None].expand(64, columns).reshape(-1)
        # a random start angle: no ray sits exactly on the phi = +-pi seam
        start = float(torch.rand(1, generator=gen)) * 2 * math.pi / columns
        azimuth = (
            (torch.arange(columns) / columns * 2 * math.pi - math.pi + start)[None].expand(64, columns).reshape(-1)
        )
        sector = ((azimuth + math.pi) / (2 * math.pi) * 180).long().clamp(max=179)
        wall_distance = (4.0 + (max_range - 4.0) * torch.rand(180, generator=gen))[sector]
        wall_height = (1.0 + 7.0 * torch.rand(180, generator=gen))[sector]
        ground = torch.where(
            elevation < 0, height / torch.tan(-elevation).clamp_min(1e-6), torch.full_like(elevation, 1e9)
        )
        z_at_wall = torch.tan(elevation) * wall_distance  # relative to the sensor
        hits_wall = (z_at_wall >= -height) & (z_at_wall <= wall_height - height)
        r = torch.where(hits_wall, torch.minimum(wall_distance, ground), ground)
        hit = r < max_range
        idx = torch.nonzero(hit).squeeze(1)
        pick = idx[torch.randperm(len(idx), generator=gen)[:num_points]]
        if len(pick) < num_points:  # a very small sensor: repeat hits
            pick = idx[torch.randint(len(idx), (num_points,), generator=gen)]
        r = r[pick] + 0.02 * torch.randn(num_points, generator=gen)
        el, az = elevation[pick], azimuth[pick]
        xyz = torch.stack([r * torch.cos(el) * torch.cos(az), r * torch.cos(el) * torch.sin(az), r * torch.sin(el)], 1)
        scans.append((xyz, torch.rand(num_points, generator=gen)))
    return PointBatch.from_scans(scans)
