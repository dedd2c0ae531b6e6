"""The report: what each student kept of the teacher's accuracy and what it saved, in one page.

:func:`build_report` reads the evaluate stage's outputs (``metrics/evaluate.json``, the ``eval``
folder), the training curves dvclive wrote (``dvclive/<model>/plots/metrics``), the frequency
stats of the processed data and params.yaml, and writes two files to the output folder:

- ``report.html``: self-contained (figures embedded as base64 PNG, inline CSS, no script), to
  open in a browser or attach anywhere;
- ``report.md``: its Markdown twin, for the terminal and git diffs, with its figures as PNG files
  beside it (``fig-*.png``), referenced relatively.

Sections: the headline table (scores, costs, ratios to the teacher, the share of the
teacher-student gap each distilled student closes), per-class IoU, mIoU by distance, accuracy
against cost, training curves, a bird's-eye picture of one val scan, the class frequencies of
the data, optionally the experiment table of ``dvc exp show`` (:func:`parse_exp_show`), and the
params. A model missing from some input is left out of that part with a note; only a missing
metrics file is an error. Nothing in the output depends on the time it was made.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from pvkd.errors import DataError, PvkdError  # noqa: E402

DPI = 150  # figures are drawn at 1.5x their CSS size, sharp on high-density screens
CSS_PX_PER_INCH = 100
METRICS_FILE = "metrics/evaluate.json"  # the key of the evaluate metrics in `dvc exp show --json`
PREFERRED_STUDENT = "pvkd"  # the student pictured beside the teacher, when there is one of that name
BASELINE_MARK = "no distillation"  # description of the student every distilled one is measured against
TEACHER_COLOR = "#333333"
# right / wrong categories of the disagreement map: (name, RGB)
AGREEMENT = (
    ("not labelled", (232, 232, 232)),
    ("both right", (175, 175, 175)),
    ("only the teacher right", (214, 39, 40)),
    ("only the student right", (31, 119, 180)),
    ("both wrong", (20, 20, 20)),
)
MISSING = "–"
WORKSPACE_COLUMNS = 6  # the most uncommitted params changes of the workspace the experiment table gets columns for


# ---------------------------------------------------------------- document model


@dataclass
class Figure:
    """One PNG: written as ``<name>.png`` beside report.md, embedded in report.html."""

    name: str
    png: bytes
    alt: str
    width_px: int  # CSS width in the HTML
    caption: str = ""


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    numeric: list[bool]  # right-aligned columns
    bold: set[tuple[int, int]] = field(default_factory=set)  # (row, column) cells to emphasise


@dataclass
class Details:
    """A collapsible code block."""

    summary: str
    text: str
    lang: str = ""


@dataclass
class Columns:
    """Blocks side by side in the HTML (wrapping on narrow screens), one after the other in Markdown."""

    blocks: list


@dataclass
class Section:
    title: str
    anchor: str
    blocks: list = field(default_factory=list)  # str (a paragraph), Table, Figure, Columns, Details
    notes: list[str] = field(default_factory=list)  # what was left out, and why


# ---------------------------------------------------------------- inputs


def load_metrics(path: str | Path) -> dict[str, dict]:
    """The evaluate stage's metrics: ``{model: {...}}``; a missing or malformed file names the stage to run."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: not found; run the evaluate stage first (`dvc repro evaluate`)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err}); run `dvc repro evaluate` again") from None
    if not isinstance(data, dict) or not data or not all(isinstance(v, dict) for v in data.values()):
        raise DataError(f"{path}: expected an object of models ({{name: {{role, miou, ...}}}}); "
                        "run `dvc repro evaluate` again")
    return data


def _num(value) -> float | None:
    """A finite float, or None for a missing, null or non-numeric value."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def teacher_name(metrics: dict[str, dict]) -> str | None:
    """The model of role teacher (else the one named teacher), or None."""
    for name, m in metrics.items():
        if m.get("role") == "teacher":
            return name
    return "teacher" if "teacher" in metrics else None


def baseline_name(metrics: dict[str, dict]) -> str | None:
    """The student trained without distillation (description containing "no distillation"), or None.

    With several such students the one named ``baseline`` wins, else the first.
    """
    found = [n for n, m in metrics.items() if m.get("role") == "student"
             and BASELINE_MARK in str(m.get("description", "")).lower()]
    if not found:
        return None
    return "baseline" if "baseline" in found else found[0]


def model_order(metrics: dict[str, dict]) -> list[str]:
    """The teacher first, then the other models in the metrics file's order."""
    teacher = teacher_name(metrics)
    return ([teacher] if teacher else []) + [n for n in metrics if n != teacher]


def pictured_student(metrics: dict[str, dict], available: Sequence[str]) -> str | None:
    """The student the scan picture shows: ``pvkd`` if it has predictions, else the first student that has."""
    students = [n for n in model_order(metrics) if metrics[n].get("role") != "teacher" and n in available]
    if PREFERRED_STUDENT in students:
        return PREFERRED_STUDENT
    return students[0] if students else None


def _ratio(value: float | None, reference: float | None) -> float | None:
    if value is None or reference is None or reference == 0:
        return None
    return value / reference


def headline(metrics: dict[str, dict]) -> list[dict]:
    """One row per model (teacher first): its scores and costs, and how they compare with the teacher's.

    ``miou_diff_pts`` is (mIoU - teacher's) in points (x 100); ``*_ratio`` are model / teacher;
    ``gap_closed`` (distilled students only, when there is a no-distillation baseline below the
    teacher) is (student - baseline) / (teacher - baseline) in mIoU.
    """
    teacher, baseline = teacher_name(metrics), baseline_name(metrics)
    t = metrics.get(teacher, {}) if teacher else {}
    t_miou = _num(t.get("miou"))
    b_miou = _num(metrics[baseline].get("miou")) if baseline else None
    gap = t_miou - b_miou if t_miou is not None and b_miou is not None else None
    rows = []
    for name in model_order(metrics):
        m = metrics[name]
        miou = _num(m.get("miou"))
        row = {
            "model": name,
            "role": m.get("role", ""),
            "description": str(m.get("description", "")),
            "miou": miou,
            "params_m": _num(m.get("params_m")),
            "macs_g": _num(m.get("macs_g")),
            "latency_ms": _num(m.get("latency_ms")),
            "miou_diff_pts": None,
            "params_ratio": None,
            "macs_ratio": None,
            "latency_ratio": None,
            "gap_closed": None,
        }
        if name != teacher and teacher:
            if miou is not None and t_miou is not None:
                row["miou_diff_pts"] = (miou - t_miou) * 100
            for key in ("params_m", "macs_g", "latency_ms"):
                row[key.split("_")[0] + "_ratio"] = _ratio(row[key], _num(t.get(key)))
            if gap is not None and gap > 0 and name != baseline and m.get("role") == "student" and miou is not None:
                row["gap_closed"] = (miou - b_miou) / gap
        rows.append(row)
    return rows


