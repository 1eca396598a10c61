"""research.linear: the oneDNN kernels agree with ATen's on values and on all three gradients, and `accelerate`
changes kernels only (parameters, state dict, vmap and float64 behave as before)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchrl.modules import MLP

import research.linear as linear_module
from research.linear import FastLinear, accelerate, linear, onednn_pays

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")
ACT = {"none": lambda y: y, "relu": torch.relu, "tanh": torch.tanh}


def _reference(x, weight, bias, activation):
    return ACT[activation](F.linear(x, weight, bias))


@pytest.fixture
def always_onednn(monkeypatch):
    """Every product with all dimensions >= 3 goes to oneDNN."""
    for name in ("MIN_MACS", "MIN_MACS_WEIGHT_GRAD", "MIN_MACS_TRAIN"):
        monkeypatch.setattr(linear_module, name, 0)
    calls = []
    onednn_linear = linear_module.onednn_linear
    monkeypatch.setattr(linear_module, "onednn_linear", lambda *a: calls.append(1) or onednn_linear(*a))
    return calls


@pytest.mark.parametrize("activation", ["none", "relu", "tanh"])
@pytest.mark.parametrize("bias", [True, False])
def test_forward_and_gradients_agree_with_aten(always_onednn, activation, bias):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, 5, generator=gen, requires_grad=True)  # leading dims are flattened and restored
    weight = torch.randn(7, 5, generator=gen, requires_grad=True)
    b = torch.randn(7, generator=gen, requires_grad=True) if bias else None
    leaves = [t for t in (x, weight, b) if t is not None]
    out = linear(x, weight, b, activation)
    grad = torch.randn(out.shape, generator=gen)
    grads = torch.autograd.grad(out, leaves, grad)
    expected = _reference(x, weight, b, activation)
    expected_grads = torch.autograd.grad(expected, leaves, grad)
    assert len(always_onednn) == 3  # the forward, g @ W and g.T @ x all ran in oneDNN
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_only_the_gradients_asked_for_are_computed(always_onednn):
    x = torch.randn(8, 5)  # no grad: the input gradient is skipped
    weight = torch.randn(6, 5, requires_grad=True)
    linear(x, weight, None, "relu").sum().backward()
    assert len(always_onednn) == 2 and weight.grad is not None


def test_small_products_float64_and_vmap_stay_on_aten_bit_for_bit():
    gen = torch.Generator().manual_seed(1)
    small = torch.randn(4, 3, generator=gen), torch.randn(5, 3, generator=gen), torch.randn(5, generator=gen)
    assert torch.equal(linear(*small, "tanh"), _reference(*small, "tanh"))
    big64 = tuple(t.double() for t in (torch.randn(512, 64), torch.randn(64, 64), torch.randn(64)))
    assert torch.equal(linear(*big64, "relu"), _reference(*big64, "relu"))
    x, weights = torch.randn(512, 64), torch.randn(2, 64, 64)  # vmap over two weight matrices, as TD3's twin critics
    got = torch.func.vmap(lambda w: linear(x, w, None, "relu"))(weights)
    assert torch.equal(got, torch.stack([_reference(x, w, None, "relu") for w in weights]))


def test_training_needs_larger_layers_than_inference(always_onednn, monkeypatch):
    torch.manual_seed(0)
    x, weight = torch.randn(256, 64), torch.randn(64, 64, requires_grad=True)
    monkeypatch.setattr(linear_module, "MIN_MACS_TRAIN", 1 << 22)  # the default again: 256 x 64 x 64 is below it
    linear(x, weight, None, "relu").sum().backward()
    assert not always_onednn
    with torch.no_grad():
        linear(x, weight, None, "relu")
    assert len(always_onednn) == 1


def test_the_rule_keeps_thin_and_small_products_on_aten():
    assert onednn_pays(256, 400, 300)  # DDPG's hidden layer
    assert not onednn_pays(32, 64, 64)  # a small BPTT batch
    assert not onednn_pays(4096, 64, 1)  # an output layer
    assert onednn_pays(4096, 3, 64)  # a large tile's first layer


def test_disabled_means_aten(monkeypatch, always_onednn):
    monkeypatch.setattr(linear_module, "ENABLED", False)
    args = torch.randn(300, 64), torch.randn(64, 64), torch.randn(64)
    assert torch.equal(linear(*args, "tanh"), _reference(*args, "tanh")) and not always_onednn


def test_bad_activation_is_named():
    with pytest.raises(ValueError, match="activation must be one of"):
        linear(torch.randn(2, 3), torch.randn(4, 3), None, "gelu")


def test_accelerate_keeps_parameters_and_state_dict_and_folds_activations():
    torch.manual_seed(0)
    net = MLP(in_features=4, out_features=1, num_cells=[400, 300], activation_class=nn.ReLU)
    reference = MLP(in_features=4, out_features=1, num_cells=[400, 300], activation_class=nn.ReLU)
    reference.load_state_dict(net.state_dict())
    params, keys = list(net.parameters()), list(net.state_dict())
    assert accelerate(net) is net
    accelerate(net)  # idempotent
    assert [type(m) for m in net] == [FastLinear, nn.Identity, FastLinear, nn.Identity, FastLinear]
    assert [m.activation for m in net if isinstance(m, FastLinear)] == ["relu", "relu", "none"]
    assert all(a is b for a, b in zip(net.parameters(), params, strict=True)) and list(net.state_dict()) == keys
    x = torch.randn(256, 4)
    torch.testing.assert_close(net(x), reference(x), rtol=1e-4, atol=1e-5)


def test_compiled_linear_agrees_with_eager(monkeypatch):
    for name in ("MIN_MACS", "MIN_MACS_WEIGHT_GRAD", "MIN_MACS_TRAIN"):
        monkeypatch.setattr(linear_module, name, 0)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(16, 8, generator=gen, requires_grad=True)
    weight = torch.randn(8, 8, generator=gen, requires_grad=True)

    def f(x, weight):
        return linear(torch.sin(x), weight, None, "tanh").square().sum()

    eager = torch.autograd.grad(f(x, weight), (x, weight))
    compiled = torch.autograd.grad(torch.compile(f, fullgraph=True)(x, weight), (x, weight))
    for got, want in zip(compiled, eager, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
