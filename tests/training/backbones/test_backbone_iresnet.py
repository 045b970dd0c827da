"""iResNet shapes and sizes (published arcface_torch parameter counts)."""

from __future__ import annotations

import pytest
import torch

from service.errors import InvalidInput
from training.backbones.iresnet import get_model


def test_r18_forward_shape_and_gradient() -> None:
    model = get_model("r18", width=4).train()
    x = torch.randn(2, 3, 112, 112, requires_grad=True)
    y = model(x)
    assert y.shape == (2, 512)
    y.pow(2).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert model.features.weight.grad is None  # the feature BN's scale is fixed


def test_r50_forward_shape() -> None:
    # Full width is covered by the parameter count below; a forward at width 16 is 16x cheaper.
    model = get_model("r50", width=16).eval()
    with torch.no_grad():
        y = model(torch.randn(1, 3, 112, 112))
    assert y.shape == (1, 512) and torch.isfinite(y).all()


@pytest.mark.parametrize(("arch", "millions"), [("r18", 24.0), ("r50", 43.6)])
def test_parameter_counts_match_the_published_models(arch: str, millions: float) -> None:
    model = get_model(arch)
    count = sum(p.numel() for p in model.parameters()) / 1e6
    assert count == pytest.approx(millions, abs=0.1)


def test_other_sizes_and_dims() -> None:
    model = get_model("r18", width=4, embedding_dim=32, input_size=64).eval()
    with torch.no_grad():
        assert model(torch.randn(3, 3, 64, 64)).shape == (3, 32)


def test_unknown_arch() -> None:
    with pytest.raises(InvalidInput, match="unknown backbone arch"):
        get_model("r7")
