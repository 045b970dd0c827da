"""Train an iResNet backbone with an ArcFace head on an image folder or an InsightFace RecordIO set.

- Data: ``root/<identity>/<image>`` or ``train.rec`` + ``train.idx`` (+ ``property``), decoded by
  ``service.inference.images`` and preprocessed by ``service.inference.preprocess`` with the
  same manifest the export writes, so training and serving feed the network identically.
- Device is a parameter (``cpu``, ``cuda``, ``cuda:N``). Launched under ``torchrun`` (``WORLD_SIZE``
  > 1 in the environment) the run uses DistributedDataParallel; the process group is created
  here, inside the call, never at import.
- Checkpoints: ``<output>/checkpoint.safetensors`` after every epoch (and at ``max_steps``);
  a run over the same output directory resumes from it. ``<output>/backbone.safetensors`` holds
  the final backbone alone; ``<output>/metrics.jsonl`` one line per epoch.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler
from tqdm import tqdm

from service.errors import ContractError, InvalidInput
from training.backbones.arcface import BackboneWithHead
from training.backbones.checkpoint import (
    BACKBONE_PREFIX,
    HEAD_PREFIX,
    Progress,
    read_checkpoint,
    restore_optimizer,
    save_checkpoint,
)
from training.backbones.config import TrainConfig
from training.backbones.dataset import (
    FaceDataset,
    LabelledImages,
    backbone_manifest,
    open_training_data,
)
from training.backbones.distributed import DistEnv, detect_distributed, resolve_device

CHECKPOINT_NAME = "checkpoint.safetensors"
BACKBONE_NAME = "backbone.safetensors"
METRICS_NAME = "metrics.jsonl"


def lr_factor(step: int, *, total_steps: int, warmup_steps: int, power: float) -> float:
    """Linear warm-up, then polynomial decay to 0 at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    done = min(1.0, (step - warmup_steps) / span)
    return (1.0 - done) ** power