def _read_tsv_series(path: Path) -> pd.DataFrame | None:
    """A dvclive series (step, value) or None when the file is missing, empty or has no step column."""
    if not path.is_file():
        return None
    try:
        frame = pd.read_csv(path, sep="\t")
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError):
        return None
    if "step" not in frame.columns or len(frame) == 0:
        return None
    value = path.stem if path.stem in frame.columns else next(
        (c for c in frame.columns if c not in ("step", "timestamp")), None)
    if value is None:
        return None
    out = pd.DataFrame({"step": pd.to_numeric(frame["step"], errors="coerce"),
                        "value": pd.to_numeric(frame[value], errors="coerce")}).dropna()
    return out if len(out) else None


def _read_csv(path: Path, columns: set[str]) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    try:
        frame = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError):
        return None
    return frame if columns <= set(frame.columns) else None


def _per_model(metrics: dict[str, dict], eval_dir: Path, key: str, csv_name: str, column: str, what: str):
    """``{model: {label: value}}`` from each model's ``key`` in the metrics, else from the long table
    ``eval_dir/csv_name`` (columns model, ``column``, value); and notes on the models found in neither."""
    table, value = None, "iou" if column == "class" else "miou"
    out, notes = {}, []
    for name in model_order(metrics):
        values = metrics[name].get(key)
        if not isinstance(values, dict) or not values:
            if table is None:
                table = _read_csv(eval_dir / csv_name, {"model", column, value})
                table = table if table is not None else pd.DataFrame(columns=["model", column, value])
            rows = table[table["model"] == name]
            values = dict(zip(rows[column].astype(str), rows[value])) if len(rows) else None
        if not values:
            notes.append(f"{name}: no {what} in the metrics or {eval_dir / csv_name}")
            continue
        out[name] = {str(label): _num(v) for label, v in values.items()}
    return out, notes


def per_class_iou(metrics: dict[str, dict], eval_dir: Path) -> tuple[dict[str, dict[str, float]], list[str]]:
    """``{model: {class: IoU}}`` from the metrics (``iou``), else from eval/per_class_iou.csv; and notes."""
    return _per_model(metrics, eval_dir, "iou", "per_class_iou.csv", "class", "per-class IoU")


def distance_miou(metrics: dict[str, dict], eval_dir: Path) -> tuple[dict[str, dict[str, float | None]], list[str]]:
    """``{model: {band: mIoU or None}}`` from the metrics (``miou_by_distance``), else eval/distance_miou.csv."""
    return _per_model(metrics, eval_dir, "miou_by_distance", "distance_miou.csv", "band", "mIoU by distance")


def class_shares(stats: pd.DataFrame) -> pd.DataFrame:
    """Share of the points of each split per class: rows class (id order), columns splits (stats' order)."""
    need = {"split", "class_id", "class_name", "points"}
    if not need <= set(stats.columns):
        raise DataError(f"stats table lacks columns {sorted(need - set(stats.columns))}")
    counts = stats.groupby(["class_id", "class_name", "split"], sort=False)["points"].sum().unstack("split")
    counts = counts.sort_index(level="class_id")[list(dict.fromkeys(stats["split"]))].fillna(0)
    totals = counts.sum(axis=0).replace(0, np.nan)
    shares = (counts / totals).fillna(0.0)
    shares.index = shares.index.get_level_values("class_name")
    return shares


# ---------------------------------------------------------------- dvc exp show


@dataclass
class ExpRow:
    """One line of the experiment table."""

    name: str
    rev: str
    kind: str  # workspace | commit | experiment
    params: dict[str, object]  # flattened params: "distill.point_weight" -> 0.5
    miou: dict[str, float | None]  # model -> mIoU
    reference: dict[str, object] | None = None  # the params it is compared with (its commit's)
    error: str | None = None

    @property
    def changed(self) -> list[str]:
        if self.reference is None:
            return []
        keys = list(self.params) + [k for k in self.reference if k not in self.params]
        return [k for k in keys if self.params.get(k) != self.reference.get(k)]


def _flatten(data, prefix: str = "") -> dict[str, object]:
    out = {}
    if isinstance(data, dict):
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}{key}."))
    else:
        out[prefix[:-1]] = data
    return out


def _params_of(rev_data: dict) -> dict[str, object]:
    params = {}
    files = rev_data.get("params") if isinstance(rev_data, dict) else None
    for file, content in (files or {}).items():
        data = content.get("data") if isinstance(content, dict) else None
        if isinstance(data, dict):
            prefix = "" if file == "params.yaml" else f"{file}:"
            params.update(_flatten(data, prefix))
    return params


def _miou_of(rev_data: dict, metrics_file: str) -> tuple[dict[str, float | None], str | None]:
    files = rev_data.get("metrics") if isinstance(rev_data, dict) else None
    content = (files or {}).get(metrics_file)
    if not isinstance(content, dict):
        return {}, None
    if content.get("error"):
        err = content["error"]
        return {}, f"{metrics_file}: {err.get('msg') or err.get('type') if isinstance(err, dict) else err}"
    data = content.get("data") or {}
    return {name: _num(m.get("miou")) for name, m in data.items() if isinstance(m, dict)}, None


def _error_text(entry: dict) -> str | None:
    err = entry.get("error")
    if not err:
        return None
    return str(err.get("msg") or err.get("type")) if isinstance(err, dict) else str(err)


def _dvc2_entries(data: dict) -> list[dict]:
    """DVC 2's ``{rev: {"baseline": {...}, exp_rev: {...}}}`` as DVC 3's list of commit entries."""
    entries = []
    for rev, group in data.items():
        if not isinstance(group, dict):
            continue
        base = group.get("baseline") or {}
        entry = {"rev": rev, "name": (base.get("data") or {}).get("name"), "data": base.get("data") or {},
                 "error": base.get("error"), "experiments": []}
        for exp_rev, exp in group.items():
            if exp_rev != "baseline" and isinstance(exp, dict):
                entry["experiments"].append({"revs": [{"rev": exp_rev, "name": (exp.get("data") or {}).get("name"),
                                                       "data": exp.get("data") or {}, "error": exp.get("error")}]})
        entries.append(entry)
    return entries


