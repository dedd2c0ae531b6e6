"""The experiment table: ``dvc exp show --json`` run, parsed (DVC 2 and 3) and laid out as params x mIoU."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pvkd.errors import PvkdError
from pvkd.report.blocks import MISSING, Table, pct
from pvkd.report.inputs import number

METRICS_FILE = "metrics/evaluate.json"  # the key of the evaluate metrics in `dvc exp show --json`
WORKSPACE_COLUMNS = 6  # the most uncommitted params changes of the workspace the experiment table gets columns for


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
    return {name: number(m.get("miou")) for name, m in data.items() if isinstance(m, dict)}, None


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
        cells += [pct(row.miou.get(m)) for m in models]
        table.rows.append(cells)
        table.bold |= {(i, 2 + keys.index(k)) for k in row.changed if k in keys}
    return table


