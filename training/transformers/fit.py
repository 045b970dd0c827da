"""Fit a transformer to a pairs set by a recipe: closed-form maps in seconds, learned ones by
AdamW on ``alpha * (1 - cos) + beta * MSE (+ identity softmax)``, optionally with synthetic
(interpolated) pairs mixed in or as a pre-training stage.

Reproducible: the seed fixes initialisation, batch order, noise and synthetic pairs (on CPU).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from service.contracts import PairsSet
from service.errors import InvalidInput
from service.evaluation.protocol import MappedRows, map_rows
from training.transformers.closed_form import procrustes_map, ridge_map
from training.transformers.data import TrainingPairs, normalized_pairs
from training.transformers.learned import EpochCallback, fit_learned, identity_balance_weights
from training.transformers.models import ScaledAroundMean, build_model, linear_part
from training.transformers.recipes import Recipe, get_recipe

# One intra-op thread: these models are tiny, and on a busy shared CPU two OpenMP threads spin
# at every barrier (measured 12-15x slower per step than one thread under load).
TORCH_THREADS = 1


@dataclass
class FittedTransformer:
    """A fitted mapping network (torch, eval mode) and how it was made.

    Two-way (``fusion_weight`` < 1): ``backward`` maps old-model vectors into the new space
    (service.fusion); ``module`` is always the forward map new -> old.
    """

    module: nn.Module
    recipe: Recipe
    input_dim: int
    output_dim: int
    seed: int = 0
    device: str = "cpu"
    fit_seconds: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)
    backward: nn.Module | None = None
    fusion_weight: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 < self.fusion_weight <= 1.0:
            raise InvalidInput(f"fusion_weight must lie in (0, 1], got {self.fusion_weight}")
        if (self.backward is None) != (self.fusion_weight == 1.0):
            raise InvalidInput("a backward map goes with fusion_weight < 1 and only with it")

    @property
    def two_way(self) -> bool:
        return self.backward is not None

    def transform(self, new: np.ndarray, *, batch_size: int = 8192) -> np.ndarray:
        """Map L2-normalised new-model vectors [n, d_new] -> old space [n, d_old] (unnormalised,
        exactly what the exported ONNX returns; the consumer normalises)."""
        return _run(
            self.module,
            new,
            d_in=self.input_dim,
            d_out=self.output_dim,
            device=self.device,
            batch_size=batch_size,
            what="new-model",
        )

    def transform_gallery(self, old: np.ndarray, *, batch_size: int = 8192) -> np.ndarray:
        """The backward map: L2-normalised old-model vectors [n, d_old] -> new space
        [n, d_new] (unnormalised, = the ONNX's ``gallery_new_embedding``). Two-way only."""
        if self.backward is None:
            raise InvalidInput(f"recipe {self.recipe.name!r} has no backward map (one-way)")
        return _run(
            self.backward,
            old,
            d_in=self.output_dim,
            d_out=self.input_dim,
            device=self.device,
            batch_size=batch_size,
            what="old-model",
        )

    def map_rows(self, pairs: PairsSet, *, flip: bool = True) -> MappedRows:
        """Both maps over an evaluated pairs set, as the service scores it (see
        :func:`service.evaluation.protocol.map_rows`): flip-averaged queries when ``pairs``
        carries ``new_flip`` (unless ``flip=False``), the backward map when two-way."""
        return map_rows(
            pairs,
            forward=self.transform,
            backward=self.transform_gallery if self.two_way else None,
            fusion_weight=self.fusion_weight,
            flip=flip,
        )


def _run(
    module: nn.Module,
    vectors: np.ndarray,
    *,
    d_in: int,
    d_out: int,
    device: str,
    batch_size: int,
    what: str,
) -> np.ndarray:
    """A torch module over a float32 matrix in batches, no grad -> float32 [n, d_out]."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != d_in:
        raise InvalidInput(f"expected [n, {d_in}] {what} vectors, got {x.shape}")
    module.eval()
    out = []
    with torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            chunk = torch.from_numpy(x[start : start + batch_size]).to(device)
            out.append(module(chunk).cpu().numpy())
    if not out:
        return np.zeros((0, d_out), dtype=np.float32)
    return np.concatenate(out).astype(np.float32, copy=False)


def _check_device(device: str) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInput(
            "device 'cuda' requested but CUDA is not available here; use --device cpu"
        )
    if dev.type not in ("cpu", "cuda"):
        raise InvalidInput(f"unsupported device {device!r}; use cpu or cuda")
    return dev


def _closed_form(recipe: Recipe, train: TrainingPairs) -> tuple[np.ndarray, np.ndarray]:
    if recipe.init == "procrustes" or recipe.model == "procrustes":
        return procrustes_map(train.new, train.old)
    weights = identity_balance_weights(train.label, recipe.balance) if recipe.balance else None
    return ridge_map(train.new, train.old, lam=recipe.ridge_lambda, sample_weight=weights)


def _fit_backward(recipe: Recipe, train: TrainingPairs, dev: torch.device) -> nn.Module:
    """The backward map old -> new: closed-form ridge on the (real) training pairs, output
    re-inflated around the new-space training mean by ``backward_scale``."""
    weight, bias = ridge_map(train.old, train.new, lam=recipe.backward_lambda)
    model = build_model("ridge", d_new=train.old_dim, d_old=train.new_dim)
    linear_part(model).set_weights(weight, bias)  # type: ignore[union-attr]
    if recipe.backward_scale != 1.0:
        model = ScaledAroundMean(model, mean=train.new.mean(axis=0), scale=recipe.backward_scale)
    return model.to(dev).eval()


@torch.no_grad()
def _rescale_output(
    model: nn.Module, train: TrainingPairs, scale: float, dev: torch.device
) -> nn.Module:
    """Wrap in :class:`ScaledAroundMean`; scale 0 = moment matching on the training pairs."""
    mean = train.old.mean(axis=0)
    if scale == 0.0:
        pred = model(torch.from_numpy(train.new).to(dev)).cpu().numpy()
        target_rms = np.sqrt(((train.old - mean) ** 2).sum(axis=1).mean())
        pred_rms = np.sqrt(((pred - mean) ** 2).sum(axis=1).mean())
        scale = float(target_rms / max(pred_rms, 1e-12))
    return ScaledAroundMean(model, mean=mean, scale=scale).to(dev).eval()


def fit_normalized(
    *,
    train: TrainingPairs,
    recipe: Recipe,
    device: str = "cpu",
    seed: int = 0,
    progress: bool = True,
    threads: int = TORCH_THREADS,
    on_epoch: EpochCallback | None = None,
) -> FittedTransformer:
    """Fit on already-normalised training pairs (see :func:`normalized_pairs`)."""
    dev = _check_device(device)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _fit(
            train=train, recipe=recipe, dev=dev, seed=seed, progress=progress, on_epoch=on_epoch
        )
    finally:
        torch.set_num_threads(previous_threads)


def _fit(
    *,
    train: TrainingPairs,
    recipe: Recipe,
    dev: torch.device,
    seed: int,
    progress: bool,
    on_epoch: EpochCallback | None,
) -> FittedTransformer:
    torch.manual_seed(seed)
    started = time.perf_counter()
    model = build_model(
        recipe.model,
        d_new=train.new_dim,
        d_old=train.old_dim,
        hidden=recipe.hidden,
        depth=recipe.depth,
        dropout=recipe.dropout,
        channels=recipe.channels,
    )
    history: list[dict[str, float]] = []
    if recipe.closed_form:
        if recipe.model != "identity":
            weight, bias = _closed_form(recipe, train)
            linear_part(model).set_weights(weight, bias)  # type: ignore[union-attr]
        model.to(dev)  # transform() feeds the fitted device (the default is closed-form)
    else:
        if recipe.init != "none":
            target = linear_part(model)
            if target is None:
                raise InvalidInput(
                    f"recipe {recipe.name!r}: model {recipe.model} has no linear part"
                )
            target.set_weights(*_closed_form(recipe, train))
        model = fit_learned(
            model.to(dev),
            train=train,
            recipe=recipe,
            dev=dev,
            seed=seed,
            history=history,
            progress=progress,
            on_epoch=on_epoch,
        )
    model.eval()
    if recipe.output_scale != 1.0 and recipe.model != "identity":
        model = _rescale_output(model, train, recipe.output_scale, dev)
    backward = _fit_backward(recipe, train, dev) if recipe.two_way else None
    return FittedTransformer(
        module=model,
        recipe=recipe,
        input_dim=train.new_dim,
        output_dim=train.old_dim,
        seed=seed,
        device=str(dev),
        fit_seconds=time.perf_counter() - started,
        history=history,
        backward=backward,
        fusion_weight=recipe.fusion_weight,
    )


def fit_transformer(
    *,
    pairs: PairsSet,
    recipe: Recipe | str = "default",
    device: str = "cpu",
    seed: int = 0,
    progress: bool = True,
    threads: int = TORCH_THREADS,
) -> FittedTransformer:
    """Fit on every row of ``pairs`` (select the split first). Normalises both sides once."""
    resolved = get_recipe(recipe) if isinstance(recipe, str) else recipe
    return fit_normalized(
        train=normalized_pairs(pairs),
        recipe=resolved,
        device=device,
        seed=seed,
        progress=progress,
        threads=threads,
    )


def describe(fitted: FittedTransformer) -> dict[str, Any]:
    """A small JSON-able summary for reports."""
    params = sum(p.numel() for p in fitted.module.parameters())
    backward = (
        0 if fitted.backward is None else sum(p.numel() for p in fitted.backward.parameters())
    )
    return {
        "recipe": fitted.recipe.name,
        "model": fitted.recipe.model,
        "parameters": int(params),
        "two_way": fitted.two_way,
        "fusion_weight": fitted.fusion_weight,
        "backward_parameters": int(backward),
        "fit_seconds": round(fitted.fit_seconds, 3),
        "seed": fitted.seed,
        "device": fitted.device,
    }