def parse_exp_show(data, metrics_file: str = METRICS_FILE) -> list[ExpRow]:
    """The rows of the experiment table from the JSON of ``dvc exp show --json``.

    DVC 3 prints a list of commit entries (the first being the workspace), each with
    ``experiments`` (older: ``exps``), a list of groups whose ``revs[0]`` is the experiment;
    every entry and rev has ``data: {params: {file: {data}}, metrics: {file: {data | error}}}``.
    DVC 2's dict keyed by revision is accepted too. Rows: each commit, then its experiments
    (compared with that commit's params); the workspace first when it differs from every other
    row (uncommitted params or results, e.g. after a failed run). Unreadable parts are skipped.
    """
    entries = data if isinstance(data, list) else _dvc2_entries(data) if isinstance(data, dict) else []
    rows: list[ExpRow] = []
    workspace: ExpRow | None = None
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        rev = str(entry.get("rev") or "")
        d = entry.get("data") if isinstance(entry.get("data"), dict) else {}
        miou, metrics_error = _miou_of(d, metrics_file)
        row = ExpRow(name=str(entry.get("name") or rev[:7] or "?"), rev=rev, kind="commit",
                     params=_params_of(d), miou=miou, error=_error_text(entry) or metrics_error)
        if rev == "workspace":
            row.name, row.kind = "workspace", "workspace"
            workspace = row
            continue
        rows.append(row)
        groups = entry.get("experiments") if entry.get("experiments") is not None else entry.get("exps")
        for group in groups or []:
            revs = group.get("revs") if isinstance(group, dict) else None
            if not revs or not isinstance(revs[0], dict):
                continue
            exp = revs[0]
            ed = exp.get("data") if isinstance(exp.get("data"), dict) else {}
            e_miou, e_error = _miou_of(ed, metrics_file)
            e_rev = str(exp.get("rev") or "")
            rows.append(ExpRow(name=str(exp.get("name") or group.get("name") or e_rev[:7] or "?"), rev=e_rev,
                               kind="experiment", params=_params_of(ed), miou=e_miou, reference=row.params,
                               error=_error_text(exp) or e_error))
    if workspace is not None:
        if rows:
            workspace.reference = next(r for r in rows if r.kind == "commit").params
        if not any(r.params == workspace.params and r.miou == workspace.miou for r in rows):
            rows.insert(0, workspace)
    return rows


def run_exp_show(cwd: str | Path = ".") -> object:
    """The parsed JSON of ``dvc exp show --json`` run in ``cwd``."""
    try:
        done = subprocess.run(["dvc", "exp", "show", "--json"], cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise PvkdError("--experiments: `dvc` not found on PATH (install the project's environment)") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise PvkdError(f"--experiments: `dvc exp show --json` failed in {Path(cwd).resolve()}: {last}")
    try:
        return json.loads(done.stdout)
    except json.JSONDecodeError as err:
        raise PvkdError(f"--experiments: `dvc exp show --json` printed no JSON ({err})") from None


def _fmt_value(value) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_fmt_value(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:g}"
    if value is None:
        return "null"
    return str(value)


def ablation_table(rows: list[ExpRow], notes: list[str] | None = None) -> Table:
    """Experiment x (params that differ from the experiment's commit, mIoU of each model in %).

    Every row shows its value of each such param; the values a row changed are bold. A workspace
    with more than WORKSPACE_COLUMNS uncommitted changes (an edited params.yaml, not an
    experiment) adds no columns; ``notes`` gets a line that says so.
    """
    keys: list[str] = []
    for row in rows:
        changed = row.changed
        if row.kind == "workspace" and len(changed) > WORKSPACE_COLUMNS:
            if notes is not None:
                notes.append(f"workspace: {len(changed)} params differ from the last commit ({', '.join(changed[:4])}"
                             f", ...): not shown as columns")
            continue
        for key in changed:
            if key not in keys:
                keys.append(key)
    order = {k: i for i, k in enumerate(next((r.params for r in rows if r.kind == "commit"), {}))}
    keys.sort(key=lambda k: order.get(k, len(order)))  # as in params.yaml
    models: list[str] = []
    for row in rows:
        models += [m for m in row.miou if m not in models]
    header = ["experiment", "kind", *keys, *(f"{m} mIoU (%)" for m in models)]
    table = Table(header=header, rows=[], numeric=[False, False, *(False for _ in keys), *(True for _ in models)])
    for i, row in enumerate(rows):
        cells = [row.name + (" (error)" if row.error else ""), row.kind]
        cells += [_fmt_value(row.params[k]) if k in row.params else MISSING for k in keys]
        cells += [_pct(row.miou.get(m)) for m in models]
        table.rows.append(cells)
        table.bold |= {(i, 2 + keys.index(k)) for k in row.changed if k in keys}
    return table


# ---------------------------------------------------------------- figures


def model_colors(names: Sequence[str], teacher: str | None) -> dict[str, str]:
    """One colour per model, the same in every figure: the teacher dark grey, students tab10."""
    palette = [c for i, c in enumerate(plt.get_cmap("tab10").colors) if i != 7]  # 7 is grey
    colors, k = {}, 0
    for name in names:
        if name == teacher:
            colors[name] = TEACHER_COLOR
        else:
            colors[name] = matplotlib.colors.to_hex(palette[k % len(palette)])
            k += 1
    return colors


def _png(fig, name: str, alt: str, caption: str = "") -> Figure:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    png = buf.getvalue()
    width = int.from_bytes(png[16:20], "big")  # IHDR width
    return Figure(name=name, png=png, alt=alt, width_px=round(width * CSS_PX_PER_INCH / DPI), caption=caption)


def _style(ax) -> None:
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(True, color="#e6e6e6", linewidth=0.8)
    ax.set_axisbelow(True)


def figure_per_class(ious: dict[str, dict[str, float]], colors: dict[str, str]) -> Figure:
    """Grouped horizontal bars: one group per class, one bar per model; more than 10 classes in two columns."""
    models = list(ious)
    classes = list(dict.fromkeys(c for m in models for c in ious[m]))
    columns = 2 if len(classes) > 10 else 1
    per_column = math.ceil(len(classes) / columns)
    bar = 0.8 / len(models)
    height = 0.9 + per_column * (0.11 * len(models) + 0.17)
    fig, axes = plt.subplots(1, columns, figsize=(5.5 * columns, height), dpi=DPI, squeeze=False)
    for col, ax in enumerate(axes[0]):
        part = classes[col * per_column:(col + 1) * per_column]
        y = np.arange(len(part))
        for k, model in enumerate(models):
            values = [100 * ious[model][c] if ious[model].get(c) is not None else np.nan for c in part]
            ax.barh(y - 0.4 + bar * (k + 0.5), values, height=bar, color=colors[model], label=model)
        ax.set_yticks(y, part)
        ax.set_ylim(per_column - 0.5, -0.5)
        ax.set_xlim(0, 100)
        ax.set_xlabel("IoU (%)")
        _style(ax)
        ax.grid(False, axis="y")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=min(len(models), 6),
               frameon=False, fontsize=9)
    fig.tight_layout()
    return _png(fig, "fig-per-class-iou", "IoU per class and model, grouped horizontal bars")