def _make_optimizer(module: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in module.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


@dataclass
class TrainResult:
    output: Path
    checkpoint: Path
    backbone: Path
    epochs_done: int
    steps: int
    num_classes: int
    num_images: int
    rank: int = 0  # 0 in a plain run; under torchrun only rank 0 writes files
    losses: list[float] = field(default_factory=list)  # per step, this process
    epoch_metrics: list[dict[str, float]] = field(default_factory=list)


def train_backbone(
    *,
    data: str | Path,
    output: str | Path,
    config: TrainConfig,
    device: str = "cpu",
    progress: bool = True,
    resume: bool = True,
) -> TrainResult:
    """Train (or resume) a backbone; returns where things were written and the loss curve."""
    out = Path(output)
    dist = detect_distributed()
    dev = resolve_device(device, dist)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed + dist.rank)

    source = open_training_data(data, min_images_per_class=config.min_images_per_class)
    if len(source) < 2:
        raise ContractError(f"{data}: need at least 2 images to train, found {len(source)}")
    model_id = config.model_id or f"iresnet-{config.arch}-{out.name}"
    manifest = backbone_manifest(
        model_id=model_id,
        file="backbone.onnx",
        input_size=config.input_size,
        output_dim=config.embedding_dim,
    )
    dataset = FaceDataset(source, manifest=manifest, flip=config.flip)
    # BatchNorm needs > 1 sample per batch: never a ragged last batch, never a batch > the data.
    batch_size = min(config.batch_size, len(dataset) // dist.world_size)
    if batch_size < 2:
        raise ContractError(
            f"{data}: {len(dataset)} images are too few for {dist.world_size} process(es)"
        )

    process_group_started = False
    if dist.enabled and not torch.distributed.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        torch.distributed.init_process_group(backend=backend)
        process_group_started = True
    try:
        return _run(
            source=source,
            dataset=dataset,
            out=out,
            config=config,
            dev=dev,
            dist=dist,
            batch_size=batch_size,
            show_progress=progress,
            resume=resume,
        )
    finally:
        if process_group_started:
            torch.distributed.destroy_process_group()


@dataclass
class _Training:
    """One run's moving parts: the module (backbone + head), what trains it, where it writes."""

    module: BackboneWithHead
    train_module: nn.Module  # the module, or its DistributedDataParallel wrapper
    optimizer: torch.optim.Optimizer
    loader: DataLoader
    sampler: DistributedSampler | RandomSampler
    generator: torch.Generator
    config: TrainConfig
    dev: torch.device
    dist: DistEnv
    total_steps: int
    warmup_steps: int


def _resume(
    path: Path,
    *,
    config: TrainConfig,
    num_classes: int,
    module: BackboneWithHead,
    optimizer: torch.optim.Optimizer,
) -> Progress:
    """Load ``path`` (a checkpoint of this run) into the module and optimizer; its progress."""
    ckpt = read_checkpoint(path)
    if ckpt.config is not None and ckpt.config.arch != config.arch:
        raise InvalidInput(f"{path} is a {ckpt.config.arch} run, not {config.arch}")
    if ckpt.num_classes is not None and ckpt.num_classes != num_classes:
        raise ContractError(
            f"{path} was trained on {ckpt.num_classes} classes; the data has {num_classes}"
        )
    try:
        module.backbone.load_state_dict(ckpt.section(BACKBONE_PREFIX))
        module.head.load_state_dict(ckpt.section(HEAD_PREFIX))
    except RuntimeError as exc:
        raise ContractError(f"{path} does not fit this config: {exc}") from exc
    restore_optimizer(optimizer, ckpt)
    return ckpt.progress


def _training(
    module: BackboneWithHead,
    optimizer: torch.optim.Optimizer,
    *,
    dataset: FaceDataset,
    config: TrainConfig,
    dev: torch.device,
    dist: DistEnv,
    batch_size: int,
) -> _Training:
    """The (DDP-wrapped) module, the sampler and loader, and the step budget."""
    train_module: nn.Module = module
    if dist.enabled:
        train_module = nn.parallel.DistributedDataParallel(
            module, device_ids=[dev.index] if dev.type == "cuda" else None
        )
    generator = torch.Generator().manual_seed(config.seed)
    sampler = (
        DistributedSampler(dataset, shuffle=True, seed=config.seed, drop_last=True)
        if dist.enabled
        else RandomSampler(dataset, generator=generator)
    )
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=config.num_workers,
        drop_last=True,
        pin_memory=dev.type == "cuda",
        persistent_workers=False,
    )
    steps_per_epoch = len(loader)
    total_steps = steps_per_epoch * config.epochs
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    return _Training(
        module=module,
        train_module=train_module,
        optimizer=optimizer,
        loader=loader,
        sampler=sampler,
        generator=generator,
        config=config,
        dev=dev,
        dist=dist,
        total_steps=total_steps,
        warmup_steps=round(config.warmup_epochs * steps_per_epoch),
    )


def _seed_epoch(run: _Training, epoch: int) -> None:
    """Every random stream restarts from (seed, epoch, rank): a resumed run repeats exactly
    what an uninterrupted one would have done (order, flips, dropout, worker seeds)."""
    seed = int(np.random.SeedSequence([run.config.seed, epoch, run.dist.rank]).generate_state(1)[0])
    torch.manual_seed(seed)
    if isinstance(run.sampler, DistributedSampler):
        run.sampler.set_epoch(epoch)
    else:
        run.generator.manual_seed(seed)


