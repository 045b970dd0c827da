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
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler
from tqdm import tqdm

from service.contracts import BackboneManifest
from service.errors import ContractError, InvalidInput
from service.inference.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, decode_image
from service.inference.preprocess import preprocess
from training.backbones.arcface import ArcFaceHead
from training.backbones.checkpoint import (
    BACKBONE_PREFIX,
    HEAD_PREFIX,
    Progress,
    read_checkpoint,
    restore_optimizer,
    save_checkpoint,
)
from training.backbones.config import TrainConfig
from training.backbones.iresnet import IResNet, backbone_from_config
from training.data.imagefolder import ImageFolder
from training.data.recordio import InsightFaceRecordSet, is_record_set

CHECKPOINT_NAME = "checkpoint.safetensors"
BACKBONE_NAME = "backbone.safetensors"
METRICS_NAME = "metrics.jsonl"
INPUT_NAME = "input"
OUTPUT_NAME = "embedding"


class LabelledImages(Protocol):
    num_classes: int

    def __len__(self) -> int: ...

    def __getitem__(self, i: int) -> tuple[bytes, int]: ...


def backbone_manifest(
    *, model_id: str, file: str, input_size: int, output_dim: int
) -> BackboneManifest:
    """How an iResNet is fed: the same object drives training input and the exported JSON."""
    return BackboneManifest(
        model_id=model_id,
        file=file,
        input_name=INPUT_NAME,
        output_name=OUTPUT_NAME,
        layout="NCHW",
        input_size=(input_size, input_size),
        color="RGB",
        mean=127.5,
        std=127.5,
        output_dim=output_dim,
        output_normalized=False,
    )


def open_training_data(path: str | Path, *, min_images_per_class: int = 1) -> LabelledImages:
    """An InsightFace RecordIO set (directory with ``train.rec`` or a ``.rec`` file) or a folder."""
    p = Path(path)
    if not p.exists():
        raise InvalidInput(f"training data not found: {p}")
    if is_record_set(p):
        return InsightFaceRecordSet(p)
    return ImageFolder.scan(p, min_images_per_class=min_images_per_class)


class FaceDataset(Dataset):
    """Encoded images -> (float32 [3, H, W] tensor, class id), with a random horizontal flip."""

    def __init__(self, source: LabelledImages, *, manifest: BackboneManifest, flip: float) -> None:
        self.source = source
        self.manifest = manifest
        self.flip = flip

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        data, label = self.source[i]
        image = decode_image(data, max_bytes=DEFAULT_MAX_BYTES, max_pixels=DEFAULT_MAX_PIXELS)
        # torch's generator is seeded per DataLoader worker, so flips are reproducible.
        if self.flip > 0 and float(torch.rand(())) < self.flip:
            image = image[:, ::-1]
        x = preprocess(np.ascontiguousarray(image)[None], manifest=self.manifest)[0]
        return torch.from_numpy(x), int(label)


class BackboneWithHead(nn.Module):
    """One module for DDP: returns (loss, accuracy).

    With ``amp`` the backbone runs under bfloat16 autocast; the ArcFace head always runs in
    float32 (its margin arithmetic near cos = +-1 needs the precision).
    """

    def __init__(self, backbone: IResNet, head: ArcFaceHead, *, amp: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.amp = amp

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(device_type=images.device.type, dtype=torch.bfloat16, enabled=self.amp):
            embeddings = self.backbone(images)
        terms = self.head(embeddings.float(), labels)
        return terms.loss, terms.accuracy


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def detect_distributed() -> DistEnv:
    """torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; a plain run has none of them."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistEnv()
    return DistEnv(
        rank=int(os.environ.get("RANK", "0")),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        world_size=world,
    )


def resolve_device(device: str, dist: DistEnv) -> torch.device:
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InvalidInput(f"device {device!r} asked for, but CUDA is not available here")
        if dist.enabled:
            return torch.device("cuda", dist.local_rank)
        return torch.device(device)
    if device != "cpu":
        raise InvalidInput(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    return torch.device("cpu")


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
    backbone = backbone_from_config(config)
    head = ArcFaceHead(
        embedding_dim=config.embedding_dim,
        num_classes=num_classes,
        scale=config.scale,
        margin=config.margin,
        easy_margin=config.easy_margin,
    )
    module = BackboneWithHead(backbone, head, amp=config.amp).to(dev)
    optimizer = _make_optimizer(module, config)

    checkpoint_path = out / CHECKPOINT_NAME
    start = Progress()
    if resume and checkpoint_path.is_file():
        ckpt = read_checkpoint(checkpoint_path)
        if ckpt.config is not None and ckpt.config.arch != config.arch:
            raise InvalidInput(f"{checkpoint_path} is a {ckpt.config.arch} run, not {config.arch}")
        if ckpt.num_classes is not None and ckpt.num_classes != num_classes:
            raise ContractError(
                f"{checkpoint_path} was trained on {ckpt.num_classes} classes; "
                f"the data has {num_classes}"
            )
        try:
            backbone.load_state_dict(ckpt.section(BACKBONE_PREFIX))
            head.load_state_dict(ckpt.section(HEAD_PREFIX))
        except RuntimeError as exc:
            raise ContractError(f"{checkpoint_path} does not fit this config: {exc}") from exc
        restore_optimizer(optimizer, ckpt)
        start = ckpt.progress

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
    warmup_steps = round(config.warmup_epochs * steps_per_epoch)

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
        if step >= total_steps:
            break
        # Every random stream restarts from (seed, epoch, rank): a resumed run repeats exactly
        # what an uninterrupted one would have done (order, flips, dropout, worker seeds).
        epoch_seed = int(
            np.random.SeedSequence([config.seed, epoch, dist.rank]).generate_state(1)[0]
        )
        torch.manual_seed(epoch_seed)
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(epoch)
        else:
            generator.manual_seed(epoch_seed)
        train_module.train()
        started = time.perf_counter()
        loss_sum, acc_sum, seen = 0.0, 0.0, 0
        bar = tqdm(
            loader,
            desc=f"epoch {epoch + 1}/{config.epochs}",
            disable=not (show_progress and dist.is_main),
            leave=False,
        )
        for images, labels in bar:
            if step >= total_steps:
                break
            factor = lr_factor(
                step, total_steps=total_steps, warmup_steps=warmup_steps, power=config.lr_power
            )
            for group in optimizer.param_groups:
                group["lr"] = config.lr * factor
            images = images.to(dev, non_blocking=True)
            labels = labels.to(dev, non_blocking=True)
            loss, accuracy = train_module(images, labels)
            if not torch.isfinite(loss):
                raise ContractError(f"loss became {loss.item()} at step {step}; lower the lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            # Guards the first steps of a fresh deep model from a single huge update.
            nn.utils.clip_grad_norm_(module.parameters(), max_norm=5.0)
            optimizer.step()
            step += 1
            value = float(loss.detach())
            result.losses.append(value)
            loss_sum += value
            acc_sum += float(accuracy)
            seen += 1
            if step % config.log_every == 0:
                bar.set_postfix(loss=f"{value:.3f}", lr=f"{config.lr * factor:.2e}")
        bar.close()
        finished_epoch = seen == steps_per_epoch
        epochs_done = epoch + 1 if finished_epoch else epoch
        record = {
            "epoch": epoch + 1,
            "steps": step,
            "loss": loss_sum / max(seen, 1),
            "accuracy": acc_sum / max(seen, 1),
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": time.perf_counter() - started,
        }
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
