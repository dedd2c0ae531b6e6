"""What every benchmark shares: the device name, how a JSON result is written, and how a training run is made.

A training run of a seed study lives in a folder keyed by the fingerprint of what it is made
with (:func:`keyed_folder`): its effective params and the identities of its inputs (data, teacher,
cache). A finished run is reused only from its own folder, so a run made with other params (a
teacher trained longer, another probability) is never taken for this one.
"""

from __future__ import annotations

import copy
import hashlib
import json
import platform
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from pvkd.atomic import atomic_path
from pvkd.stats import seed_key


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's with the threads torch uses (results are compared per device)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def write_result(result: dict, out: Path) -> None:
    """``result`` as indented JSON at ``out``, written whole (an interrupted write leaves the old file)."""
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


def resummarize(out: Path, rebuild: Callable[[dict], dict]) -> None:
    """Rewrite a committed result with ``rebuild`` (its summary and metadata from its runs), no training."""
    write_result(rebuild(json.loads(Path(out).read_text())), Path(out))


PREPROCESS_SECTIONS = ("data", "grid", "preprocess")  # what `pvkd preprocess` reads
# the mixing augmentations a variant of the mixing benchmarks turns on (train.augment keys)
MIX_VARIANTS = {"affine": (), "paste": ("paste",), "polarmix": ("polarmix",), "lasermix": ("lasermix",),
                "all": ("paste", "polarmix", "lasermix")}


def train_streets(params: dict) -> list[str]:
    """The train streets (sequences) of ``params``' data: the label budgets are shares of them."""
    return list(params["data"]["splits"]["train"])


def street_budget(base: dict, streets: int, raw: Path) -> dict:
    """``base`` reading the streets at ``raw`` with its first ``streets`` train streets labelled (split ``train``)
    and the others as the split ``unlabelled`` (preprocessed without labels, cached; no model reads it unless
    the caller says so); val stays the params'."""
    p = copy.deepcopy(base)
    train = train_streets(base)
    p["data"]["root"] = str(raw)
    p["data"]["splits"] = {"train": train[:streets], "val": list(base["data"]["splits"]["val"])}
    p["preprocess"]["splits"] = ["train", "val"]
    p["cache"]["splits"] = ["train"]
    p["distill"]["unlabelled"]["split"] = None
    if streets < len(train):
        p["data"]["splits"]["unlabelled"] = train[streets:]
        p["preprocess"]["splits"].append("unlabelled")
        p["cache"]["splits"].append("unlabelled")
    return p


def synthesize(base: dict, params_path: str, work: Path) -> Path:
    """The params' synthetic streets, generated once under ``work`` in a folder keyed by the synth section."""
    folder, _ = keyed_folder(work, "raw", {"synth": canonical(base)["synth"]})
    raw = folder / "synthetic"
    if not (raw / "synth_summary.json").is_file():
        pvkd("synth", "--params", params_path, "--out", str(raw), "--metrics", str(folder / "synth.json"),
             log=folder / "synth.log")
    return raw


def preprocess(folder: Path, params: dict, raw: Path) -> tuple[Path, int]:
    """The budget's processed splits (keyed by the raw data and the preprocess sections) and its labelled scans."""
    spec = {"raw": raw.parent.name, "params": {k: canonical(params)[k] for k in PREPROCESS_SECTIONS}}
    prepared, _ = keyed_folder(folder, "data", spec)
    data = prepared / "processed"
    if not (data / "train/meta.json").is_file():
        (prepared / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        pvkd("preprocess", "--params", str(prepared / "params.yaml"), "--out", str(data),
             "--metrics", str(prepared / "preprocess.json"), log=prepared / "preprocess.log")
    return data, json.loads((data / "train/meta.json").read_text())["summary"]["scans"]


def pvkd(*args: str, log: Path) -> None:
    """Run one ``pvkd`` command; its output goes to ``log``; a failure names the log."""
    done = subprocess.run([sys.executable, "-m", "pvkd", *args], capture_output=True, text=True)
    log.write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise RuntimeError(f"pvkd {args[0]} failed; see {log}")


# ---------------------------------------------------------------- fingerprints of runs

VOLATILE = ("threads",)  # how a run executes, not what it computes: left out of its fingerprint


def canonical(params: dict) -> dict:
    """``params`` without what does not change a run's result: thread counts and ``data.root`` (a location;
    the data's content enters a fingerprint through its shards' hash or the params that made it)."""

    def strip(node):
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k not in VOLATILE}
        return [strip(v) for v in node] if isinstance(node, list) else node

    out = strip(copy.deepcopy(params))
    if isinstance(out.get("data"), dict):
        out["data"].pop("root", None)
    return out


