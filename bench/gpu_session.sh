#!/usr/bin/env bash
# One GPU session in one device call: the numbers issues 3, 4 and 5 wait for, at full size
# (the synth64 profile: Cylinder3D s = 32 teacher / s = 16 student on 480 x 360 x 32, ~120k-point scans).
#
#   1. bench/model_latency.py --device cuda --check --profile     issue 3: params, MACs, latency; fp32 + autocast fwd/bwd
#   2. pvkd synth + pvkd preprocess                                 32 train + 4 val hdl64 scans (9 sequences of 4)
#   3. bench/train_throughput.py --batch-size 4 --amp bf16          issue 4: step time, peak memory, loader vs workers
#   4. pvkd teacher-train (1 epoch = 16 steps), pvkd cache-logits   the teacher record and its cache; cache time and size
#   5. bench/distill_step.py --device cuda                          issue 5: plain vs cached PVKD vs online teacher
#   6. (if time is left) model_latency.py --amp bf16 on Cylinder3D  autocast latency, teacher vs student
#
# Device machine (nvidia-h200/H100, 16 cores; no dvc, no dvclive, no network; Python 3.12 + torch 2.11):
#   once, here in the checkout (the kit: /work/shared/gpu/README.md; /.gpu/ is git-ignored):
#       mkdir -p .gpu && cp ../shared/gpu/site-py312.tar.xz .gpu/
#   then one `run` call of the device tool (its arguments):
#       command: "bash bench/gpu_session.sh"    carry: [".gpu"]    timeout_s: 600
#   It unpacks the kit to /tmp/gpusite (PYTHONPATH=/tmp/gpusite/site:$PWD) and ends by itself within
#   BUDGET_S (510 s; expected ~5 min). Back under files_at (7 files): session.log (everything
#   printed) and results/*.json, named as in bench/results/ (copy them there: `cp <files_at>/results/*.json
#   bench/results/`); results/gpu_session_<gpu>.json is the summary (each step's exit code and seconds,
#   the headline numbers). Give the machine back afterwards (give_back) unless you rerun at once.
#   Device time: the machine's start (1-2 min) + this run (~5-6 min) of the session's 15 min; a rerun
#   right after (machine still warm, kit still unpacked) fits once, e.g. with a lower BUDGET_S:
#       command: "BUDGET_S=300 bash bench/gpu_session.sh"
#
# CPU smoke test of the same sequence with tiny sizes (3 default 32-beam scans, a 64 x 48 x 16 grid,
# Cylinder3D widths 8 / 4, MinkUNet only in model_latency, 1-2 steps each; ~4 min at nice 10 on 2
# cores busy with another job), with dvc, dvclive and the editable install hidden as on the device
# (a sitecustomize shim on PYTHONPATH); step budgets x 4, BUDGET_S 900:
#       nice -n 10 bash bench/gpu_session.sh --smoke          (or SMOKE=1)
# Smoke output goes to bench/work/gpu_session_smoke/ (git-ignored), never to bench/results/.
# Environment: BUDGET_S (session ceiling), WORK (scratch folder), OUT (set by the device tool;
# default WORK/out), PYTHON (default python3; the smoke test takes .venv/bin/python).
#
# Each step runs under `timeout` with its own budget, cut to what is left of BUDGET_S; a failed or
# timed-out step is recorded and the steps that do not depend on it still run. Budgets (GPU; the
# expected times are estimates from CPU runs and the kit's H100 numbers, not yet measured):
#   setup: kit unpack + environment check           ~10 s
#   model_latency  (6 models x 3 scans x 13 passes,
#                   fwd/bwd checks, profiles)        ~90 s   budget 150
#   synth          (9 sequences on 9 processes)      ~10 s   budget 60
#   preprocess                                       ~5 s    budget 45
#   train_throughput (10 + 60 steps of 4 scans,
#                   loader 0/2/4/8 workers)          ~60 s   budget 120
#   teacher-train  (16 steps of 2 scans + val)       ~40 s   budget 90
#   cache-logits   (32 scans)                        ~20 s   budget 60
#   distill_step   (2 + 40 steps x 3 variants)       ~45 s   budget 120
#   model_latency bf16 (Cylinder3D only; only if
#                   >= 100 s are left)               ~30 s   budget 80
#   summary                                          ~3 s
# Total expected ~5 min; the budgets add up to more than BUDGET_S on purpose: a slow step eats
# into the last ones' time, never past BUDGET_S (+ ~15 s to kill a step and write the summary).