def figure_distance(bands: dict[str, dict[str, float | None]], colors: dict[str, str], teacher: str | None) -> Figure:
    """mIoU against distance band, one line per model."""
    order = list(dict.fromkeys(b for m in bands.values() for b in m))
    fig, ax = plt.subplots(figsize=(8, 4.2), dpi=DPI)
    x = np.arange(len(order))
    for model, values in bands.items():
        y = [100 * values[b] if values.get(b) is not None else np.nan for b in order]
        ax.plot(x, y, marker="o", color=colors[model], label=model,
                linewidth=2.4 if model == teacher else 1.6, markersize=5)
    ax.set_xticks(x, order)
    ax.set_xlabel("distance from the sensor (m)")
    ax.set_ylabel("mIoU (%)")
    _style(ax)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=9)
    return _png(fig, "fig-distance-miou", "mIoU by distance band, one line per model")


def _place_labels(ax, xs, ys, labels, colors, fontsize: float = 9) -> None:
    """Name each point to its right; labels that would overlap are moved up, with a leader line."""
    ax.figure.canvas.draw()
    pts = ax.transData.transform(np.c_[xs, ys])
    px_per_pt = ax.figure.dpi / 72
    line = fontsize * 1.35 * px_per_pt
    placed: list[tuple[float, float, float]] = []  # x, label y, label width (px)
    for i in np.argsort(pts[:, 1], kind="stable"):
        x, y = pts[i]
        width = (len(labels[i]) * 0.62 * fontsize + 8) * px_per_pt
        ly = y
        # each pass lifts the label above a clash; len(placed) + 1 passes settle it (and bound the loop
        # where float rounding would keep a clash forever)
        for _ in range(len(placed) + 1):
            clashes = [py for px, py, pw in placed if abs(px - x) < max(width, pw) and abs(py - ly) < line]
            if not clashes:
                break
            ly = max(clashes) + line
        placed.append((x, ly, width))
        offset = (6, (ly - y) / px_per_pt)
        arrow = dict(arrowstyle="-", color="#999999", linewidth=0.6) if ly - y > line * 0.5 else None
        ax.annotate(labels[i], (xs[i], ys[i]), xytext=offset, textcoords="offset points", fontsize=fontsize,
                    va="center", ha="left", color=colors[i], arrowprops=arrow)


def figure_cost(rows: list[dict], colors: dict[str, str], teacher: str | None) -> tuple[Figure | None, list[str]]:
    """mIoU against MACs and against latency, each model a labelled point."""
    notes = []
    panels = (("macs_g", "MACs per scan (G)"), ("latency_ms", "latency per scan (ms)"))
    usable = {key: [r for r in rows if r["miou"] is not None and r[key] is not None] for key, _ in panels}
    for key, label in panels:
        for r in rows:
            if r not in usable[key]:
                notes.append(f"{r['model']}: no mIoU or {key} in the metrics; left out of the {label.split()[0]} plot")
    if not any(usable.values()):
        return None, notes
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), dpi=DPI)
    ys_all = [100 * r["miou"] for r in rows if r["miou"] is not None]
    lo, hi = min(ys_all), max(ys_all)
    pad = max(2.0, 0.15 * (hi - lo))
    for ax, (key, label) in zip(axes, panels):
        pts = usable[key]
        _style(ax)
        ax.set_xlabel(label)
        ax.set_ylabel("mIoU (%)")
        ax.set_ylim(lo - pad, hi + 2 * pad)
        if not pts:
            ax.text(0.5, 0.5, "not measured", transform=ax.transAxes, ha="center", color="#777777")
            continue
        xs = np.array([r[key] for r in pts])
        ys = np.array([100 * r["miou"] for r in pts])
        for r, x, y in zip(pts, xs, ys):
            ax.scatter([x], [y], s=70 if r["model"] == teacher else 45, color=colors[r["model"]], zorder=3,
                       marker="D" if r["model"] == teacher else "o")
        span = xs.max() - xs.min() if len(xs) > 1 else max(xs.max(), 1e-9)
        ax.set_xlim(max(0.0, xs.min() - 0.15 * span) if xs.min() >= 0 else xs.min() - 0.15 * span,
                    xs.max() + 0.45 * span)
        _place_labels(ax, xs, ys, [r["model"] for r in pts], [colors[r["model"]] for r in pts])
    fig.tight_layout()
    return _png(fig, "fig-accuracy-cost", "mIoU against MACs and latency, one labelled point per model"), notes