def fingerprint(spec: dict) -> str:
    """A short hash of ``spec``'s canonical JSON (keys sorted): equal specs, equal fingerprints."""
    text = json.dumps(spec, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def keyed_folder(parent: Path, name: str, spec: dict) -> tuple[Path, str]:
    """``parent/<name>-<fingerprint>``, the folder of the run ``spec`` describes, and the fingerprint.

    The folder keeps ``spec.json`` (spec and fingerprint). A folder of that name holding another
    spec (a collision of the short hash, or an edited folder) is refused rather than reused.
    """
    key = fingerprint(spec)
    folder = parent / f"{name}-{key}"
    record = folder / "spec.json"
    if record.is_file():
        held = json.loads(record.read_text())
        if held.get("spec") != json.loads(json.dumps(spec, default=str)):
            raise RuntimeError(f"{folder}: holds a run made with other params than fingerprint {key} says; "
                               "move the folder away or use another --work")
    else:
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(record) as tmp:
            tmp.write_text(json.dumps({"fingerprint": key, "spec": spec}, indent=1, sort_keys=True, default=str))
    return folder, key


def data_identity(data: Path) -> dict:
    """A processed dataset by content: the shards' hash of each of its splits."""
    from pvkd.shards import read_meta

    return {"shards_hash": {s: m["shards_hash"] for s, m in read_meta(data)["splits"].items()}}


def cache_identity(cache: Path) -> dict:
    """A teacher cache by content: its teacher checkpoint, shards and format (from its manifest)."""
    manifest = json.loads((Path(cache) / "manifest.json").read_text())
    keys = ("format", "teacher_sha256", "data_hashes", "splits", "outputs", "topk", "feature_dim", "feature_scans")
    return {k: manifest.get(k) for k in keys}


def check_recorded(runs: Iterable[dict], cell: Callable[[dict], tuple], planned: dict[tuple, str], out: Path) -> None:
    """Refuse to mix settings in one result: a run recorded in ``out`` for a cell (setting and seed) that this
    invocation plans too, but with another fingerprint (or none, from before fingerprints)."""
    for r in runs:
        key = cell(r)
        if key in planned and r.get("fingerprint") != planned[key]:
            raise SystemExit(f"{out} holds {key} made with other params (fingerprint {r.get('fingerprint')}, this "
                             f"run's {planned[key]}); write to another --out")


# ---------------------------------------------------------------- training runs


@dataclass(frozen=True)
class Run:
    """One training run, ``pvkd <command>`` with ``params``; ``inputs``: the identities of what it reads besides
    the params (data, teacher, cache). Its fingerprint, known before it runs, names its folder."""

    command: str  # teacher-train | distill
    name: str
    params: dict
    inputs: dict
    args: tuple[str, ...] = ()
    # the run's effective config (pvkd.configs: what it computes with), when the bench gives it: the fingerprint
    # then ignores the rest of params.yaml, so a key added for other stages does not make it another run
    effective: dict | None = None

    @property
    def spec(self) -> dict:
        if self.effective is not None:
            return {"command": self.command, "effective": self.effective, "inputs": self.inputs}
        return {"command": self.command, "params": canonical(self.params), "inputs": self.inputs}

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.spec)

    def folder(self, parent: Path) -> Path:
        """Where it trains under ``parent``: ``<name>-<fingerprint>``."""
        return parent / f"{self.name}-{self.fingerprint}"

    def __call__(self, parent: Path) -> dict:
        """Train in the keyed folder under ``parent`` (reused when finished there); the fingerprint, the final
        validation and the step of the kept model."""
        folder, key = keyed_folder(parent, self.name, self.spec)
        (folder / "params.yaml").write_text(yaml.safe_dump(self.params, sort_keys=False))
        out = folder / "model.pt"
        if not out.is_file():  # written whole by the stage: present means finished
            pvkd(self.command, "--params", str(folder / "params.yaml"), "--out", str(out), "--live",
                 str(folder / "live"), "--checkpoints", str(folder / "ckpt"), *self.args, log=folder / "log.txt")
        record = torch.load(out, weights_only=True)
        print(f"{folder}: val mIoU {record['val']['miou']:.4f}", flush=True)
        return {"fingerprint": key, "miou": record["val"]["miou"], "iou": record["val"]["iou"], "step": record["step"]}