set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

SMOKE=${SMOKE:-0}
[[ ${1:-} == --smoke ]] && SMOKE=1
export PYTHONUNBUFFERED=1
START=$(date +%s)
BUDGET_S=${BUDGET_S:-510}   # the device call's limit is 600 s; leave room for the kill grace and the copy back
RESERVE_S=12                # kept back from every step's limit for the summary

if [[ $SMOKE == 1 ]]; then
  WORK=${WORK:-$ROOT/bench/work/gpu_session_smoke}
  KEEP=                      # the smoke's results stay in $WORK/results and $OUT/results
  BUDGET_S=${SMOKE_BUDGET_S:-900}
  SCALE=4                    # step budgets are GPU-sized; the smoke's CPU steps are slower
else
  WORK=${WORK:-/tmp/pvkd_gpu_session}
  KEEP=$ROOT/bench/results   # where this session's results are copied at the end
  SCALE=1
fi
OUT=${OUT:-$WORK/out}
NEW=$WORK/results            # this session's result files only (emptied at the start, copied at the end)
RUN=$WORK/run                # data, teacher, cache: removed at the start of each session
STEPS=$WORK/steps.tsv
rm -rf "$NEW" "$RUN" "$OUT/results"
mkdir -p "$OUT/results" "$NEW" "$RUN"

if [[ -z ${PYTHON:-} ]]; then
  if [[ $SMOKE == 1 && -x $ROOT/.venv/bin/python ]]; then PYTHON=$ROOT/.venv/bin/python; else PYTHON=python3; fi
fi
PVKD=("$PYTHON" "$ROOT/bench/pvkd_src.py")   # the pvkd program from the checkout (no install on the device)

log() { echo "[$(date +%H:%M:%S) +$(( $(date +%s) - START ))s] $*"; }

# run_step NAME BUDGET_S COMMAND...: COMMAND under `timeout`, at most BUDGET_S and never past BUDGET_S
# of the session; records "name rc seconds limit" in $STEPS; leaves its start (epoch) and seconds in
# $LAST_START and $LAST_SECS.
run_step() {
  local name=$1 budget=$2
  shift 2
  local left=$(( BUDGET_S - ($(date +%s) - START) - RESERVE_S ))
  budget=$(( budget * SCALE ))
  local limit=$(( budget < left ? budget : left ))
  if (( limit < 10 )); then
    log "== $name: skipped, ${left}s of the session left"
    printf '%s\tskipped\t0\t0\n' "$name" >>"$STEPS"
    return 99
  fi
  log "== $name (limit ${limit}s): $*"
  local t0 t1 rc
  t0=$(date +%s.%N)
  LAST_START=$t0
  timeout -k 10 "$limit" "$@"
  rc=$?
  t1=$(date +%s.%N)
  LAST_SECS=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
  (( rc == 124 || rc == 137 )) && log "!! $name timed out after ${limit}s"
  log "== $name: exit $rc in ${LAST_SECS}s"
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$LAST_SECS" "$limit" >>"$STEPS"
  return $rc
}

skip() { log "== $1: skipped ($2)"; printf '%s\tskipped\t0\t0\n' "$1" >>"$STEPS"; }