def figure_curves(series: dict[str, dict[str, pd.DataFrame]], colors: dict[str, str], teacher: str | None) -> Figure:
    """Training loss and validation mIoU over steps, one line per model."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=DPI)
    handles = {}
    for ax, (key, label) in zip(axes, (("train/loss", "training loss"), ("val/miou", "validation mIoU (%)"))):
        _style(ax)
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        for model, runs in series.items():
            frame = runs.get(key)
            if frame is None:
                continue
            y = frame["value"] * (100 if key == "val/miou" else 1)
            (handles[model],) = ax.plot(frame["step"], y, color=colors.get(model, "#777777"), label=model,
                                        linewidth=2.0 if model == teacher else 1.3,
                                        marker="o" if len(frame) <= 12 else None, markersize=4)
    order = [m for m in series if m in handles]
    fig.tight_layout()
    fig.legend([handles[m] for m in order], order, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False,
               fontsize=9)
    return _png(fig, "fig-training-curves", "training loss and validation mIoU over steps, one line per model")


def figure_shares(shares: pd.DataFrame) -> Figure:
    """Class shares of the points per split, horizontal bars on a log scale."""
    splits = list(shares.columns)
    classes = list(shares.index)
    bar = 0.8 / max(1, len(splits))
    fig, ax = plt.subplots(figsize=(5.6, 0.9 + len(classes) * (0.085 * len(splits) + 0.1)), dpi=DPI)
    y = np.arange(len(classes))
    split_colors = plt.get_cmap("Set2").colors
    for k, split in enumerate(splits):
        values = 100 * shares[split].to_numpy(dtype=float)
        ax.barh(y - 0.4 + bar * (k + 0.5), np.where(values > 0, values, np.nan), height=bar,
                color=split_colors[k % len(split_colors)], label=split)
    ax.set_xscale("log")
    ax.set_yticks(y, classes, fontsize=9)
    ax.set_ylim(len(classes) - 0.5, -0.5)
    ax.set_xlabel("share of the split's points (%, log scale)")
    _style(ax)
    ax.grid(False, axis="y")
    ax.legend(loc="lower left", bbox_to_anchor=(0, 1.0), ncol=len(splits), frameon=False, fontsize=9)
    return _png(fig, "fig-class-shares", "share of the points per class and split")


def _bev_panel(ax, xy: np.ndarray, ids: np.ndarray, palette: np.ndarray, title: str, extent: float, size: float):
    """One top-down panel drawn as pvkd.plots.render_bev draws its picture (colours, sensor marker, extent)."""
    ax.scatter(xy[:, 0], xy[:, 1], c=palette[ids], s=size, marker=".", linewidths=0, rasterized=True)
    ax.plot(0, 0, marker="^", color="black", markersize=6)
    ax.set_xlim(-extent, extent)
    ax.set_ylim(-extent, extent)
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=11)
    ax.tick_params(labelsize=8)


def figure_scan(xy: np.ndarray, label: np.ndarray, teacher: tuple[str, np.ndarray], student: tuple[str, np.ndarray],
                names: Sequence[str], colors: Sequence[tuple[int, int, int]], extent: float = 50.0) -> Figure:
    """Ground truth, teacher, student and who is right of one scan from above (2 x 2), with shared legends.

    ``teacher`` and ``student``: (panel title, predicted ids per point).
    """
    (t_title, t_pred), (s_title, s_pred) = teacher, student
    inside = (np.abs(xy) <= extent).all(axis=1)
    xy, label, t_pred, s_pred = xy[inside], label[inside], t_pred[inside], s_pred[inside]
    palette = np.asarray(colors, dtype=np.float64) / 255.0
    size = 3.0 if len(label) < 40_000 else 1.2
    fig, axes = plt.subplots(2, 2, figsize=(11, 11.6), dpi=DPI)
    for ax, ids, title in zip(axes.flat, (label, t_pred, s_pred), ("ground truth", t_title, s_title)):
        _bev_panel(ax, xy, ids, palette, title, extent, size)
    agree = agreement_ids(label, t_pred, s_pred)
    order = np.argsort(agree, kind="stable")  # the errors drawn last, over the agreeing points
    agree_palette = np.asarray([c for _, c in AGREEMENT], dtype=np.float64) / 255.0
    _bev_panel(axes[1, 1], xy[order], agree[order], agree_palette, "who is right", extent, size * 1.3)
    for ax in axes[1]:
        ax.set_xlabel("x (m)", fontsize=9)
    for ax in axes[:, 0]:
        ax.set_ylabel("y (m)", fontsize=9)
    present = np.unique(np.concatenate([label, t_pred, s_pred]))
    class_handles = [plt.Line2D([], [], marker="o", linestyle="", color=palette[c], label=names[c]) for c in present]
    agree_handles = [plt.Line2D([], [], marker="o", linestyle="", color=agree_palette[i], label=name)
                     for i, (name, _) in enumerate(AGREEMENT) if (agree == i).any()]
    axes[1, 1].legend(handles=agree_handles, loc="upper right", fontsize=8, framealpha=0.92)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.legend(handles=class_handles, loc="upper center", bbox_to_anchor=(0.5, 0.05), ncol=min(len(present), 7),
               frameon=False, fontsize=9)
    return _png(fig, "fig-scan", "one val scan from above: ground truth, teacher, student, and who is right")


def agreement_ids(label: np.ndarray, teacher: np.ndarray, student: np.ndarray) -> np.ndarray:
    """Per point, the index into AGREEMENT: not labelled (label 0), both right, only one right, both wrong."""
    t_ok, s_ok = teacher == label, student == label
    ids = np.where(t_ok & s_ok, 1, np.where(t_ok, 2, np.where(s_ok, 3, 4)))
    return np.where(label == 0, 0, ids).astype(np.int64)


# ---------------------------------------------------------------- sections


def _pct(value: float | None, digits: int = 1) -> str:
    return MISSING if value is None else f"{100 * value:.{digits}f}"


def _fixed(value: float | None, digits: int) -> str:
    return MISSING if value is None else f"{value:.{digits}f}"


def _with_ratio(text: str, ratio: float | None) -> str:
    return text if ratio is None else f"{text} ({ratio:.2f}×)"


def _signed(value: float | None) -> str:
    return MISSING if value is None else f"{value:+.1f}"


def section_headline(metrics: dict[str, dict]) -> tuple[Section, list[dict]]:
    rows = headline(metrics)
    teacher, baseline = teacher_name(metrics), baseline_name(metrics)
    show_gap = any(r["gap_closed"] is not None for r in rows)
    header = ["model", "description", "mIoU (%)", "Δ mIoU (pts)", *(["gap closed"] if show_gap else []),
              "params (M)", "MACs (G)", "latency (ms)"]
    table = Table(header=header, rows=[], numeric=[False, False] + [True] * (len(header) - 2))
    for r in rows:
        cells = [r["model"], r["description"], _pct(r["miou"]), _signed(r["miou_diff_pts"])]
        if show_gap:
            cells.append("baseline" if r["model"] == baseline else _pct(r["gap_closed"], 0) + " %"
                         if r["gap_closed"] is not None else MISSING)
        cells += [_with_ratio(_fixed(r["params_m"], 2), r["params_ratio"]),
                  _with_ratio(_fixed(r["macs_g"], 2), r["macs_ratio"]),
                  _with_ratio(_fixed(r["latency_ms"], 1), r["latency_ratio"])]
        table.rows.append(cells)
    section = Section("Headline", "headline")
    section.blocks.append(table)
    explain = ("Δ mIoU: the model's mIoU minus the teacher's, in points; (n×): the model's cost divided by the "
               "teacher's. MACs and latency: one forward pass over a val scan.")
    if show_gap:
        explain += (f" Gap closed: (student − {baseline}) / (teacher − {baseline}) in mIoU, the share of the "
                    f"teacher's lead over the student trained without distillation that distillation recovered.")
    elif baseline is None:
        section.notes.append("no student described as 'no distillation': the gap closed is not shown")
    elif teacher is not None:
        section.notes.append(f"the baseline {baseline} is not below the teacher in mIoU: the gap closed is not shown")
    section.blocks.append(explain)
    if teacher is None:
        section.notes.append("no model of role teacher in the metrics: no ratios to the teacher")
    return section, rows


def section_per_class(metrics, eval_dir: Path, colors) -> Section:
    section = Section("Per-class IoU", "per-class")
    ious, section.notes = per_class_iou(metrics, eval_dir)
    if ious:
        section.blocks.append(figure_per_class(ious, colors))
    return section


def section_distance(metrics, eval_dir: Path, colors, teacher) -> Section:
    section = Section("mIoU by distance", "distance")
    bands, section.notes = distance_miou(metrics, eval_dir)
    if bands:
        section.blocks.append("mIoU of the val points in each band of 3D range from the sensor, each band scored by "
                              "the dataset's rules as the official by-distance scorer does: under SemanticKITTI's, a "
                              "class absent from a band scores 0 there, which lowers the far bands.")
        section.blocks.append(figure_distance(bands, colors, teacher))
    return section


def section_cost(rows, colors, teacher) -> Section:
    section = Section("Accuracy against cost", "cost")
    fig, section.notes = figure_cost(rows, colors, teacher)
    if fig is not None:
        section.blocks.append("Up and to the left is better: the students should keep most of the teacher's mIoU "
                              "at a fraction of its compute.")
        section.blocks.append(fig)
    return section


def section_curves(metrics, live_dir: Path, colors, teacher) -> Section:
    section = Section("Training curves", "curves")
    names = model_order(metrics)
    if live_dir.is_dir():
        names += sorted(p.name for p in live_dir.iterdir() if p.is_dir() and p.name not in names
                        and (p / "plots" / "metrics").is_dir())
    series: dict[str, dict[str, pd.DataFrame]] = {}
    for name in names:
        folder = live_dir / name / "plots" / "metrics"
        if not folder.is_dir():
            section.notes.append(f"{name}: no curves ({folder} not found)")
            continue
        runs = {}
        for key in ("train/loss", "val/miou"):
            frame = _read_tsv_series(folder / f"{key}.tsv")
            if frame is None:
                section.notes.append(f"{name}: no {key} curve ({folder / key}.tsv missing or empty)")
            else:
                runs[key] = frame
        if runs:
            series[name] = runs
    if series:
        section.blocks.append("The students' training loss includes their distillation terms, so its level is not "
                              "comparable with the teacher's; validation mIoU is.")
        section.blocks.append(figure_curves(series, colors, teacher))
    return section


def section_scan(metrics, eval_dir: Path, data_dir: Path) -> Section:
    section = Section("One val scan from above", "scan")
    path = eval_dir / "sample_scan.parquet"
    if not path.is_file():
        section.notes.append(f"{path} not found: no scan pictured (run `dvc repro evaluate`)")
        return section
    scan = pd.read_parquet(path)
    missing = {"x", "y", "label"} - set(scan.columns)
    if missing:
        section.notes.append(f"{path}: no column(s) {sorted(missing)}: no scan pictured")
        return section
    preds = [c.removeprefix("pred_") for c in scan.columns if c.startswith("pred_")]
    teacher = teacher_name(metrics)
    student = pictured_student(metrics, preds)
    for name in model_order(metrics):
        if name not in preds:
            section.notes.append(f"{name}: no predictions in {path}")
    if teacher not in preds or student is None:
        section.notes.append("the picture needs the teacher's and a student's predictions: not drawn")
        return section
    names = _class_names(data_dir)
    label = scan["label"].to_numpy().astype(np.int64)
    t_pred = scan[f"pred_{teacher}"].to_numpy().astype(np.int64)
    s_pred = scan[f"pred_{student}"].to_numpy().astype(np.int64)
    top = int(max(label.max(initial=0), t_pred.max(initial=0), s_pred.max(initial=0)))
    names = list(names) + [f"class {i}" for i in range(len(names), top + 1)]
    from pvkd.plots import SEMANTICKITTI_COLORS

    palette = list(SEMANTICKITTI_COLORS)
    cmap = plt.get_cmap("tab20")
    palette += [tuple(int(255 * v) for v in cmap(i % 20)[:3]) for i in range(len(palette), top + 1)]
    xy = scan[["x", "y"]].to_numpy(dtype=np.float32)
    finite = np.isfinite(xy).all(axis=1)
    xy, label, t_pred, s_pred = xy[finite], label[finite], t_pred[finite], s_pred[finite]
    fig = figure_scan(xy, label, (f"teacher ({teacher})", t_pred), (f"student ({student})", s_pred), names, palette)
    section.blocks.append(f"One val scan ({len(label):,} points, `evaluate.sample_scan`) seen from above, 50 m "
                          f"around the sensor (the black triangle), coloured by class; the last panel colours each "
                          f"labelled point by whether the teacher and the student {student} got it right.")
    section.blocks.append(fig)
    agree = agreement_ids(label, t_pred, s_pred)
    labelled = agree > 0
    counts = np.bincount(agree[labelled], minlength=len(AGREEMENT))[1:]
    total = max(int(labelled.sum()), 1)
    table = Table(header=["labelled points", "count", "share (%)"], rows=[], numeric=[False, True, True])
    for (name, _), count in zip(AGREEMENT[1:], counts):
        table.rows.append([name, f"{int(count):,}", f"{100 * count / total:.1f}"])
    section.blocks.append(table)
    return section


def _meta(data_dir: Path) -> dict:
    try:
        return json.loads((data_dir / "meta.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _class_names(data_dir: Path) -> list[str]:
    from pvkd.labels import SEMANTICKITTI_CLASSES

    names = _meta(data_dir).get("class_names")
    return list(names) if isinstance(names, list) and names else list(SEMANTICKITTI_CLASSES)


def section_data(data_dir: Path) -> Section:
    section = Section("The data", "data")
    path = data_dir / "stats.parquet"
    if not path.is_file():
        section.notes.append(f"{path} not found: no class frequencies (run `dvc repro preprocess`)")
        return section
    try:
        shares = class_shares(pd.read_parquet(path))
    except DataError as err:
        section.notes.append(f"{path}: {err}")
        return section
    meta = _meta(data_dir)
    splits = meta.get("splits") if isinstance(meta.get("splits"), dict) else {}
    parts = [f"{s}: {v.get('scans', '?'):,} scans, {v.get('points', 0):,} points" for s, v in splits.items()
             if isinstance(v, dict)]
    intro = f"Dataset {meta['dataset']}" if meta.get("dataset") else "The processed data"
    section.blocks.append(intro + ("; " + "; ".join(parts) if parts else "") +
                          ". Share of each split's points per class (the grid's border cells included).")
    reference = None
    if meta.get("dataset", "semantickitti") == "semantickitti" and len(shares) == 20:
        from pvkd.labels import SEMANTICKITTI_POINT_SHARE

        reference = SEMANTICKITTI_POINT_SHARE
    header = ["class", *(f"{s} (%)" for s in shares.columns)]
    if reference:
        header.append("SemanticKITTI train (%)")
    table = Table(header=header, rows=[], numeric=[False] + [True] * (len(header) - 1))
    for i, (name, row) in enumerate(shares.iterrows()):
        cells = [str(name), *(_share(v) for v in row)]
        if reference:
            cells.append(_share(reference[i]))
        table.rows.append(cells)
    section.blocks.append(Columns([table, figure_shares(shares)]))
    return section


def _share(value: float) -> str:
    return "0" if value == 0 else f"{100 * value:.3g}"


def section_params(params_path: Path) -> Section:
    section = Section("Params", "params")
    if not params_path.is_file():
        section.notes.append(f"{params_path} not found")
        return section
    section.blocks.append(f"The {params_path.name} this report was made with.")
    section.blocks.append(Details(params_path.name, params_path.read_text(), "yaml"))
    return section


def section_experiments(exp_show) -> Section:
    section = Section("Experiments", "experiments")
    rows = parse_exp_show(exp_show)
    if not rows:
        section.notes.append("`dvc exp show --json` listed no commit or experiment")
        return section
    section.blocks.append("From `dvc exp show`: each commit, then the experiments run from it (`dvc exp run -S "
                          "...`), with the params that differ from their commit (the changed values in bold) and "
                          "each model's mIoU. The workspace is listed when it differs from every other row.")
    section.blocks.append(ablation_table(rows, section.notes))
    section.notes += [f"{r.name}: {r.error}" for r in rows if r.error]
    return section


# ---------------------------------------------------------------- rendering

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;max-width:1140px;
margin:2em auto;padding:0 1.2em;color:#222;line-height:1.45}
h1{font-size:1.7em;margin-bottom:.2em}
h2{font-size:1.3em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2.2em}
p.intro{color:#444}nav{font-size:.92em}nav a{color:#1f5fa8;text-decoration:none;margin-right:.9em}
.scroll{overflow-x:auto}
table{border-collapse:collapse;margin:1em 0;font-size:.9em}
th,td{padding:.32em .75em;border-bottom:1px solid #e4e4e4;text-align:left;vertical-align:top}
th{background:#f4f5f7;font-weight:600}
.num{text-align:right;font-variant-numeric:tabular-nums}td.num{white-space:nowrap}
figure{margin:1em 0}img{max-width:100%;height:auto}
.columns{display:flex;flex-wrap:wrap;gap:2.5em;align-items:flex-start}
ul.notes{color:#8a5300;font-size:.9em}
pre{background:#f6f8fa;padding:1em;overflow-x:auto;font-size:.82em;line-height:1.35}
details summary{cursor:pointer;color:#1f5fa8}
"""


