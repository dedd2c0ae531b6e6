"""Published Cylinder3D and PVKD checkpoints (spconv 1.x) as pvkd model records (spconv 2): ``pvkd import-teacher``.

The files
---------
The official Cylinder3D checkpoints (SemanticKITTI, nuScenes) and the PVKD release files
(``cyl_sem_{0.5x,1.0x,1.5x}_*.pt``, ``cyl_nusc_0.5x_*.pt``) are bare ``state_dict``\\ s of the
published ``cylinder_asym`` model, saved with spconv 1.2.1: the point network under
``cylinder_3d_generator.`` and the sparse U-Net under ``cylinder_3d_spconv_seg.`` (274 keys,
55,853,366 parameters for the official SemanticKITTI file). There is no point-wise head. Their
widths differ (the PVKD files use base widths 16, 32, 48, compressions 16 or 32, point features
128 or 256), so everything is read from the shapes (:func:`detect_config`).

What converting means
---------------------
* **Layout.** spconv 1.x stores a conv weight as ``[k0, k1, k2, in, out]``, spconv 2 as
  ``[out, k0, k1, k2, in]``; a permutation (``SPCONV_SAVED_WEIGHT_LAYOUT`` is not used: spconv
  2.3.8 permutes twice with it, spconv#605).
* **The operator each conv was trained as.** spconv 1.x SubM convs reuse the index pairs of the
  first conv computed under their ``indice_key``, with no kernel check, and a conv then reads
  ``filters.view(-1, C_in, C_out)[k]`` for the pair slots ``k`` of that first conv's geometry. In
  the published network each block's convs share one key, so they all ran the kernel of the
  block's first conv (:data:`PUBLISHED_CONVS` lists every conv with its declared kernel and key, in
  the order the published forward computes them; :func:`trained_kernel` derives the geometry).
  The trained operator of a conv is therefore the first ``prod(geometry)`` slots of its flattened
  weight, reshaped to the geometry: for a declared 3x3x3 ``conv3`` under a 1x3x3 geometry the
  slab ``weight[0]``; its other 18 taps were never read (they are NaN in the released file).
  pvkd's Cylinder3D with ``kernels: published`` has exactly these kernels.
* **Names.** One table (:func:`module_names`) maps every published module to pvkd's.
* **Refusals.** A key the table cannot place, a place no key fills, a shape that does not fit, and
  a NaN or infinity in any value the converted model reads are errors naming the key. Non-finite
  values in taps spconv 1.x never read are dropped with the taps (and counted).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from pvkd.errors import DataError, ParamsError

GENERATOR, SEGMENTOR = "cylinder_3d_generator.", "cylinder_3d_spconv_seg."
Kernel = tuple[int, int, int]
K333, K133, K313 = (3, 3, 3), (1, 3, 3), (3, 1, 3)
K311, K131, K113 = (3, 1, 1), (1, 3, 1), (1, 1, 3)
# the shapes of the official Cylinder3D release (Cylinder3D's config/*.yaml: init_size 32, fea_compre 16)
OFFICIAL_SHAPES = {"width": 32, "point_mlp": [64, 128, 256], "point_feature_dim": 256, "compressed_dim": 16}
# the grid the published models were trained on (Cylinder3D's config: phi bounds +-3.1415926, z by dataset)
PUBLISHED_GRID_SIZE = (480, 360, 32)
# state_dict entries that are BN buffers, not parameters
BUFFERS = (".running_mean", ".running_var", ".num_batches_tracked")


@dataclass(frozen=True)
class PublishedConv:
    """A sparse conv of the published segmentor: its module (under ``cylinder_3d_spconv_seg.``), the
    kernel its line declares and its ``indice_key`` (None: a strided or inverse conv, whose kernel is
    its own; the inverse reuses its strided conv's pairs, same kernel)."""

    module: str
    declared: Kernel
    key: str | None


def _published_convs() -> tuple[PublishedConv, ...]:
    """Every sparse conv of ``Asymm_3d_spconv``, in the order its forward first computes each."""
    convs = [PublishedConv(f"downCntx.{name}", k, "prebef")  # ResContextBlock(indice_key="pre"): key + "bef"
             for name, k in (("conv1", K133), ("conv1_2", K313), ("conv2", K313), ("conv3", K133))]
    for n in range(2, 6):  # ResBlock(indice_key=f"down{n}")
        convs += [PublishedConv(f"resBlock{n}.{name}", k, f"down{n}bef")
                  for name, k in (("conv1", K313), ("conv1_2", K133), ("conv2", K133), ("conv3", K313))]
        convs.append(PublishedConv(f"resBlock{n}.pool", K333, None))
    for n in range(4):  # UpBlock(indice_key=f"up{n}", up_key=f"down{5 - n}")
        convs.append(PublishedConv(f"upBlock{n}.trans_dilao", K333, f"up{n}new_up"))
        convs.append(PublishedConv(f"upBlock{n}.up_subm", K333, None))
        convs += [PublishedConv(f"upBlock{n}.{name}", k, f"up{n}")
                  for name, k in (("conv1", K133), ("conv2", K313), ("conv3", K333))]
    convs += [PublishedConv(f"ReconNet.{name}", k, "reconbef")  # ReconBlock(indice_key="recon")
              for name, k in (("conv1", K311), ("conv1_2", K131), ("conv1_3", K113))]
    convs.append(PublishedConv("logits", K333, "logit"))
    return tuple(convs)


PUBLISHED_CONVS = _published_convs()


def trained_kernel(conv: PublishedConv, convs: tuple[PublishedConv, ...] = PUBLISHED_CONVS) -> Kernel:
    """The geometry spconv 1.x ran ``conv`` with: the declared kernel of the first conv computed under its key."""
    if conv.key is None:
        return conv.declared
    return next(c.declared for c in convs if c.key == conv.key)


def module_names() -> dict[str, str]:
    """Published module (full name) -> pvkd module, for every module that holds parameters or buffers."""
    names = {f"{GENERATOR}PPmodel.{i}": f"point_mlp.{i}" for i in range(11)}  # same Sequential, same indices
    names[f"{GENERATOR}fea_compression.0"] = "compress.0"
    seg = SEGMENTOR
    # an asymmetric residual block: (conv, its BN) -> pvkd's branch; conv1 -> conv1_2 is branch a
    residual = (("conv1", "bn0", "branch_a.0"), ("conv1_2", "bn0_2", "branch_a.1"),
                ("conv2", "bn1", "branch_b.0"), ("conv3", "bn2", "branch_b.1"))
    blocks = [("downCntx", "context")] + [(f"resBlock{n}", f"down.{n - 2}.res") for n in range(2, 6)]
    for block, ours in blocks:
        for conv, bn, branch in residual:
            names[f"{seg}{block}.{conv}"] = f"{ours}.{branch}.conv"
            names[f"{seg}{block}.{bn}"] = f"{ours}.{branch}.bn"
    for n in range(2, 6):
        names[f"{seg}resBlock{n}.pool"] = f"down.{n - 2}.pool"
    up = (("trans_dilao", "trans_bn", "reduce"), ("conv1", "bn1", "refine.0"), ("conv2", "bn2", "refine.1"),
          ("conv3", "bn3", "refine.2"))
    for n in range(4):
        for conv, bn, ours in up:
            names[f"{seg}upBlock{n}.{conv}"] = f"up.{n}.{ours}.conv"
            names[f"{seg}upBlock{n}.{bn}"] = f"up.{n}.{ours}.bn"
        names[f"{seg}upBlock{n}.up_subm"] = f"up.{n}.up"
    for i, (conv, bn) in enumerate((("conv1", "bn0"), ("conv1_2", "bn0_2"), ("conv1_3", "bn0_3"))):
        names[f"{seg}ReconNet.{conv}"] = f"recon.convs.{i}"
        names[f"{seg}ReconNet.{bn}"] = f"recon.bns.{i}"
    names[f"{seg}logits"] = "logits"
    return names


def pvkd_key(key: str, names: dict[str, str]) -> str | None:
    """The pvkd state_dict key of a published key, or None if the table has no place for it."""
    module, _, leaf = key.rpartition(".")
    if key == f"{SEGMENTOR}logits.bias":
        return "logits_bias"  # pvkd keeps the head's bias outside the conv (spconv's CPU eval path)
    return f"{names[module]}.{leaf}" if module in names else None


# ------------------------------------------------------------------------------------------ reading
def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The published ``state_dict`` in a file: a bare one, or under ``state_dict`` / ``model`` of a dict;
    DataParallel's ``module.`` prefix removed. Anything else is refused, naming the file."""
    from pvkd.train.checkpoint import MODEL_FORMAT, load

    path = Path(path)
    obj = load(path)
    if isinstance(obj, dict) and obj.get("format") == MODEL_FORMAT:
        raise DataError(f"{path}: already a pvkd model record; use it as it is (no import needed)")
    if isinstance(obj, dict):
        for wrapper in ("state_dict", "model", "model_state_dict"):
            if isinstance(obj.get(wrapper), dict):
                obj = obj[wrapper]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise DataError(f"{path}: not a state_dict of tensors (a {type(obj).__name__}); expected a published "
                        "Cylinder3D or PVKD checkpoint")
    state = {str(k).removeprefix("module."): v for k, v in obj.items()}
    if not any(k.startswith((GENERATOR, SEGMENTOR)) for k in state):
        sample = ", ".join(sorted(state)[:3])
        raise DataError(f"{path}: no key under {GENERATOR!r} or {SEGMENTOR!r} (first keys: {sample}); not a "
                        "published Cylinder3D / PVKD checkpoint")
    return state


def _shape(state: dict[str, torch.Tensor], key: str, path: Path, dims: int) -> tuple[int, ...]:
    if key not in state:
        raise DataError(f"{path}: no key {key!r}; not a complete Cylinder3D checkpoint")
    shape = tuple(state[key].shape)
    if len(shape) != dims:
        raise DataError(f"{path}: {key} has shape {list(shape)}, expected {dims} dimensions")
    return shape


def detect_config(state: dict[str, torch.Tensor], path: str | Path) -> dict:
    """The pvkd model options of a published checkpoint, from its shapes: base width, point MLP widths,
    point feature and compression sizes, classes. A file already in spconv 2's layout is refused."""
    path = Path(path)
    first = _shape(state, f"{SEGMENTOR}downCntx.conv1.weight", path, 5)
    if first[:3] != K133:
        if first[1:4] == K133:
            raise DataError(
                f"{path}: {SEGMENTOR}downCntx.conv1.weight has shape {list(first)}, the spconv 2 layout [out, k0, "
                "k1, k2, in]: a file of a spconv-2 port, trained with its own kernels, not a spconv 1.x release")
        raise DataError(f"{path}: {SEGMENTOR}downCntx.conv1.weight has shape {list(first)}, expected [1, 3, 3, in, "
                        "out] (spconv 1.x, a 1x3x3 kernel)")
    compressed, width = first[3], first[4]
    mlp_in = _shape(state, f"{GENERATOR}PPmodel.1.weight", path, 2)
    if mlp_in[1] != 9:
        raise DataError(f"{path}: {GENERATOR}PPmodel.1.weight takes {mlp_in[1]} point features; pvkd's "
                        "Cylinder3D reads the published 9")
    point_mlp = [_shape(state, f"{GENERATOR}PPmodel.{i}.weight", path, 2)[0] for i in (1, 4, 7)]
    point_feature_dim = _shape(state, f"{GENERATOR}PPmodel.10.weight", path, 2)[0]
    compression = _shape(state, f"{GENERATOR}fea_compression.0.weight", path, 2)
    if compression != (compressed, point_feature_dim):
        raise DataError(f"{path}: {GENERATOR}fea_compression.0.weight has shape {list(compression)}, expected "
                        f"[{compressed}, {point_feature_dim}] from the first conv and the point MLP")
    num_classes = _shape(state, f"{SEGMENTOR}logits.weight", path, 5)[4]
    return {"arch": "cylinder3d", "width": int(width), "num_classes": int(num_classes),
            "point_mlp": [int(d) for d in point_mlp], "point_feature_dim": int(point_feature_dim),
            "compressed_dim": int(compressed), "kernels": "published"}


def is_official_release(config: dict) -> bool:
    """Whether the shapes are those of the official Cylinder3D release (the PVKD files differ in at least one)."""
    return all(config[k] == v for k, v in OFFICIAL_SHAPES.items())


# ---------------------------------------------------------------------------------------- converting
@dataclass
class Converted:
    """A published checkpoint in pvkd's names and spconv 2's layout, without a point head."""

    state_dict: dict[str, torch.Tensor]
    source_keys: dict[str, str]  # pvkd key -> the published key it came from (for messages)
    dropped_nonfinite: dict[str, int]  # published key -> non-finite values in taps spconv 1.x never read


def convert_conv(weight: torch.Tensor, kernel: Kernel, key: str, path: Path) -> tuple[torch.Tensor, int]:
    """A spconv 1.x conv weight ``[k0, k1, k2, in, out]`` as the operator it was trained as, in spconv 2's layout
    ``[out, *kernel, in]``: slots ``0 .. prod(kernel) - 1`` of ``weight.view(-1, in, out)`` (what spconv 1.x read
    over the pair slots of ``kernel``'s geometry), reshaped to ``kernel``. Returns it and the number of
    non-finite values in the slots left out."""
    c_in, c_out = weight.shape[3], weight.shape[4]
    slots = math.prod(kernel)
    flat = weight.reshape(-1, c_in, c_out)
    if flat.shape[0] < slots:
        raise DataError(f"{path}: {key} has {flat.shape[0]} taps, fewer than the {slots} its geometry reads")
    used = flat[:slots]
    bad = ~torch.isfinite(used)
    if bool(bad.any()):
        taps = sorted({int(t) for t in bad.nonzero()[:, 0]})
        raise DataError(f"{path}: {key} holds NaN or infinite values in tap(s) {taps} of the {slots} that spconv 1.x "
                        "reads: the file is damaged; re-download it")
    dropped = int((~torch.isfinite(flat[slots:])).sum())
    return used.reshape(*kernel, c_in, c_out).permute(4, 0, 1, 2, 3).contiguous(), dropped


def convert_state_dict(state: dict[str, torch.Tensor], path: str | Path) -> Converted:
    """Rename every key, convert every conv weight (:func:`convert_conv`), refuse what cannot be placed or is
    not finite; the published key is named in every error."""
    path = Path(path)
    names = module_names()
    kernels = {f"{SEGMENTOR}{c.module}.weight": trained_kernel(c) for c in PUBLISHED_CONVS}
    out: dict[str, torch.Tensor] = {}
    sources: dict[str, str] = {}
    dropped: dict[str, int] = {}
    unplaced = []
    for key, value in state.items():
        ours = pvkd_key(key, names)
        if ours is None:
            unplaced.append(key)
            continue
        if key in kernels:
            if value.dim() != 5:
                raise DataError(f"{path}: {key} has shape {list(value.shape)}, expected a 5-d spconv 1.x weight")
            value, lost = convert_conv(value, kernels[key], key, path)
            if lost:
                dropped[key] = lost
        elif value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise DataError(f"{path}: {key} holds NaN or infinite values, which the converted model would use")
        out[ours], sources[ours] = value.clone(), key
    if unplaced:
        raise DataError(f"{path}: {len(unplaced)} key(s) with no place in pvkd's Cylinder3D: "
                        f"{', '.join(unplaced[:5])}{' ...' if len(unplaced) > 5 else ''}")
    return Converted(out, sources, dropped)


def check_fits(converted: Converted, expected: dict[str, torch.Tensor], path: str | Path) -> None:
    """Every key the model expects (its point head aside) filled, with the right shape; errors name the key."""
    names = {v: k for k, v in module_names().items()}
    missing = [k for k in expected if k not in converted.state_dict and not k.startswith("point_head.")]
    if missing:
        module, _, leaf = missing[0].rpartition(".")
        raise DataError(f"{path}: no value for {len(missing)} weight(s) of pvkd's Cylinder3D, e.g. {missing[0]} "
                        f"(published key {names.get(module, '?')}.{leaf})")
    for key, value in converted.state_dict.items():
        if key not in expected:
            raise DataError(f"{path}: {converted.source_keys[key]} has no place in the model ({key})")
        if tuple(value.shape) != tuple(expected[key].shape):
            raise DataError(f"{path}: {converted.source_keys[key]} converts to shape {list(value.shape)}, the model's "
                            f"{key} is {list(expected[key].shape)}")


# ---------------------------------------------------------------------------------------- the head
@dataclass(frozen=True)
class HeadTraining:
    """Training the point head alone on the frozen imported backbone."""

    steps: int = 300
    lr: float = 1e-3
    batch_size: int = 2
    class_weight_power: float = 0.5  # CE weights (train point frequency) ** -power, as train.loss does
    seed: int = 0


def train_point_head(model, data, cfg: HeadTraining, device: torch.device,
                     progress: Callable[[int, int], None] = lambda done, total: None) -> list[float]:
    """Train ``model.point_head`` for ``cfg.steps`` steps of point CE on the train split; every other weight
    frozen, every BN outside the head in eval mode (running statistics kept). Returns the losses."""
    import numpy as np
    import torch.nn.functional as F

    from pvkd.train.data import ScanDataset, make_loader
    from pvkd.train.losses import IGNORE, class_weights

    dataset = ScanDataset(data.root, "train")
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    passes = math.ceil(cfg.steps * cfg.batch_size / len(dataset))  # shuffled passes over the train scans
    order = np.concatenate([rng.permutation(len(dataset)) for _ in range(passes)])
    batches = [[(0, int(p)) for p in order[i * cfg.batch_size:(i + 1) * cfg.batch_size]] for i in range(cfg.steps)]
    weight = None
    if cfg.class_weight_power > 0:
        weight = class_weights(data.stats, "train", "points", cfg.class_weight_power).to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    head = list(model.point_head.parameters())
    for p in head:
        p.requires_grad_(True)
    optimiser = torch.optim.Adam(head, lr=cfg.lr)
    model.eval()
    model.point_head.train()
    losses = []
    for step, batch in enumerate(make_loader(dataset, batches, workers=0)):
        batch = batch.to(device)
        if not bool((batch.labels != IGNORE).any()):  # nothing to learn from (and CE's mean would be 0/0)
            progress(step + 1, cfg.steps)
            continue
        out = model(batch.points)
        loss = F.cross_entropy(out.point_logits.float(), batch.labels, weight=weight, ignore_index=IGNORE)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
        progress(step + 1, cfg.steps)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    return losses


# ---------------------------------------------------------------------------------------- the import
def published_grid_note(grid) -> str | None:
    """A warning when the data's grid is not the one the published models were trained on, else None."""
    if tuple(grid.size) != PUBLISHED_GRID_SIZE:
        size = "x".join(map(str, grid.size))
        return (f"the data's grid is {size}, the published models ran on 480x360x32: the imported teacher computes "
                "another function than the published one (use the full-size params profile)")
    return None


def import_checkpoint(
    path: str | Path,
    data,
    point_head: str = "voxel",
    head: HeadTraining = HeadTraining(),
    train_splits: list[str] | None = None,
    device: torch.device = torch.device("cpu"),
    progress: Callable[[int, int], None] = lambda done, total: None,
) -> tuple[torch.nn.Module, dict]:
    """A published checkpoint as a pvkd model for ``data`` (a :class:`~pvkd.shards.ProcessedData`); returns
    ``(model in eval mode on device, model record)``.

    ``point_head``: ``voxel`` (no head: a point takes its voxel's logits, the published model's own
    prediction) or ``train`` (pvkd's head, trained alone on the frozen backbone, ``head``).
    ``train_splits``: the splits the weights saw (evaluate refuses to score a model on them); None: train and
    val for a PVKD SemanticKITTI file (fine-tuned on train + val), the train split otherwise."""
    from pvkd.train.checkpoint import model_for_data, model_record, trained_on

    if point_head not in ("voxel", "train"):
        raise ParamsError(f"point head must be voxel or train, got {point_head!r}")
    path = Path(path)
    state = read_checkpoint(path)
    config = detect_config(state, path)
    converted = convert_state_dict(state, path)
    official = is_official_release(config)
    classes = int(data.meta["num_classes"])
    if config["num_classes"] != classes:
        raise DataError(f"{path}: a {config['num_classes']}-class checkpoint cannot label {data.root} "
                        f"({data.meta['dataset']}, {classes} classes); the multi-scan and Waymo files are not "
                        "single-scan SemanticKITTI / nuScenes models")
    if train_splits is None:
        # the PVKD SemanticKITTI files were fine-tuned on train + val for the test server (their README's tips);
        # the official files and PVKD's nuScenes file (whose README states a val score) trained on train
        train_splits = ["train", "val"] if not official and classes == 20 else ["train"]
    model_cfg = {**config, "point_head": point_head == "train"}
    # the splits whose shards the import reads: the train split when it trains the head, else none
    reads = ("train",) if point_head == "train" else ()
    model, info = model_for_data(model_cfg, data, reads=reads)
    expected = model.state_dict()
    check_fits(converted, expected, path)
    model.load_state_dict({**expected, **converted.state_dict})
    model = model.to(device).eval()
    losses: list[float] = []
    if point_head == "train":
        losses = train_point_head(model, data, head, device, progress)
    parameters = sum(v.numel() for k, v in state.items() if not k.endswith(BUFFERS))
    imported = {
        "file": path.name,
        "sha256": file_sha256(path),
        "kind": "official Cylinder3D" if official else "PVKD release",
        "keys": len(state),
        "parameters": int(parameters),
        "dropped_nonfinite": converted.dropped_nonfinite,
        "point_head": point_head,
        **({"head_training": {**asdict(head), "first_loss": losses[0], "last_loss": losses[-1]}} if losses else {}),
    }
    record = model_record(model.state_dict(), trained_on(info, data, train_splits), step=0, imported=imported)
    return model, record
