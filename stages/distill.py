"""Stage `distill@<student>`: one student trained with PVKD from the teacher cache -> models/<student>.pt."""

from __future__ import annotations

import subprocess
from pathlib import Path

import typer

from pvkd.console import console
from pvkd.errors import ParamsError
from pvkd.params import load_params


def main(
    student: str = typer.Option(..., help="Name of the student under students: in params.yaml."),
    params: Path = typer.Option(Path("params.yaml"), help="Params file; reads students.<name>, distill and train."),
    data: Path = typer.Option(Path("data/processed"), help="Processed data folder (`pvkd preprocess`)."),
    cache: Path = typer.Option(Path("data/teacher_cache"), help="Teacher cache (`pvkd cache-logits`)."),
    teacher: Path = typer.Option(Path("models/teacher.pt"), help="Teacher model record: its hash must be the "
                                 "cache's (cached mode); it runs on every batch in online mode."),
    out: Path = typer.Option(None, help="Model record to write; default models/<student>.pt."),
    live: Path = typer.Option(None, help="dvclive folder; default dvclive/<student>."),
    checkpoints: Path = typer.Option(None, help="Resumable state; default checkpoints/<student>."),
    objects: Path = typer.Option(Path("data/objects.parquet"), help="Object bank (`pvkd objects`); read only "
                                 "when train.augment.paste or polarmix.copies is on."),
) -> None:
    """Train one student with Point-to-Voxel Knowledge Distillation from the teacher.

    Loss: the segmentation loss (as the teacher's) + distill.point_weight x pointwise KL +
    distill.voxel_weight x voxelwise KL + distill.affinity_weight x (inter-point + inter-voxel
    affinity inside distill.supervoxel.count supervoxels per scan, drawn by distill.sampling).
    The student's own distill: and train: keys override the sections (the baseline sets every
    weight to 0). With distill.unlabelled.split, the student also trains on the scans of that
    unlabelled split (a share of the batches), where the segmentation loss takes the teacher's
    targets and every PVKD term applies; the baseline (no teacher term, unlabelled.weight 0)
    trains on the labelled scans only. Teacher outputs come from the cache (distill.mode
    cached; cache.splits must hold the unlabelled split) or from running the teacher on each
    batch (online). Same engine as teacher-train: DDP under torchrun with
    train.processes > 1, resumes after an interruption, curves in dvclive.
    """

    import torch

    from pvkd.configs import student_sections, student_unlabelled
    from pvkd.distill.cache import TeacherCache, file_sha256
    from pvkd.distill.objective import DistillConfig, PVKDLoss, cached_targets, online_targets, train_rarity
    from pvkd.objects import bank_for
    from pvkd.shards import ProcessedData, check_hashes
    from pvkd.stages.teacher_train import fit_and_export
    from pvkd.train import distributed
    from pvkd.train.checkpoint import load_model, model_for_data, trained_on
    from pvkd.train.config import TrainConfig
    from pvkd.train.data import ScanDataset
    from pvkd.train.engine import Trainer
    from pvkd.train.losses import SegmentationLoss
    from pvkd.train.semi import describe_semi, semi_supervised

    out = out or Path("models") / f"{student}.pt"
    live = live or Path("dvclive") / student
    checkpoints = checkpoints or Path("checkpoints") / student
    config = student_sections(load_params(params), student, params)  # configs/<student>.json: its inert keys left out
    model_cfg, distill_section, train_section = config["model"], config["distill"], config["train"]
    dcfg = DistillConfig.from_dict(distill_section, where=f"distill (students.{student}.distill over it)")
    cfg = TrainConfig.from_dict(train_section, where=f"train (students.{student}.train over it)")

    processes = distributed.local_processes(cfg)
    if processes > 1 and not distributed.under_torchrun():
        argv = ["distill", "--student", student, "--params", str(params), "--data", str(data), "--cache", str(cache),
                "--teacher", str(teacher), "--out", str(out), "--live", str(live), "--checkpoints", str(checkpoints),
                "--objects", str(objects)]
        console.print(f"distill {student}: {processes} processes under torchrun")
        raise typer.Exit(subprocess.call(distributed.torchrun_command(processes, argv)))

    dist, device = distributed.setup(cfg)
    try:
        processed = ProcessedData(data)
        # the baseline (no teacher) trains on the labelled scans only; a distilled student adds the unlabelled split,
        # and so does a student trained by the semi-supervised recipe (train.semi) without a teacher
        if cfg.semi.on and dcfg.uses_teacher:
            raise ParamsError(f"students.{student}: train.semi (its own mean teacher) with distillation from the "
                              "teacher is not supported; to train the teacher semi-supervised set "
                              "teacher.train.semi.split (train.semi.split reaches every student), for a student its "
                              "own students.<name>.train.semi with its distill weights at 0")
        unlabelled = student_unlabelled(dcfg, cfg)
        train_splits = ["train", *unlabelled]
        model, info = model_for_data(model_cfg, processed, config["grid"], reads=(*train_splits, "val"))
        # the run's identity includes the distillation recipe (resume only the very same run); evaluate refuses
        # to score a model on sequences it trained on
        info = trained_on({**info, "distill": dict(distill_section), "student": student}, processed, train_splits)
        segmentation = SegmentationLoss.for_data(cfg.loss, processed)
        rarity = train_rarity(processed, dcfg.class_power)

        extras, targets, source, taught_on = None, None, "none", []
        if dcfg.uses_teacher and dcfg.mode == "cached":
            teacher_cache = TeacherCache(cache, processed, file_sha256(teacher))
            missing = sorted(set(train_splits) - set(teacher_cache.splits))
            if missing:
                raise ParamsError(f"{cache}: no teacher outputs for split(s) {missing} (cached: "
                                  f"{list(teacher_cache.splits)}); add them to cache.splits and run "
                                  "`dvc repro cache-logits`, or use distill.mode online")
            extras, targets = teacher_cache.extras(), cached_targets(teacher_cache)
            source = f"cache {cache} ({teacher_cache.codec}, {teacher_cache.feature_dim}-dim features)"
            taught_on = teacher_cache.manifest.get("teacher_train_sequences", [])
        elif dcfg.uses_teacher:
            teacher_model, record = load_model(teacher, device)
            check_hashes(record.get("data_hashes"), processed, str(teacher), "run `dvc repro teacher-train`")
            targets, source = online_targets(teacher_model), f"online teacher {teacher}"
            taught_on = record.get("train_sequences", [])
        # what its teacher saw counts as seen: evaluate's leak guard reads train_sequences
        info["train_sequences"] = sorted(set(info["train_sequences"]) | set(taught_on))
        loss, semi = PVKDLoss(dcfg, segmentation, rarity, model.grid.size, targets), None
        if cfg.semi.on:
            loss, semi = semi_supervised(cfg, model, segmentation)
        train_set = ScanDataset(data, train_splits, cfg.augment, cfg.seed, extras=extras, unlabelled=unlabelled,
                                bank=bank_for(cfg.augment, objects, processed))
        trainer = Trainer(
            model, loss.to(device).on_batch, train_set, ScanDataset(data, "val"),
            cfg, info, dist=dist, device=device, checkpoint_dir=checkpoints, live_dir=live, description=student,
            unlabelled_ratio=cfg.semi.ratio if semi else dcfg.unlabelled.ratio if unlabelled else 0, semi=semi,
        )
        if dist.is_main:
            un = dcfg.unlabelled
            scans = (describe_semi(cfg.semi, train_set) if semi else
                     f"plus {train_set.count(un.split)} unlabelled scans of {un.split!r} ({un.ratio} per labelled "
                     f"scan, {un.target} targets at weight {un.weight})" if unlabelled else "labelled scans only")
            console.print(
                f"{student}: {model_cfg['arch']} width {model_cfg['width']}, "
                f"{sum(q.numel() for q in model.parameters()) / 1e6:.2f} M parameters, grid "
                f"{'x'.join(map(str, model.grid.size))}; weights point {dcfg.point_weight}, voxel {dcfg.voxel_weight}, "
                f"affinity {dcfg.affinity_weight} {list(dcfg.affinity_terms)}; teacher: {source}; {scans}; "
                f"{dist.world_size} process(es) on {device}, {torch.get_num_threads()} threads each"
            )
        fit_and_export(trainer, cfg, out)
    finally:
        distributed.shutdown()