def _train_epoch(
    run: _Training, *, epoch: int, step: int, result: TrainResult, show_progress: bool
) -> tuple[int, dict[str, float], bool]:
    """One epoch (or what is left of the step budget): (step after, its record, finished)."""
    config = run.config
    _seed_epoch(run, epoch)
    run.train_module.train()
    started = time.perf_counter()
    loss_sum, acc_sum, seen = 0.0, 0.0, 0
    bar = tqdm(
        run.loader,
        desc=f"epoch {epoch + 1}/{config.epochs}",
        disable=not (show_progress and run.dist.is_main),
        leave=False,
    )
    for images, labels in bar:
        if step >= run.total_steps:
            break
        factor = lr_factor(
            step, total_steps=run.total_steps, warmup_steps=run.warmup_steps, power=config.lr_power
        )
        for group in run.optimizer.param_groups:
            group["lr"] = config.lr * factor
        loss, accuracy = run.train_module(
            images.to(run.dev, non_blocking=True), labels.to(run.dev, non_blocking=True)
        )
        if not torch.isfinite(loss):
            raise ContractError(f"loss became {loss.item()} at step {step}; lower the lr")
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # Guards the first steps of a fresh deep model from a single huge update.
        nn.utils.clip_grad_norm_(run.module.parameters(), max_norm=5.0)
        run.optimizer.step()
        step += 1
        value = float(loss.detach())
        result.losses.append(value)
        loss_sum, acc_sum, seen = loss_sum + value, acc_sum + float(accuracy), seen + 1
        if step % config.log_every == 0:
            bar.set_postfix(loss=f"{value:.3f}", lr=f"{config.lr * factor:.2e}")
    bar.close()
    record = {
        "epoch": epoch + 1,
        "steps": step,
        "loss": loss_sum / max(seen, 1),
        "accuracy": acc_sum / max(seen, 1),
        "lr": run.optimizer.param_groups[0]["lr"],
        "seconds": time.perf_counter() - started,
    }
    return step, record, seen == len(run.loader)


def _run(
    *,
    source: LabelledImages,
    dataset: FaceDataset,
    out: Path,
    config: TrainConfig,
    dev: torch.device,
    dist: DistEnv,
    batch_size: int,
    show_progress: bool,
    resume: bool,
) -> TrainResult:
    num_classes = int(source.num_classes)
    module = BackboneWithHead.for_config(config, num_classes=num_classes).to(dev)
    optimizer = _make_optimizer(module, config)
    checkpoint_path = out / CHECKPOINT_NAME
    start = Progress()
    if resume and checkpoint_path.is_file():
        start = _resume(
            checkpoint_path,
            config=config,
            num_classes=num_classes,
            module=module,
            optimizer=optimizer,
        )
    run = _training(
        module, optimizer, dataset=dataset, config=config, dev=dev, dist=dist, batch_size=batch_size
    )
    result = TrainResult(
        output=out,
        checkpoint=checkpoint_path,
        backbone=out / BACKBONE_NAME,
        epochs_done=start.epochs_done,
        steps=start.step,
        num_classes=num_classes,
        num_images=len(dataset),
        rank=dist.rank,
    )
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        if start.step == 0:
            (out / METRICS_NAME).unlink(missing_ok=True)  # a fresh run starts a fresh log
    step = start.step
    for epoch in range(start.epochs_done, config.epochs):
        if step >= run.total_steps:
            break
        step, record, finished_epoch = _train_epoch(
            run, epoch=epoch, step=step, result=result, show_progress=show_progress
        )
        epochs_done = epoch + 1 if finished_epoch else epoch
        result.epoch_metrics.append(record)
        result.epochs_done, result.steps = epochs_done, step
        if dist.is_main:
            with (out / METRICS_NAME).open("a") as f:
                f.write(json.dumps(record) + "\n")
            save_checkpoint(
                checkpoint_path,
                backbone=module.backbone,
                head=module.head,
                optimizer=optimizer,
                config=config,
                progress=Progress(epochs_done=epochs_done, step=step),
                num_classes=num_classes,
            )
        if not finished_epoch:
            break
    if dist.is_main:
        save_checkpoint(
            result.backbone,
            backbone=module.backbone,
            config=config,
            progress=Progress(epochs_done=result.epochs_done, step=step),
        )
    if dist.enabled:
        torch.distributed.barrier()
    return result
