"""spconv 1.x semantics in plain torch, and the published Cylinder3D built on them, module and key names as published.

Independent of pvkd (only torch): the reference that ``tests/test_convert.py`` and
``bench/convert_full_size.py`` hold the converted checkpoints to. What it reproduces of spconv
1.2.1 (``spconv/conv.py``, ``src/spconv/indice.cc``, ``spconv_ops.h``):

* a conv weight is ``[k0, k1, k2, in, out]``;
* the index pairs of a conv are computed by its *first* use of an ``indice_key`` and stored in the
  tensor's ``indice_dict``, one dict object passed on from tensor to tensor through the network;
  a later conv with the same key takes them as they are, whatever its own kernel (no check);
* pair slot ``k`` is the ``k``-th kernel offset in row-major order over the kernel of the conv
  that computed the pairs, and input site ``o - padding + offset`` feeds output site ``o`` (a
  strided conv: ``o * stride = p + padding - offset``);
* a conv multiplies the inputs of slot ``k`` by ``filters.view(-1, C_in, C_out)[k]`` and adds them
  into their outputs, for the slots of the stored pairs only (so a 3x3x3 conv under a 1x3x3
  geometry reads its first 9 taps, ``weight[0]``);
* an inverse conv runs the pairs of its key's strided conv backwards, onto that conv's input sites.

:class:`PublishedCylinder3D` is Cylinder3D's ``cylinder_asym`` (official master,
``network/cylinder_fea_generator.py`` and ``network/segmentator_3d_asymm_spconv.py``) with these
convs: the same attributes, forward order and indice keys, so its ``state_dict`` has the published
keys. Its point features follow the official dataloader (``cylinder_dataset``); it returns the
voxel logits on the occupied voxels instead of the dense grid.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
from torch import nn

K333, K133, K313 = (3, 3, 3), (1, 3, 3), (3, 1, 3)
K311, K131, K113 = (3, 1, 1), (1, 3, 1), (1, 1, 3)


@dataclass
class SparseTensor:
    """spconv 1.x's SparseConvTensor: features on ``indices`` (V, 4) [batch, i, j, k], and the shared indice_dict."""

    features: torch.Tensor
    indices: torch.Tensor  # int64
    spatial_shape: tuple[int, int, int]
    batch_size: int
    indice_dict: dict

    def replace(self, features: torch.Tensor) -> SparseTensor:
        # spconv 1.x hands the same indice_dict object on: pairs stored later are seen by every tensor of the net
        return SparseTensor(features, self.indices, self.spatial_shape, self.batch_size, self.indice_dict)


