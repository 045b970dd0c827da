"""The learned part of a fit: AdamW on ``alpha * (1 - cos) + beta * MSE (+ identity softmax)``
over the real pairs and the synthetic (interpolated) ones, in stages, with optional identity
balancing and weight averaging (:func:`fit_learned`)."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from service.vectors import l2_normalize
from training.transformers.data import TrainingPairs
from training.transformers.interpolation import make_synthetic
from training.transformers.losses import MappingLoss
from training.transformers.recipes import Recipe

EpochCallback = Callable[[int, nn.Module], dict[str, float]]


def identity_balance_weights(label: np.ndarray, power: float) -> np.ndarray:
    """Row weights ``count(identity) ** -power``, mean 1: a few identities with hundreds of
    images (LFW: George W Bush, 530) otherwise dominate the fit."""
    _, index, counts = np.unique(label, return_inverse=True, return_counts=True)
    weights = counts[index].astype(np.float64) ** -power
    return weights / weights.mean()


def _class_means(old: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(unit class means [C, d], per-row class index [n])."""
    classes, index = np.unique(label, return_inverse=True)
    sums = np.zeros((classes.size, old.shape[1]), dtype=np.float64)
    np.add.at(sums, index, old)
    return l2_normalize(sums), index.astype(np.int64)


class WeightAverage:
    """Exponential moving average of parameters and buffers (weight averaging)."""

    def __init__(self, module: nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = copy.deepcopy(module).eval()
        for p in self.shadow.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        for s, p in zip(
            self.shadow.state_dict().values(), module.state_dict().values(), strict=True
        ):
            if s.dtype.is_floating_point:
                s.mul_(self.decay).add_(p.detach(), alpha=1.0 - self.decay)
            else:
                s.copy_(p)


def train_stage(
    *,
    model: nn.Module,
    loss_fn: MappingLoss,
    x: torch.Tensor,
    y: torch.Tensor,
    idx: torch.Tensor,
    row_weight: torch.Tensor | None,
    recipe: Recipe,
    epochs: int,
    generator: torch.Generator,
    stage: str,
    history: list[dict[str, float]],
    averager: WeightAverage | None,
    progress: bool,
    on_epoch: EpochCallback | None,
) -> None:
    if epochs == 0:
        return
    from tqdm.auto import tqdm

    n = x.shape[0]
    batch = min(recipe.batch_size, n)
    steps_per_epoch = max(n // batch, 1)  # drop the ragged tail: BatchNorm needs > 1 row
    total_steps = steps_per_epoch * epochs
    warmup = min(steps_per_epoch, total_steps // 10)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay
    )

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(total_steps - warmup, 1)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    bar = tqdm(
        range(epochs), desc=f"fit {recipe.name} [{stage}]", disable=not progress, leave=False
    )
    for epoch in bar:
        model.train()
        if row_weight is None:
            perm = torch.randperm(n, generator=generator)
        else:
            perm = torch.multinomial(row_weight, n, replacement=True, generator=generator)
        perm = perm.to(x.device)
        sums: dict[str, float] = {}
        for step in range(steps_per_epoch):
            rows = perm[step * batch : (step + 1) * batch]
            xb = x[rows]
            if recipe.input_noise:
                noise = torch.randn(xb.shape, generator=generator).to(x.device)
                xb = xb + recipe.input_noise * noise
            terms = loss_fn(model(xb), y[rows], idx[rows])
            optimizer.zero_grad(set_to_none=True)
            terms["total"].backward()
            optimizer.step()
            scheduler.step()
            if averager is not None:
                averager.update(model)
            for key, value in terms.items():
                sums[key] = sums.get(key, 0.0) + float(value.detach())
        record = {"stage": stage, "epoch": epoch} | {
            k: v / steps_per_epoch for k, v in sums.items()
        }
        if on_epoch is not None:
            record |= on_epoch(epoch, averager.shadow if averager is not None else model)
        history.append(record)
        bar.set_postfix(loss=f"{record['total']:.4f}")


def _stages(recipe: Recipe, *, n_real: int, n_synthetic: int) -> list[tuple[str, slice, int]]:
    """(stage, rows, epochs): the real rows alone, everything mixed, or a pre-training stage on
    everything followed by the real rows (the rows are real first, synthetic after)."""
    if n_synthetic == 0:
        return [("real", slice(0, n_real), recipe.epochs)]
    if recipe.interpolation_schedule == "mixed":
        return [("mixed", slice(None), recipe.epochs)]
    return [
        ("pretrain", slice(None), recipe.pretrain_epochs),
        ("real", slice(0, n_real), recipe.epochs),
    ]


def fit_learned(
    model: nn.Module,
    *,
    train: TrainingPairs,
    recipe: Recipe,
    dev: torch.device,
    seed: int,
    history: list[dict[str, float]],
    progress: bool,
    on_epoch: EpochCallback | None,
) -> nn.Module:
    """The learned fit of ``model`` (on its device, initialised): AdamW on the recipe's loss over
    the real pairs and the synthetic (interpolated) ones, mixed or as a pre-training stage;
    the weight average when the recipe asks for it. Appends one record per epoch to
    ``history``."""
    synthetic = make_synthetic(
        train, method=recipe.interpolation, rate=recipe.interpolation_rate, seed=seed
    )
    everything = TrainingPairs(
        new=np.concatenate([train.new, synthetic.new]),
        old=np.concatenate([train.old, synthetic.old]),
        label=np.concatenate([train.label, synthetic.label]),
    )
    means, index = _class_means(everything.old, everything.label)
    loss_fn = MappingLoss(
        cos_weight=recipe.cos_weight,
        mse_weight=recipe.mse_weight,
        id_weight=recipe.id_weight,
        temperature=recipe.id_temperature,
        margin=recipe.id_margin,
        class_means=torch.from_numpy(means).to(dev),
        contrast_weight=recipe.contrast_weight,
        contrast_temperature=recipe.contrast_temperature,
    )
    generator = torch.Generator().manual_seed(seed)
    averager = WeightAverage(model, recipe.ema) if recipe.ema else None
    x_all = torch.from_numpy(everything.new).to(dev)
    y_all = torch.from_numpy(everything.old).to(dev)
    i_all = torch.from_numpy(index).to(dev)
    weights = None
    if recipe.balance:
        weights = torch.from_numpy(identity_balance_weights(everything.label, recipe.balance))
    for stage, rows, epochs in _stages(recipe, n_real=len(train), n_synthetic=len(synthetic)):
        train_stage(
            model=model,
            loss_fn=loss_fn,
            x=x_all[rows],
            y=y_all[rows],
            idx=i_all[rows],
            row_weight=None if weights is None else weights[rows],
            recipe=recipe,
            epochs=epochs,
            generator=generator,
            stage=stage,
            history=history,
            averager=averager,
            progress=progress,
            on_epoch=on_epoch,
        )
    return averager.shadow if averager is not None else model