setup_python_path() {
  if [[ $SMOKE == 1 ]]; then
    # Here the venv has spconv and torch-scatter (the kit's are CUDA builds). Simulate the device:
    # `import dvc` / `import dvclive` fail, and pvkd comes from PYTHONPATH, not from the editable install.
    mkdir -p "$WORK/devsim"
    cat >"$WORK/devsim/sitecustomize.py" <<'EOF'
import sys


class _Missing:
    """dvc and dvclive are not installed on the device machine."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("dvc", "dvclive"):
            raise ModuleNotFoundError(f"No module named {name!r} (device simulation)")
        return None


sys.meta_path[:] = [_Missing()] + [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
EOF
    export PYTHONPATH=$WORK/devsim:$ROOT
    if [[ -f .gpu/site-py312.tar.xz ]]; then log "kit present: .gpu/site-py312.tar.xz (not unpacked in smoke mode)"
    else log "note: no .gpu/site-py312.tar.xz yet; the device run needs it (see the header)"; fi
    return 0
  fi
  if [[ ! -f .gpu/site-py312.tar.xz ]]; then
    log "no .gpu/site-py312.tar.xz: copy the kit into .gpu/ and carry it (see the header)"
    return 1
  fi
  # /tmp/gpusite survives between calls while the machine is warm; .done marks a complete unpack
  if [[ ! -f /tmp/gpusite/.done ]]; then
    rm -rf /tmp/gpusite && mkdir -p /tmp/gpusite && tar -xJf .gpu/site-py312.tar.xz -C /tmp/gpusite && touch /tmp/gpusite/.done \
      || { log "unpacking the kit failed"; return 1; }
  fi
  export PYTHONPATH=/tmp/gpusite/site:$ROOT
}

# the derived params file: a profile with small scan counts, one teacher epoch, and the runtime knobs
write_params() {
  "$PYTHON" - "$@" <<'EOF'
import sys
from pathlib import Path

import yaml

from pvkd.params import profile_params

base, out, run, smoke = sys.argv[1], Path(sys.argv[2]), sys.argv[3], sys.argv[4] == "1"
p = profile_params(base)  # params.yaml with the profile merged in
if smoke:  # tiny: 3 scans of the default 32-beam sensor, a 64 x 48 x 16 grid, widths 8 / 4
    splits, scans = {"train": ["00"], "val": ["08"]}, 2
    p["synth"]["sensor"] = "default"
    p["grid"]["cylinder"]["size"] = [64, 48, 16]
    p["teacher"]["model"]["width"] = 8
    for student in p["students"].values():
        student["model"]["width"] = 4
    p["distill"]["supervoxel"] = {"size": [16, 12, 4], "count": 2, "points": 64, "voxels": 32}
    p["train"]["batch_size"] = 1
    p["preprocess"]["scans_per_shard"] = 1
    workers = 2
else:      # full size: 8 train sequences + 1 val sequence of 4 scans, one process each
    splits, scans = {"train": [f"{i:02d}" for i in range(8)], "val": ["08"]}, 4
    p["preprocess"]["scans_per_shard"] = 8   # 4 cache shards: their write times give the steady per-scan rate
    workers = 16
p["data"].update(root=f"{run}/raw", splits=splits)
p["synth"].update(sequences=splits, scans_per_sequence=scans, workers=workers)
p["preprocess"]["workers"] = workers
p["teacher"]["train"] = {"epochs": 1}
p["train"].update(epochs=1, processes=1, workers=0 if smoke else 4, val_every=0, checkpoint_every=1000, log_every=4)
p["cache"]["device"] = "cpu" if smoke else "cuda"
out.write_text(yaml.safe_dump(p, sort_keys=False))
print(f"{out}: {len(splits['train'])} + {len(splits['val'])} sequences of {scans} {p['synth']['sensor']} scans, "
      f"grid {p['grid']['cylinder']['size']}, teacher width {p['teacher']['model']['width']}")
EOF
}

# cache-logits: time, size on disk, bytes per point; the steady rate from the shards' write times
cache_summary() {
  "$PYTHON" - "$@" <<'EOF'
import json
import sys
from pathlib import Path

cache, start, wall, out, device = Path(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), Path(sys.argv[4]), sys.argv[5]
manifest = json.loads((cache / "manifest.json").read_text())
shards = sorted((cache / "shards").glob("*.parquet"), key=lambda f: f.stat().st_mtime)
scans, points = len(manifest["scans"]), sum(s["num_points"] for s in manifest["scans"])
size = sum(f.stat().st_size for f in shards)
per_shard = {}
for s in manifest["scans"]:
    per_shard[Path(s["shard"]).name] = per_shard.get(Path(s["shard"]).name, 0) + 1
result = {
    "benchmark": "cache_logits", "device": device, "complete": bool(manifest.get("complete")),
    "scans": scans, "points": points, "points_per_scan": points / scans,
    "wall_s": wall, "wall_s_per_scan": wall / scans,
    "note": "wall_s: the whole `pvkd cache-logits` process; fixed_s: its start-up (imports, CUDA, teacher load) and "
            "the feature projection's fit on min(cache.feature_scans, scans) scans, until projection.pt is written; "
            "steady_s_per_scan: from the shards' write times; extrapolated: fixed_s + scans x steady_s_per_scan",
    "shards": len(shards), "bytes_on_disk": size, "bytes_per_point_on_disk": size / points,
    "bytes_per_point_encoded": manifest.get("bytes_per_point"),
}
projection = cache / "projection.pt"
if projection.is_file() and len(shards) >= 2:
    t0 = projection.stat().st_mtime
    result["fixed_s"] = t0 - start
    first = shards[0].stat().st_mtime
    later = shards[1:]
    span = later[-1].stat().st_mtime - first
    result["steady_s_per_scan"] = span / sum(per_shard[f.name] for f in later) if span > 0 else None
    result["first_shard_after_projection_s"] = first - t0
rate, fixed = result.get("steady_s_per_scan"), result.get("fixed_s", 0.0)
if rate is None:
    rate, fixed = result["wall_s_per_scan"], 0.0
mib_per_scan = size / scans / 2**20
result["extrapolated"] = {
    name: {"scans": n, "minutes": (fixed + n * rate) / 60, "gib": n * mib_per_scan / 1024}
    for name, n in (("synth64 profile train split (10 x 200 scans)", 2000), ("SemanticKITTI train (19130 scans)", 19130))
}
out.write_text(json.dumps(result, indent=2))
print(json.dumps(result, indent=2))
EOF
}

summary() {
  "$PYTHON" - "$STEPS" "$NEW" "$SLUG" "$WORK/env.json" "$SMOKE" "$(( $(date +%s) - START ))" <<'EOF'
import json
import sys
from pathlib import Path

steps_file, results, slug, env_file, smoke, total = sys.argv[1:7]
steps = []
for line in Path(steps_file).read_text().splitlines():
    name, rc, secs, limit = line.split("\t")
    steps.append({"step": name, "exit": rc, "seconds": float(secs), "limit_s": int(limit)})


def load(name):
    path = Path(results) / f"{name}_{slug}.json"
    return json.loads(path.read_text()) if path.is_file() else None


headline = {}
if (m := load("model_latency")):
    headline["model_latency"] = {
        "latency_fp32_ms": {f"{r['arch']}-{r['width']}": round(r["latency_fp32"]["median_ms"], 2) for r in m["results"]},
        "macs_g": {f"{r['arch']}-{r['width']}": round(r["macs_mean"]["total"] / 1e9, 2) for r in m["results"]},
        "ratios_half_over_full": m["ratios_half_over_full"],
        "checks_ok": {k: {p: c.get("ok") for p, c in v.items()} for k, v in m.get("forward_backward_checks", {}).items()},
    }
if (m := load("model_latency_bf16")):
    headline["model_latency_bf16"] = {f"{r['arch']}-{r['width']}": round(r["latency_bf16"]["median_ms"], 2)
                                      for r in m["results"] if "latency_bf16" in r}
if (t := load("train_throughput")):
    headline["train_throughput"] = {"step": t["step"], "loader_scans_per_s": t["loader_scans_per_s"],
                                    "loader_over_step_ratio": t["loader_over_step_ratio"]}
if (c := load("cache_logits")):
    headline["cache_logits"] = {k: c.get(k) for k in ("wall_s", "steady_s_per_scan", "bytes_per_point_on_disk",
                                                      "extrapolated")}
if (d := load("distill_step")):
    headline["distill_step"] = {k: d[k] for k in ("median_ms", "cached_over_plain", "online_over_cached", "load_ms")}
summary = {
    "smoke": smoke == "1", "total_s": int(total),
    "environment": json.loads(Path(env_file).read_text()) if Path(env_file).is_file() else None,
    "steps": steps, "headline": headline,
}
text = json.dumps(summary, indent=2)
Path(results, f"gpu_session_{slug}.json").write_text(text)
print(text)
EOF
  cp "$NEW"/*.json "$OUT/results/" 2>/dev/null
  [[ -n $KEEP ]] && cp "$NEW"/*.json "$KEEP/" 2>/dev/null
  return 0
}

main() {
  log "gpu_session: smoke=$SMOKE work=$WORK out=$OUT results=$NEW budget=${BUDGET_S}s python=$PYTHON"
  : >"$STEPS"
  rm -f "$WORK/env.json"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  setup_python_path || { printf 'setup\t1\t0\t0\n' >>"$STEPS"; SLUG=failed-setup; summary; return 1; }

  # environment: versions, the device, and that pvkd comes from this checkout; stop if the GPU is missing
  timeout -k 5 120 "$PYTHON" - "$WORK/env.json" "$SMOKE" <<'EOF'
import json
import os
import re
import sys

import torch

import pvkd

env = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
       "cuda_available": torch.cuda.is_available(), "cpu_count": os.cpu_count(), "pvkd_from": pvkd.__file__}
for name in ("spconv", "torch_scatter", "dvc", "dvclive"):
    try:
        module = __import__(name)
        env[name] = getattr(module, "__version__", "present")
    except ImportError:
        env[name] = None
    except Exception as err:  # a kit built for another machine fails with OSError (glibc, CUDA)
        env[name] = f"error: {type(err).__name__}: {err}"[:300]
if torch.cuda.is_available():
    env["gpu"] = torch.cuda.get_device_name(0)
    env["slug"] = re.sub(r"[^a-z0-9]+", "-", env["gpu"].lower()).strip("-")[:40]
else:
    env["slug"] = "cpu-smoke" if sys.argv[2] == "1" else "no-gpu"
print(json.dumps(env, indent=2))
open(sys.argv[1], "w").write(json.dumps(env))
if sys.argv[2] != "1" and not torch.cuda.is_available():
    sys.exit("no CUDA device visible")
broken = [n for n in ("spconv", "torch_scatter") if env[n] is None or str(env[n]).startswith("error")]
if broken:
    sys.exit(f"{', '.join(broken)} missing or broken: is the kit on PYTHONPATH?")
EOF
  local rc=$?
  SLUG=$("$PYTHON" -c "import json,sys; print(json.load(open(sys.argv[1]))['slug'])" "$WORK/env.json" 2>/dev/null \
         || echo failed-setup)
  printf 'environment\t%s\t0\t0\n' "$rc" >>"$STEPS"
  if (( rc != 0 )); then summary; return 1; fi

  local dev=cuda
  [[ $SMOKE == 1 ]] && dev=cpu
  local P=$RUN/params.yaml DATA=$RUN/processed TEACHER=$RUN/teacher.pt CACHE=$RUN/teacher_cache
  write_params profiles/synth64.yaml "$P" "$RUN" "$SMOKE" || { printf 'params\t1\t0\t0\n' >>"$STEPS"; summary; return 1; }

  # 1. issue 3: teacher vs student, every family, fp32; fwd/bwd checks in fp32, fp16, bf16 autocast; profiles
  if [[ $SMOKE == 1 ]]; then
    run_step model_latency 150 "$PYTHON" bench/model_latency.py --device cpu --archs minkunet --points 200 \
      --scans 1 --warmup 1 --runs 1 --check --profile --out "$NEW/model_latency_$SLUG.json"
  else
    run_step model_latency 150 "$PYTHON" bench/model_latency.py --device cuda --check --profile \
      --out "$NEW/model_latency_$SLUG.json"
  fi

  # 2. data at full size (hdl64 scans, 480 x 360 x 32 grid), small counts
  local data_ok=0
  if run_step synth 60 "${PVKD[@]}" synth --params "$P" --out "$RUN/raw" --metrics "$RUN/synth.json"; then
    run_step preprocess 45 "${PVKD[@]}" preprocess --params "$P" --out "$DATA" --metrics "$RUN/preprocess.json" \
      && data_ok=1
  else
    skip preprocess "no raw scans"
  fi

  # 3. issue 4: the teacher's training step at batch 4 under bf16 autocast; loader throughput per worker count
  if (( data_ok )); then
    if [[ $SMOKE == 1 ]]; then
      run_step train_throughput 120 "$PYTHON" bench/train_throughput.py --profile "$P" --data "$DATA" \
        --batch-size 1 --amp bf16 --device cpu --steps 1 --warmup 1 --workers 0,1 --loader-batches 2 \
        --out "$NEW/train_throughput_$SLUG.json"
    else
      run_step train_throughput 120 "$PYTHON" bench/train_throughput.py --profile "$P" --data "$DATA" \
        --batch-size 4 --amp bf16 --steps 60 --warmup 10 --workers 0,2,4,8 --loader-batches 20 \
        --out "$NEW/train_throughput_$SLUG.json"
    fi
  else
    skip train_throughput "no data"
  fi

  # 4. a teacher record (1 epoch, untrained in effect: only its shapes and cost matter) and its cache
  local cache_ok=0
  if (( data_ok )); then
    if run_step teacher_train 90 "${PVKD[@]}" teacher-train --params "$P" --data "$DATA" --out "$TEACHER" \
         --live "$RUN/dvclive/teacher" --checkpoints "$RUN/checkpoints/teacher"; then
      if run_step cache_logits 60 "${PVKD[@]}" cache-logits --params "$P" --teacher "$TEACHER" --data "$DATA" \
           --out "$CACHE"; then
        cache_summary "$CACHE" "$LAST_START" "$LAST_SECS" "$NEW/cache_logits_$SLUG.json" "$SLUG" && cache_ok=1
      fi
    else
      skip cache_logits "no teacher"
    fi
  else
    skip teacher_train "no data"
  fi

  # 5. issue 5: plain vs cached PVKD vs online teacher, the profile's student (s = 16) and batch (2 scans)
  if (( cache_ok )); then
    local steps=40 extra=()
    [[ $SMOKE == 1 ]] && steps=2 extra=(--batch-size 1)
    run_step distill_step 120 "$PYTHON" bench/distill_step.py --params "$P" --student pvkd --data "$DATA" \
      --cache "$CACHE" --teacher "$TEACHER" --device "$dev" --steps "$steps" "${extra[@]}" \
      --out "$NEW/distill_step_$SLUG.json"
  else
    skip distill_step "no teacher cache"
  fi

  # 6. bonus while time is left: inference latency under bf16 autocast, Cylinder3D teacher vs student
  if [[ $SMOKE == 0 ]] && (( BUDGET_S - ($(date +%s) - START) >= 100 )); then
    run_step model_latency_bf16 80 "$PYTHON" bench/model_latency.py --device cuda --archs cylinder3d --amp bf16 \
      --out "$NEW/model_latency_bf16_$SLUG.json"
  else
    skip model_latency_bf16 "smoke mode or under 100 s left"
  fi

  summary
  log "done in $(( $(date +%s) - START ))s; results in $OUT/results${KEEP:+ and $KEEP}"
  # exit 0 only when every step succeeded (the bonus step may be skipped)
  awk -F'\t' '$2 != "0" && !($1 == "model_latency_bf16" && $2 == "skipped") { bad = 1 } END { exit bad }' "$STEPS"
}

main "$@" 2>&1 | tee "$OUT/session.log"