def _keys(indices: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    s0, s1, s2 = shape
    return ((indices[:, 0] * s0 + indices[:, 1]) * s1 + indices[:, 2]) * s2 + indices[:, 3]


def _rows(table: torch.Tensor, shape, sites: torch.Tensor) -> torch.Tensor:
    """Rows of ``sites`` among the sites of ``table`` (V, 4); -1 where absent or outside ``shape``."""
    inside = ((sites[:, 1:] >= 0) & (sites[:, 1:] < torch.tensor(shape))).all(1)
    keys = _keys(table, shape)
    order = torch.argsort(keys)
    sorted_keys = keys[order]
    wanted = _keys(sites.clamp(min=0), shape)
    pos = torch.searchsorted(sorted_keys, wanted).clamp(max=len(keys) - 1)
    found = inside & (sorted_keys[pos] == wanted)
    return torch.where(found, order[pos], torch.full_like(pos, -1))


def _offsets(kernel) -> list[tuple[int, int, int]]:
    """Kernel positions in spconv 1.x's order (row-major, last axis fastest)."""
    return list(itertools.product(*(range(k) for k in kernel)))


def subm_pairs(x: SparseTensor, kernel) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per slot: (input rows, output rows) of a SubM conv with ``kernel`` (padding kernel // 2) on ``x``'s sites."""
    pad = torch.tensor([k // 2 for k in kernel])
    pairs = []
    for offset in _offsets(kernel):
        shift = torch.tensor(offset) - pad
        sites = x.indices.clone()
        sites[:, 1:] += shift  # input site of each output site o: o - padding + offset
        rows = _rows(x.indices, x.spatial_shape, sites)
        keep = rows >= 0
        pairs.append((rows[keep], torch.nonzero(keep)[:, 0]))
    return pairs


def strided_pairs(x: SparseTensor, kernel, stride, padding):
    """Output sites, output shape and per-slot (input rows, output rows) of a strided sparse conv."""
    kernel, stride, padding = (torch.tensor(v) for v in (kernel, stride, padding))
    shape = tuple(int(v) for v in (torch.tensor(x.spatial_shape) + 2 * padding - (kernel - 1) - 1) // stride + 1)
    candidates = []
    for offset in _offsets(kernel.tolist()):
        q = x.indices[:, 1:] + padding - torch.tensor(offset)  # = o * stride
        o = torch.div(q, stride, rounding_mode="floor")
        valid = ((q % stride) == 0).all(1) & (o >= 0).all(1) & (o < torch.tensor(shape)).all(1)
        candidates.append((valid, torch.cat([x.indices[:, :1], o], 1)))
    every = torch.cat([sites[valid] for valid, sites in candidates])
    out_indices = torch.unique(every, dim=0)
    pairs = []
    for valid, sites in candidates:
        pairs.append((torch.nonzero(valid)[:, 0], _rows(out_indices, shape, sites[valid])))
    return out_indices, shape, pairs


def gather_gemm_scatter(features, weight, pairs, num_out, inverse=False) -> torch.Tensor:
    """sum over slots k: out[o] += in[i] @ weight.view(-1, C_in, C_out)[k] (inverse: the pairs backwards)."""
    c_in, c_out = weight.shape[-2], weight.shape[-1]
    filters = weight.reshape(-1, c_in, c_out)  # spconv 1.x: filters.view(-1, numInPlanes, numOutPlanes)
    out = features.new_zeros(num_out, c_out)
    for k, (inputs, outputs) in enumerate(pairs):
        if inverse:
            inputs, outputs = outputs, inputs
        if len(inputs):
            out.index_add_(0, outputs, features[inputs] @ filters[k])
    return out


class SubMConv3d(nn.Module):
    def __init__(self, c_in, c_out, kernel_size, indice_key, bias=False):
        super().__init__()
        self.kernel_size, self.indice_key = tuple(kernel_size), indice_key
        self.weight = nn.Parameter(torch.zeros(*self.kernel_size, c_in, c_out))
        self.bias = nn.Parameter(torch.zeros(c_out)) if bias else None

    def forward(self, x: SparseTensor) -> SparseTensor:
        stored = x.indice_dict.get(self.indice_key)
        if stored is None:  # the first conv of this key computes the pairs, with its own kernel
            stored = x.indice_dict[self.indice_key] = ("subm", subm_pairs(x, self.kernel_size))
        out = gather_gemm_scatter(x.features, self.weight, stored[1], len(x.features))
        return x.replace(out if self.bias is None else out + self.bias)


class SparseConv3d(nn.Module):
    def __init__(self, c_in, c_out, kernel_size, stride, padding, indice_key):
        super().__init__()
        self.kernel_size = (kernel_size,) * 3 if isinstance(kernel_size, int) else tuple(kernel_size)
        self.stride = (stride,) * 3 if isinstance(stride, int) else tuple(stride)
        self.padding, self.indice_key = (padding,) * 3, indice_key
        self.weight = nn.Parameter(torch.zeros(*self.kernel_size, c_in, c_out))

    def forward(self, x: SparseTensor) -> SparseTensor:
        out_indices, shape, pairs = strided_pairs(x, self.kernel_size, self.stride, self.padding)
        x.indice_dict[self.indice_key] = ("strided", x.indices, x.spatial_shape, pairs)
        out = gather_gemm_scatter(x.features, self.weight, pairs, len(out_indices))
        return SparseTensor(out, out_indices, shape, x.batch_size, x.indice_dict)


class SparseInverseConv3d(nn.Module):
    def __init__(self, c_in, c_out, kernel_size, indice_key):
        super().__init__()
        self.indice_key = indice_key
        self.weight = nn.Parameter(torch.zeros(kernel_size, kernel_size, kernel_size, c_in, c_out))

    def forward(self, x: SparseTensor) -> SparseTensor:
        _, in_indices, in_shape, pairs = x.indice_dict[self.indice_key]
        assert len(pairs) == math.prod(self.weight.shape[:3]), "inverse conv must have its couple conv's kernel"
        out = gather_gemm_scatter(x.features, self.weight, pairs, len(in_indices), inverse=True)
        return SparseTensor(out, in_indices, in_shape, x.batch_size, x.indice_dict)


# ----------------------------------------------------------------------------- Cylinder3D, as published
def conv3x3(c_in, c_out, indice_key):
    return SubMConv3d(c_in, c_out, K333, indice_key)


def conv1x3(c_in, c_out, indice_key):
    return SubMConv3d(c_in, c_out, K133, indice_key)


def conv3x1(c_in, c_out, indice_key):
    return SubMConv3d(c_in, c_out, K313, indice_key)


class ResContextBlock(nn.Module):
    def __init__(self, c_in, c_out, indice_key):
        super().__init__()
        key = indice_key + "bef"  # one key for the four convs: all run conv1's 1x3x3 geometry
        self.conv1, self.bn0, self.act1 = conv1x3(c_in, c_out, key), nn.BatchNorm1d(c_out), nn.LeakyReLU()
        self.conv1_2, self.bn0_2, self.act1_2 = conv3x1(c_out, c_out, key), nn.BatchNorm1d(c_out), nn.LeakyReLU()
        self.conv2, self.act2, self.bn1 = conv3x1(c_in, c_out, key), nn.LeakyReLU(), nn.BatchNorm1d(c_out)
        self.conv3, self.act3, self.bn2 = conv1x3(c_out, c_out, key), nn.LeakyReLU(), nn.BatchNorm1d(c_out)

    def forward(self, x):
        shortcut = self.conv1(x)
        shortcut = shortcut.replace(self.bn0(self.act1(shortcut.features)))
        shortcut = self.conv1_2(shortcut)
        shortcut = shortcut.replace(self.bn0_2(self.act1_2(shortcut.features)))
        res = self.conv2(x)
        res = res.replace(self.bn1(self.act2(res.features)))  # official master: the BN is applied
        res = self.conv3(res)
        res = res.replace(self.bn2(self.act3(res.features)))
        return res.replace(res.features + shortcut.features)


class ResBlock(nn.Module):
    def __init__(self, c_in, c_out, height_pooling, indice_key):
        super().__init__()
        key = indice_key + "bef"  # one key for the four convs: all run conv1's 3x1x3 geometry
        self.conv1, self.act1, self.bn0 = conv3x1(c_in, c_out, key), nn.LeakyReLU(), nn.BatchNorm1d(c_out)
        self.conv1_2, self.act1_2, self.bn0_2 = conv1x3(c_out, c_out, key), nn.LeakyReLU(), nn.BatchNorm1d(c_out)
        self.conv2, self.act2, self.bn1 = conv1x3(c_in, c_out, key), nn.LeakyReLU(), nn.BatchNorm1d(c_out)
        self.conv3, self.act3, self.bn2 = conv3x1(c_out, c_out, key), nn.LeakyReLU(), nn.BatchNorm1d(c_out)
        stride = 2 if height_pooling else (2, 2, 1)
        self.pool = SparseConv3d(c_out, c_out, 3, stride, 1, indice_key)

    def forward(self, x):
        shortcut = self.conv1(x)
        shortcut = shortcut.replace(self.bn0(self.act1(shortcut.features)))
        shortcut = self.conv1_2(shortcut)
        shortcut = shortcut.replace(self.bn0_2(self.act1_2(shortcut.features)))
        res = self.conv2(x)
        res = res.replace(self.bn1(self.act2(res.features)))
        res = self.conv3(res)
        res = res.replace(self.bn2(self.act3(res.features)))
        res = res.replace(res.features + shortcut.features)
        return self.pool(res), res


class UpBlock(nn.Module):
    def __init__(self, c_in, c_out, indice_key, up_key):
        super().__init__()
        self.trans_dilao = conv3x3(c_in, c_out, indice_key + "new_up")
        self.trans_act, self.trans_bn = nn.LeakyReLU(), nn.BatchNorm1d(c_out)
        self.conv1, self.act1, self.bn1 = conv1x3(c_out, c_out, indice_key), nn.LeakyReLU(), nn.BatchNorm1d(c_out)
        self.conv2, self.act2, self.bn2 = conv3x1(c_out, c_out, indice_key), nn.LeakyReLU(), nn.BatchNorm1d(c_out)
        self.conv3, self.act3, self.bn3 = conv3x3(c_out, c_out, indice_key), nn.LeakyReLU(), nn.BatchNorm1d(c_out)
        self.up_subm = SparseInverseConv3d(c_out, c_out, 3, up_key)

    def forward(self, x, skip):
        up = self.trans_dilao(x)
        up = up.replace(self.trans_bn(self.trans_act(up.features)))
        up = self.up_subm(up)
        up = up.replace(up.features + skip.features)
        up = self.conv1(up)
        up = up.replace(self.bn1(self.act1(up.features)))
        up = self.conv2(up)
        up = up.replace(self.bn2(self.act2(up.features)))
        up = self.conv3(up)
        return up.replace(self.bn3(self.act3(up.features)))


class ReconBlock(nn.Module):
    def __init__(self, c_in, c_out, indice_key):
        super().__init__()
        self.conv1, self.bn0 = SubMConv3d(c_in, c_out, K311, indice_key + "bef"), nn.BatchNorm1d(c_out)
        self.conv1_2, self.bn0_2 = SubMConv3d(c_in, c_out, K131, indice_key + "bef"), nn.BatchNorm1d(c_out)
        self.conv1_3, self.bn0_3 = SubMConv3d(c_in, c_out, K113, indice_key + "bef"), nn.BatchNorm1d(c_out)

    def forward(self, x):
        a = torch.sigmoid(self.bn0(self.conv1(x).features))
        b = torch.sigmoid(self.bn0_2(self.conv1_2(x).features))
        c = torch.sigmoid(self.bn0_3(self.conv1_3(x).features))
        return x.replace((a + b + c) * x.features)


class Asymm3dSpconv(nn.Module):
    def __init__(self, output_shape, num_input_features, num_classes, init_size):
        super().__init__()
        s = init_size
        self.sparse_shape = tuple(output_shape)
        self.downCntx = ResContextBlock(num_input_features, s, "pre")
        self.resBlock2 = ResBlock(s, 2 * s, True, "down2")
        self.resBlock3 = ResBlock(2 * s, 4 * s, True, "down3")
        self.resBlock4 = ResBlock(4 * s, 8 * s, False, "down4")
        self.resBlock5 = ResBlock(8 * s, 16 * s, False, "down5")
        self.upBlock0 = UpBlock(16 * s, 16 * s, "up0", "down5")
        self.upBlock1 = UpBlock(16 * s, 8 * s, "up1", "down4")
        self.upBlock2 = UpBlock(8 * s, 4 * s, "up2", "down3")
        self.upBlock3 = UpBlock(4 * s, 2 * s, "up3", "down2")
        self.ReconNet = ReconBlock(2 * s, 2 * s, "recon")
        self.logits = SubMConv3d(4 * s, num_classes, K333, "logit", bias=True)

    def forward(self, voxel_features, coords, batch_size) -> SparseTensor:
        x = SparseTensor(voxel_features, coords, self.sparse_shape, batch_size, {})
        x = self.downCntx(x)
        down1c, down1b = self.resBlock2(x)
        down2c, down2b = self.resBlock3(down1c)
        down3c, down3b = self.resBlock4(down2c)
        down4c, down4b = self.resBlock5(down3c)
        up4e = self.upBlock0(down4c, down4b)
        up3e = self.upBlock1(up4e, down3b)
        up2e = self.upBlock2(up3e, down2b)
        up1e = self.upBlock3(up2e, down1b)
        up0e = self.ReconNet(up1e)
        up0e = up0e.replace(torch.cat((up0e.features, up1e.features), 1))
        return self.logits(up0e)


class CylinderFea(nn.Module):
    def __init__(self, fea_dim=9, mlp=(64, 128, 256), out_pt_fea_dim=256, fea_compre=16):
        super().__init__()
        a, b, c = mlp
        self.PPmodel = nn.Sequential(
            nn.BatchNorm1d(fea_dim),
            nn.Linear(fea_dim, a), nn.BatchNorm1d(a), nn.ReLU(),
            nn.Linear(a, b), nn.BatchNorm1d(b), nn.ReLU(),
            nn.Linear(b, c), nn.BatchNorm1d(c), nn.ReLU(),
            nn.Linear(c, out_pt_fea_dim),
        )
        self.fea_compression = nn.Sequential(nn.Linear(out_pt_fea_dim, fea_compre), nn.ReLU())

    def forward(self, point_features, point_sites):
        """Per occupied (batch, cell): the max of its points' features, compressed; sites sorted as torch.unique's."""
        sites, inverse = torch.unique(point_sites, dim=0, return_inverse=True)
        processed = self.PPmodel(point_features)
        pooled = processed.new_full((len(sites), processed.shape[1]), -torch.inf)
        pooled = pooled.scatter_reduce(0, inverse[:, None].expand_as(processed), processed, "amax")
        return sites, self.fea_compression(pooled)


class PublishedCylinder3D(nn.Module):
    """``cylinder_asym``: the point network then the asymmetric sparse U-Net; voxel logits on the occupied sites."""

    def __init__(self, grid_size, min_bound, max_bound, num_classes=20, init_size=32, mlp=(64, 128, 256),
                 out_pt_fea_dim=256, fea_compre=16):
        super().__init__()
        self.grid_size = tuple(grid_size)
        self.min_bound, self.max_bound = tuple(min_bound), tuple(max_bound)
        self.cylinder_3d_generator = CylinderFea(9, mlp, out_pt_fea_dim, fea_compre)
        self.cylinder_3d_spconv_seg = Asymm3dSpconv(grid_size, fea_compre, num_classes, init_size)

    def point_features(self, xyz, intensity):
        """The official dataloader's 9 features and each point's cell (``cylinder_dataset.__getitem__``)."""
        lo = torch.tensor(self.min_bound, dtype=xyz.dtype)
        hi = torch.tensor(self.max_bound, dtype=xyz.dtype)
        polar = torch.stack([torch.hypot(xyz[:, 0], xyz[:, 1]), torch.atan2(xyz[:, 1], xyz[:, 0]), xyz[:, 2]], 1)
        intervals = (hi - lo) / (torch.tensor(self.grid_size, dtype=xyz.dtype) - 1)
        cells = torch.floor((torch.clamp(polar, lo, hi) - lo) / intervals).long()
        centres = (cells.to(xyz.dtype) + 0.5) * intervals + lo
        features = torch.cat([polar - centres, polar, xyz[:, :2], intensity[:, None]], 1)
        return features, cells

    def forward(self, xyz, intensity, batch, batch_size=1) -> tuple[torch.Tensor, torch.Tensor]:
        """``(sites (V, 4) [batch, i, j, k], voxel logits (V, C))``."""
        features, cells = self.point_features(xyz, intensity)
        sites, voxel_features = self.cylinder_3d_generator(features, torch.cat([batch[:, None], cells], 1))
        logits = self.cylinder_3d_spconv_seg(voxel_features, sites, batch_size)
        return logits.indices, logits.features


def randomize(model: PublishedCylinder3D, seed: int = 0, nan_unused_taps: bool = True) -> PublishedCylinder3D:
    """Random weights (no symmetry: every tap its own value) and random BN statistics; NaN in the taps of each
    up block's ``conv3`` past ``weight[0]``, as in the released file (spconv 1.x never reads them)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm1d):
                c = module.num_features
                module.weight.copy_(0.5 + torch.rand(c, generator=g))
                module.bias.copy_(0.2 * torch.randn(c, generator=g))
                module.running_mean.copy_(0.2 * torch.randn(c, generator=g))
                module.running_var.copy_(0.5 + torch.rand(c, generator=g))
                module.num_batches_tracked.fill_(int(torch.randint(1, 1000, (1,), generator=g)))
            elif isinstance(module, nn.Linear):
                module.weight.copy_(torch.randn(module.weight.shape, generator=g) / math.sqrt(module.in_features))
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=g))
            elif isinstance(module, SubMConv3d | SparseConv3d | SparseInverseConv3d):
                w = module.weight
                fan_in = math.prod(w.shape[:3]) * w.shape[3]
                w.copy_(torch.randn(w.shape, generator=g) * math.sqrt(3.0 / fan_in))
                if getattr(module, "bias", None) is not None:
                    module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=g))
        if nan_unused_taps:
            for n in range(4):
                getattr(model.cylinder_3d_spconv_seg, f"upBlock{n}").conv3.weight[1:] = torch.nan
    return model