def _html_table(table: Table) -> str:
    # long dotted param names may break after their dots
    head = "".join(f'<th{" class=num" if n else ""}>{html.escape(h).replace(".", ".<wbr>")}</th>'
                   for h, n in zip(table.header, table.numeric))
    body = []
    for i, row in enumerate(table.rows):
        cells = []
        for j, (cell, num) in enumerate(zip(row, table.numeric)):
            text = html.escape(cell)
            if (i, j) in table.bold:
                text = f"<strong>{text}</strong>"
            cells.append(f'<td class="num">{text}</td>' if num else f"<td>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<div class="scroll"><table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n' + "\n".join(body)
            + "\n</tbody>\n</table></div>")


def _html_img(fig: Figure) -> str:
    data = base64.b64encode(fig.png).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(fig.alt)}" '
            f'width="{fig.width_px}"></figure>')


def _inline_code_html(text: str) -> str:
    parts = re.split(r"`([^`]+)`", text)
    return "".join(f"<code>{html.escape(p)}</code>" if i % 2 else html.escape(p) for i, p in enumerate(parts))


def _html_block(block) -> str:
    if isinstance(block, str):
        return f"<p>{_inline_code_html(block)}</p>"
    if isinstance(block, Table):
        return _html_table(block)
    if isinstance(block, Figure):
        return _html_img(block)
    if isinstance(block, Columns):
        return '<div class="columns">' + "".join(f"<div>{_html_block(b)}</div>" for b in block.blocks) + "</div>"
    if isinstance(block, Details):
        return (f"<details><summary>{html.escape(block.summary)}</summary>"
                f"<pre><code>{html.escape(block.text)}</code></pre></details>")
    raise TypeError(f"unknown report block {type(block).__name__}")


