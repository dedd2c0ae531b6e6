"""What every benchmark shares: the name of the device it ran on and how its JSON result is written."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import torch


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's with the threads torch uses (results are compared per device)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def write_result(result: dict, out: Path) -> None:
    """``result`` as indented JSON at ``out`` (folders made as needed)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


# the mixing augmentations a variant of the mixing benchmarks turns on (train.augment keys)
MIX_VARIANTS = {"affine": (), "paste": ("paste",), "polarmix": ("polarmix",), "lasermix": ("lasermix",),
                "all": ("paste", "polarmix", "lasermix")}


def pvkd(*args: str, log: Path) -> None:
    """Run one ``pvkd`` command; its output goes to ``log``; a failure names the log."""
    done = subprocess.run([sys.executable, "-m", "pvkd", *args], capture_output=True, text=True)
    log.write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise RuntimeError(f"pvkd {args[0]} failed; see {log}")
