"""The training engine shared by the teacher and the student stages.

* :mod:`.config` the ``train`` section of params.yaml as validated dataclasses;
* :mod:`.data` the scans of the shards as batches (dataset, collation, the samplers of a run);
* :mod:`.augment` Cylinder3D's augmentation;
* :mod:`.losses` cross-entropy and Lovász-softmax on voxels, cross-entropy on points;
* :mod:`.engine` the loop: optimizer, schedule, AMP, validation, checkpoints, resuming;
* :mod:`.checkpoint` model records and training states, written whole;
* :mod:`.distributed` processes, devices, DDP under torchrun;
* :mod:`.tracking` dvclive metrics and plots, the progress bar.

A stage uses it in a few lines (``stages/teacher_train.py``)::

    info, device = distributed.setup(cfg)
    model, record_info = model_for_data(model_section, ProcessedData(root))
    loss = SegmentationLoss(cfg.loss, num_classes).to(device)
    result = Trainer(model, loss.on_batch, ScanDataset(root, "train", cfg.augment, cfg.seed),
                     ScanDataset(root, "val"), cfg, record_info, dist=info, device=device).fit()
"""
