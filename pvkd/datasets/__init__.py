"""Dataset readers: SemanticKITTI and nuScenes-lidarseg behind one small interface (see base.py)."""

from __future__ import annotations

from pvkd.datasets.base import DataError, Dataset, ScanRecord

__all__ = ["DataError", "Dataset", "ScanRecord", "open_dataset"]


def open_dataset(data: dict) -> Dataset:
    """Build the reader named by the ``data`` section of params.yaml."""
    splits = data.get("splits")
    labelled = tuple(data.get("labelled_splits", ("train", "val")))
    if data["dataset"] == "semantickitti":
        from pvkd.datasets.semantickitti import SemanticKITTI

        return SemanticKITTI(data["root"], splits=splits, labelled_splits=labelled)
    if data["dataset"] == "nuscenes":
        from pvkd.datasets.nuscenes import NuScenes

        return NuScenes(
            data["root"],
            version=data["nuscenes_version"],
            splits=splits,
            labelled_splits=labelled,
            sweep_splits=tuple(data.get("sweep_splits") or ()),
        )
    raise DataError(f"data.dataset must be 'semantickitti' or 'nuscenes', got {data['dataset']!r} (params.yaml)")