def _seeded(params: dict, section: str | tuple[str, str], seed: int, threads: int) -> dict:
    """A copy of ``params`` whose model (``teacher`` or ``(students, name)``) trains at ``seed`` (weights, scan
    order, augmentation) with ``threads`` CPU threads and keeps its final weights (no model picked on val)."""
    p = copy.deepcopy(params)
    model = p["teacher"] if section == "teacher" else p[section[0]][section[1]]
    model["train"] = {**(model.get("train") or {}), "seed": seed, "keep": "last", "threads": threads}
    return p


def student_run(name: str, seed: int, params: dict, threads: int, cache: Path, data: Path, teacher: Path,
                inputs: dict) -> Run:
    """Student ``name`` of ``params`` at ``seed`` (`pvkd distill`)."""
    return Run("distill", f"{name}-seed{seed}", _seeded(params, ("students", name), seed, threads),
               {"student": name, **inputs},
               ("--student", name, "--cache", str(cache), "--data", str(data), "--teacher", str(teacher)))


def teacher_run(name: str, seed: int, params: dict, threads: int, data: Path, objects: Path, inputs: dict) -> Run:
    """The teacher of ``params`` at ``seed`` (`pvkd teacher-train`), its folder named after ``name``."""
    return Run("teacher-train", f"{name}-seed{seed}", _seeded(params, "teacher", seed, threads), inputs,
               ("--data", str(data), "--objects", str(objects)))


# ---------------------------------------------------------------- summaries of seed studies


def scores_by(runs: Iterable[dict], group: Callable[[dict], object]) -> dict:
    """Val mIoU per group (a setting) and seed, from run records; two runs of one setting at one seed are refused
    (a result file holds one run per cell)."""
    out: dict = {}
    for r in runs:
        cell = out.setdefault(group(r), {})
        seed = seed_key(r["seed"])
        if seed in cell:
            raise ValueError(f"two runs of {group(r)} at seed {seed}: a result holds one run per setting and seed")
        cell[seed] = r["miou"]
    return out


def seeds_of(runs: Iterable[dict]) -> list[int]:
    """The seeds the runs were made with (the study's metadata, from the runs themselves)."""
    return sorted({int(r["seed"]) for r in runs})


def describe(name: str, cell: dict) -> str:
    """One summary cell in points: mean ± std over its seeds and, against its baseline, the paired mean
    difference, its 95 % interval, p, the pairs and the verdict."""
    std = f" ± {100 * cell['std']:.2f}" if cell["std"] is not None else ""
    line = f"{name}: {100 * cell['mean']:.2f}{std} over {cell['n']} seed{'s' if cell['n'] != 1 else ''}"
    vs = cell.get("vs_baseline")
    if vs is None:
        return line
    if vs["interval"] is None:
        return f"{line}; vs {vs['baseline']}: {vs['verdict']} ({vs['n']} paired)"
    low, high = vs["interval"]
    return (f"{line}; vs {vs['baseline']}: {100 * vs['mean']:+.2f} [{100 * low:+.2f}, {100 * high:+.2f}], "
            f"p {vs['p']:.3f}, {vs['n']} pairs: {vs['verdict']}")