def render_html(title: str, intro: str, sections: list[Section]) -> str:
    """The whole report as one HTML page: inline CSS, figures as data: URIs, no script."""
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>{html.escape(title)}</title>", f"<style>{CSS}</style>", "</head>", "<body>",
           f"<h1>{html.escape(title)}</h1>", f'<p class="intro">{_inline_code_html(intro)}</p>',
           "<nav>" + "".join(f'<a href="#{s.anchor}">{html.escape(s.title)}</a>' for s in sections) + "</nav>"]
    for s in sections:
        out.append(f'<section id="{s.anchor}">')
        out.append(f"<h2>{html.escape(s.title)}</h2>")
        out += [_html_block(b) for b in s.blocks]
        if s.notes:
            out.append('<ul class="notes">' + "".join(f"<li>{_inline_code_html(n)}</li>" for n in s.notes) + "</ul>")
        out.append("</section>")
    out += ["</body>", "</html>", ""]
    return "\n".join(out)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(table: Table) -> str:
    lines = ["| " + " | ".join(_md_cell(h) for h in table.header) + " |",
             "| " + " | ".join("---:" if n else "---" for n in table.numeric) + " |"]
    for i, row in enumerate(table.rows):
        cells = [f"**{_md_cell(c)}**" if (i, j) in table.bold else _md_cell(c) for j, c in enumerate(row)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _md_block(block) -> list[str]:
    if isinstance(block, str):
        return [block, ""]
    if isinstance(block, Table):
        return [_md_table(block), ""]
    if isinstance(block, Figure):
        return [f"![{block.alt}]({block.name}.png)", ""]
    if isinstance(block, Columns):
        return [line for b in block.blocks for line in _md_block(b)]
    if isinstance(block, Details):
        return ["<details>", f"<summary>{html.escape(block.summary)}</summary>", "", f"```{block.lang}",
                block.text.rstrip("\n"), "```", "", "</details>", ""]
    raise TypeError(f"unknown report block {type(block).__name__}")


def render_markdown(title: str, intro: str, sections: list[Section]) -> str:
    """The Markdown twin: the same text and tables, figures as relative links to the PNG files beside it."""
    out = [f"# {title}", "", intro, ""]
    for s in sections:
        out += [f"## {s.title}", ""]
        for block in s.blocks:
            out += _md_block(block)
        if s.notes:
            out += ["Left out:", ""] + [f"- {n}" for n in s.notes] + [""]
    return "\n".join(out).rstrip("\n") + "\n"


def figures_of(sections: list[Section]) -> list[Figure]:
    figs = []
    for s in sections:
        for block in s.blocks:
            if isinstance(block, Figure):
                figs.append(block)
            elif isinstance(block, Columns):
                figs += [b for b in block.blocks if isinstance(b, Figure)]
    return figs


# ---------------------------------------------------------------- the whole report


@dataclass
class Report:
    html: Path
    markdown: Path
    figures: list[Path]
    notes: list[str]  # "section: note" for everything left out


def _intro(metrics: dict[str, dict], metrics_path: Path, data_dir: Path) -> str:
    teacher = teacher_name(metrics)
    students = [n for n in model_order(metrics) if n != teacher]
    scans = next((m.get("val_scans") for m in metrics.values() if isinstance(m.get("val_scans"), int)), None)
    dataset = _meta(data_dir).get("dataset")
    where = f"the {scans} val scans" if scans else "the val split"
    where += f" of {dataset}" if dataset else ""
    tta = " with test-time augmentation" if any(m.get("tta") for m in metrics.values()) else ""
    who = f"The teacher ({teacher})" if teacher else "No teacher"
    plural = "s" if len(students) != 1 else ""
    return (f"{who} and {len(students)} student{plural} ({', '.join(students) or 'none'}), scored on {where}{tta}. "
            f"Made by `pvkd report` from `{metrics_path}`, the evaluate stage's plots, the dvclive curves and the "
            "processed data's stats.")


def _prepare_out(out_dir: Path) -> Path:
    """A fresh staging folder beside ``out_dir``; refuses to replace a folder that is not a report."""
    if out_dir.exists():
        if not out_dir.is_dir():
            raise DataError(f"{out_dir}: exists and is not a folder; pass another --out")
        foreign = [p.name for p in out_dir.iterdir()
                   if not (p.is_file() and (p.name in ("report.html", "report.md") or p.suffix == ".png"))]
        if foreign:
            raise DataError(f"{out_dir}: holds files that are not a report's ({', '.join(sorted(foreign)[:3])}); "
                            "pass an empty or report folder as --out")
    staging = out_dir.with_name(out_dir.name + ".partial")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    return staging


def build_report(
    metrics_path: str | Path,
    eval_dir: str | Path,
    data_dir: str | Path,
    live_dir: str | Path,
    out_dir: str | Path,
    params_path: str | Path = "params.yaml",
    exp_show=None,
    title: str | None = None,
) -> Report:
    """Write ``out_dir/report.html``, ``out_dir/report.md`` and the figures; ``exp_show``: parsed ``dvc exp show``.

    The folder is written whole: built beside ``out_dir`` and swapped in at the end.
    """
    metrics = load_metrics(metrics_path)
    eval_dir, data_dir, live_dir, out_dir = Path(eval_dir), Path(data_dir), Path(live_dir), Path(out_dir)
    params_path = Path(params_path)
    staging = _prepare_out(out_dir)
    try:
        order = model_order(metrics)
        teacher = teacher_name(metrics)
        colors = model_colors(order, teacher)
        headline_section, rows = section_headline(metrics)
        sections = [
            headline_section,
            section_per_class(metrics, eval_dir, colors),
            section_distance(metrics, eval_dir, colors, teacher),
            section_cost(rows, colors, teacher),
            section_curves(metrics, live_dir, colors, teacher),
            section_scan(metrics, eval_dir, data_dir),
            section_data(data_dir),
        ]
        if exp_show is not None:
            sections.append(section_experiments(exp_show))
        sections.append(section_params(params_path))
        title = title or "PVKD report"
        intro = _intro(metrics, Path(metrics_path), data_dir)
        figures = figures_of(sections)
        for fig in figures:
            (staging / f"{fig.name}.png").write_bytes(fig.png)
        (staging / "report.html").write_text(render_html(title, intro, sections), encoding="utf-8")
        (staging / "report.md").write_text(render_markdown(title, intro, sections), encoding="utf-8")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Report(html=out_dir / "report.html", markdown=out_dir / "report.md",
                  figures=[out_dir / f"{f.name}.png" for f in figures],
                  notes=[f"{s.title}: {n}" for s in sections for n in s.notes])
