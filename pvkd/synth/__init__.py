"""Synthetic LiDAR data in the SemanticKITTI layout: the pipeline's default dataset.

A spinning multi-beam sensor (:mod:`.sensor`) drives along procedural streets (:mod:`.scene`),
its rays cast with exact occlusion (:mod:`.raycast`) and degraded like a real sensor's returns
(:mod:`.scan`); :mod:`.writer` writes the sequences and :mod:`.realism` measures the result
against SemanticKITTI's figures.

    from pvkd.synth import SynthConfig, generate, realism_report
    summary = generate(Path("data/raw/synthetic"), SynthConfig())
    print(realism_report(summary))
"""

from pvkd.synth.config import PROFILES, SynthConfig
from pvkd.synth.realism import realism_checks, realism_report
from pvkd.synth.writer import generate

__all__ = ["PROFILES", "SynthConfig", "generate", "realism_checks", "realism_report"]
