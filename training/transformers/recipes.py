"""Named fitting recipes: a typed config (frozen dataclass), loadable from TOML/YAML as
``base`` (a registered recipe name) + overrides.

```toml
[recipe]            # the table is optional; top-level keys work too
base = "mlp"
name = "my-mlp"
epochs = 60
interpolation = "sorted"
interpolation_rate = 0.25
```
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from service.errors import InvalidInput
from training.config_files import read_config_mapping
from training.transformers.interpolation import INTERPOLATION_METHODS, MAX_RATE

MODEL_NAMES = ("identity", "ridge", "procrustes", "fc", "mlp", "msresnet", "rbt")
CLOSED_FORM_MODELS = ("identity", "ridge", "procrustes")
INIT_CHOICES = ("none", "ridge", "procrustes")
SCHEDULES = ("mixed", "pretrain")


@dataclass(frozen=True)
class Recipe:
    """Everything that decides a fit (besides data, seed and device)."""

    name: str
    model: str = "fc"
    # model shape
    hidden: int = 512
    depth: int = 2
    dropout: float = 0.0
    channels: int = 16
    init: str = "none"  # start the linear part from a closed-form map
    ridge_lambda: float = 1e-2
    # after fitting: mean + output_scale * (f(x) - mean); 1 = off, 0 = "auto" (moment matching:
    # mapped residuals get the training targets' RMS distance from their mean)
    output_scale: float = 1.0
    # two-way scoring (service.fusion): also fit a backward map old -> new (closed-form ridge,
    # lambda backward_lambda, output re-inflated x backward_scale around the new-space mean) and
    # score w * <f(q), g> + (1 - w) * <q, h(g)>, w = fusion_weight; 1 = forward map only
    fusion_weight: float = 1.0
    backward_lambda: float = 1e-2
    backward_scale: float = 1.3
    # loss: cos_weight * (1 - cos) + mse_weight * MSE + id_weight * identity softmax
    cos_weight: float = 1.0
    mse_weight: float = 0.1
    id_weight: float = 0.0
    id_temperature: float = 0.05
    id_margin: float = 0.0
    contrast_weight: float = 0.0  # in-batch contrastive vs old-space vectors
    contrast_temperature: float = 0.05
    # optimisation (AdamW, cosine decay, last-epoch weights unless ema > 0)
    epochs: int = 40
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-4
    balance: float = (
        0.0  # rows drawn with probability ~ count(identity) ** -balance (1 = equal ids)
    )
    input_noise: float = 0.0  # std of Gaussian noise added to new-space inputs while training
    ema: float = 0.0  # exponential moving average of weights (0 = off), e.g. 0.99
    # synthetic pairs
    interpolation: str = "none"
    interpolation_rate: float = 0.0
    interpolation_schedule: str = "mixed"  # "mixed" = study's full-data; "pretrain" = 2 stages
    pretrain_epochs: int = 20
    description: str = ""

    def __post_init__(self) -> None:
        checks = [
            (self.model in MODEL_NAMES, f"model must be one of {MODEL_NAMES}"),
            (self.init in INIT_CHOICES, f"init must be one of {INIT_CHOICES}"),
            (
                self.interpolation in INTERPOLATION_METHODS,
                f"interpolation: {INTERPOLATION_METHODS}",
            ),
            (self.interpolation_schedule in SCHEDULES, f"interpolation_schedule: {SCHEDULES}"),
            (0.0 <= self.interpolation_rate <= MAX_RATE, f"interpolation_rate in [0, {MAX_RATE}]"),
            (self.epochs >= 0 and self.pretrain_epochs >= 0, "epochs must be >= 0"),
            (self.batch_size >= 2, "batch_size must be >= 2"),
            (self.id_temperature > 0, "id_temperature must be > 0"),
            (self.contrast_temperature > 0, "contrast_temperature must be > 0"),
            (0.0 <= self.ema < 1.0, "ema must be in [0, 1)"),
            (0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)"),
            (0.0 <= self.balance <= 1.0, "balance must be in [0, 1]"),
            (self.output_scale >= 0.0, "output_scale must be >= 0 (0 = auto)"),
            (0.0 < self.fusion_weight <= 1.0, "fusion_weight must be in (0, 1] (1 = forward only)"),
            (self.backward_lambda >= 0.0, "backward_lambda must be >= 0"),
            (self.backward_scale > 0.0, "backward_scale must be > 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise InvalidInput(f"recipe {self.name!r}: {message}")

    @property
    def closed_form(self) -> bool:
        return self.model in CLOSED_FORM_MODELS

    @property
    def two_way(self) -> bool:
        """A backward map is fitted too and scores are fused (``fusion_weight`` < 1)."""
        return self.fusion_weight < 1.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **overrides: Any) -> Recipe:
        return recipe_from_dict({**self.to_dict(), **overrides})


def _study(name: str, description: str, **kw: Any) -> Recipe:
    # The study's setting: FC, alpha >> beta, plain cosine + MSE, no identity term.
    base: dict[str, Any] = {
        "model": "fc",
        "cos_weight": 1.0,
        "mse_weight": 0.1,
        "epochs": 40,
        "lr": 1e-3,
    }
    base.update(kw)
    return Recipe(name=name, description=description, **base)


_REGISTERED: tuple[Recipe, ...] = (
    Recipe(name="identity", model="identity", description="new vector as is (equal dims only)"),
    Recipe(name="ridge", model="ridge", description="closed-form ridge regression"),
    Recipe(name="procrustes", model="procrustes", description="closed-form orthogonal Procrustes"),
    Recipe(
        name="ridge-scaled",
        model="ridge",
        output_scale=1.3,
        description="closed-form ridge, output re-inflated around the old mean (x1.3)",
    ),
    _study("fc", "single FC layer, alpha*(1-cos)+beta*MSE"),
    _study("study-fc", "study baseline: single FC, no interpolation"),
    _study("study-msresnet", "study: multi-scale 1-D conv ResNet", model="msresnet", depth=2),
    _study("study-mlp", "study: MLP, no interpolation", model="mlp", hidden=512, depth=2),
    _study(
        "study-linear-12",
        "study: FC + naive even/odd interpolation, 12%",
        interpolation="linear",
        interpolation_rate=0.12,
    ),
    *(
        _study(
            f"study-sorted-{pct}-{sched}",
            f"study: FC + sorted interpolation {pct}%, "
            + ("pre-train then real only" if sched == "pretrain" else "full data"),
            interpolation="sorted",
            interpolation_rate=pct / 100,
            interpolation_schedule=sched,
        )
        for pct in (25, 50)
        for sched in ("mixed", "pretrain")
    ),
    _study(
        "proximity-25-pretrain",
        "FC + proximity-paired interpolation 25%, pre-train then real only",
        interpolation="proximity",
        interpolation_rate=0.25,
        interpolation_schedule="pretrain",
    ),
    Recipe(name="mlp", model="mlp", init="ridge", description="residual MLP from a ridge start"),
    Recipe(name="msresnet", model="msresnet", depth=2, description="multi-scale 1-D conv ResNet"),
    Recipe(name="rbt", model="rbt", hidden=64, depth=3, init="procrustes", description="RBT"),
)

# The previous default (forward map only), kept for comparison.
_MLP_SCALED: Recipe = Recipe(
    name="mlp-scaled",
    model="mlp",
    init="ridge",
    hidden=256,
    depth=2,
    epochs=20,
    batch_size=256,
    lr=1e-3,
    cos_weight=1.0,
    mse_weight=0.1,
    output_scale=1.3,
    description="residual MLP from a ridge start, output re-inflated around the old mean (x1.3)",
)
_TWO_WAY = {"fusion_weight": 0.9, "backward_lambda": 1e-2, "backward_scale": 1.3}

RECIPES: dict[str, Recipe] = {r.name: r for r in _REGISTERED}
RECIPES[_MLP_SCALED.name] = _MLP_SCALED
RECIPES["two-way-mlp"] = dataclasses.replace(
    _MLP_SCALED,
    name="two-way-mlp",
    description="two-way: mlp-scaled new->old + ridge old->new (x1.3), fused score w=0.9",
    **_TWO_WAY,
)
# Chosen by 4-fold identity cross-validation on the BRIDGE split, 3 fold seeds
# (bench/recipe_cv.py); eval rows never tuned on. Figures in docs/training.md.
DEFAULT_RECIPE: Recipe = Recipe(
    name="default",
    model="ridge",
    ridge_lambda=1e-2,
    output_scale=1.0,
    description="two-way: ridge new->old + ridge old->new (x1.3), fused score w=0.9",
    **_TWO_WAY,
)
RECIPES["default"] = DEFAULT_RECIPE


def get_recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise InvalidInput(
            f"unknown recipe {name!r}; known: {', '.join(sorted(RECIPES))}"
        ) from None


def recipe_from_dict(config: dict[str, Any]) -> Recipe:
    """``{"base": NAME, **overrides}`` (or a full dict) -> Recipe. Unknown keys are an error."""
    data = (
        dict(config.get("recipe", config))
        if isinstance(config.get("recipe"), dict)
        else dict(config)
    )
    base_name = data.pop("base", None)
    base = get_recipe(str(base_name)).to_dict() if base_name else {}
    known = {f.name for f in fields(Recipe)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise InvalidInput(f"unknown recipe field(s): {', '.join(unknown)}")
    merged = {**base, **data}
    if "name" not in merged:
        raise InvalidInput("a recipe config needs 'name' or 'base'")
    if base_name and "name" not in data:
        merged["name"] = f"{base_name}+custom"
    return Recipe(**merged)


def load_recipe_file(path: str | Path) -> Recipe:
    """A recipe from a ``.toml`` or ``.yaml``/``.yml`` file (base + overrides)."""
    data = read_config_mapping(path, what="recipe config")
    return recipe_from_dict(data)
