"""The report's figures (matplotlib, drawn off-screen to PNG) and the colours they share."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # files only, no display; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from pvkd.report.blocks import Figure  # noqa: E402

DPI = 150  # figures are drawn at 1.5x their CSS size, sharp on high-density screens
CSS_PX_PER_INCH = 100
TEACHER_COLOR = "#333333"
# right / wrong categories of the disagreement map: (name, RGB)
AGREEMENT = (
    ("not labelled", (232, 232, 232)),
    ("both right", (175, 175, 175)),
    ("only the teacher right", (214, 39, 40)),
    ("only the student right", (31, 119, 180)),
    ("both wrong", (20, 20, 20)),
)


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


def class_palette(count: int) -> list[tuple[int, int, int]]:
    """RGB per class id 0..count-1: SemanticKITTI's colours, then tab20 for ids beyond them."""
    from pvkd.plots import SEMANTICKITTI_COLORS

    palette = list(SEMANTICKITTI_COLORS)
    cmap = plt.get_cmap("tab20")
    palette += [tuple(int(255 * v) for v in cmap(i % 20)[:3]) for i in range(len(palette), count)]
    return palette


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


def figure_label_budget(panels: dict[int, dict[str, list[tuple[int, float, float]]]], teacher: dict[int, float],
                        total: int, colors: dict[str, str], name: str) -> Figure:
    """Val mIoU (%) against the labelled share of the train streets, one panel per step count.

    ``panels``: {steps: {student: [(labelled streets, mean, std)]}}, one line per student with
    error bars of one std over seeds (the students nudged apart sideways so the bars stay
    apart); ``teacher``: {labelled streets: mIoU}, the teachers' line, dashed, in every panel.
    """
    streets = sorted({s for models in panels.values() for pts in models.values() for s, _, _ in pts} | set(teacher)
                     | {total})
    fig, axes = plt.subplots(1, len(panels), figsize=(1.0 + 5.0 * len(panels), 4.2), dpi=DPI, sharey=True,
                             squeeze=False)
    handles = {}
    for ax, (steps, models) in zip(axes[0], panels.items()):
        _style(ax)
        if teacher:
            x = sorted(teacher)
            (handles["teacher"],) = ax.plot([s / total for s in x], [100 * teacher[s] for s in x], linestyle="--",
                                            color=TEACHER_COLOR, marker="D", markersize=4, linewidth=1.4)
        for k, (model, points) in enumerate(models.items()):
            x, mean, std = (np.array(v, dtype=float) for v in zip(*sorted(points)))
            dodge = 0.012 * (k - (len(models) - 1) / 2)
            handles.setdefault(model, ax.errorbar(x / total + dodge, 100 * mean, yerr=100 * std, capsize=3,
                                                  color=colors.get(model, "#777777"), marker="o", markersize=4,
                                                  linewidth=1.5))
        ax.set_title(f"{steps} student steps", fontsize=11)
        ax.set_xlim(0, 1.06)
        ax.set_xticks([s / total for s in streets], [f"{s}/{total}\n{100 * s / total:g} %" for s in streets])
        ax.set_xlabel("labelled train streets")
    axes[0][0].set_ylabel("val mIoU (%)")
    fig.tight_layout()
    labels = {"teacher": "teacher (one run per budget)"}
    fig.legend(list(handles.values()), [labels.get(m, m) for m in handles], loc="center left",
               bbox_to_anchor=(1.0, 0.5), frameon=False, fontsize=9)
    return _png(fig, name, "val mIoU against the labelled share of the train streets, one line per student with "
                "error bars of one std over seeds, the teachers dashed")


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


