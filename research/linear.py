"""Fast CPU linear layers: oneDNN's matmul where it beats ATen's default (MKL), forward and backward.

On the AMD EPYC CPUs this project is measured on, MKL's ``sgemm`` takes its AVX2 code path although the CPU has
AVX-512, while oneDNN (shipped inside torch) runs its AVX-512 kernels: on one thread a ``[256, 400] x [400, 300]``
product runs at ~110 GFLOP/s in MKL and ~240 GFLOP/s in oneDNN. oneDNN costs ~10 us more per call, so small products
stay on ATen. :func:`linear` picks the faster kernel for each of the three products of a layer (the forward, the
input gradient ``g @ W`` and the weight gradient ``g.T @ x``) from the shapes, by the rule of :func:`onednn_pays`,
and fuses ``relu`` or ``tanh`` into oneDNN's forward.

Measured (1 thread, torch 2.13, time MKL / time oneDNN; > 1: oneDNN faster)::

    layer       rows  forward+relu  forward+tanh  g @ W   g.T @ x
    64 -> 64     128     0.77          1.52        0.74     0.59
    64 -> 64     256     1.06          2.23        1.07     0.82
    64 -> 64    1024     1.82          3.61        1.79     1.11
    3 -> 64     4096    26.6          15.9         3.82     1.24
    400 -> 300    32     1.53          1.79        1.62     1.49
    400 -> 300   256     2.21          2.60        2.20     1.96
    64 -> 1     4096     0.76          0.33        0.68     0.55

(``torch.tanh`` itself is slow here, hence the tanh column.) The thresholds were measured on that AMD CPU; on Intel
CPUs MKL runs its AVX-512 kernels too, so the gain is smaller there (not measured). On CUDA, on non-x86 CPUs, in float64, inside ``vmap`` or with
``RESEARCH_ONEDNN=0`` in the environment, :func:`linear` is exactly ``act(F.linear(x, weight, bias))``; so is it on
any product the rule leaves to ATen. Where oneDNN runs, results agree with ATen's to float32 rounding (not bit for
bit).

:func:`accelerate` switches the ``nn.Linear`` layers of a module (a TorchRL ``MLP``, a :class:`SquashedMLP`) to
:class:`FastLinear` in place, folding a following ``ReLU``/``Tanh`` into the layer; parameters, their names and the
state dict stay as they were.
"""

from __future__ import annotations

import os
import platform

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

#: oneDNN runs on x86-64 builds of torch that include it; ``RESEARCH_ONEDNN=0`` turns it off (every product on
#: ATen), e.g. to compare the two.
ENABLED = (
    os.environ.get("RESEARCH_ONEDNN", "1") != "0"
    and platform.machine().lower() in ("x86_64", "amd64")
    and torch.backends.mkldnn.is_available()
    and hasattr(torch.ops.mkldnn, "_linear_pointwise")
)
#: A product ``[m, k] x [k, n]`` goes to oneDNN from this many multiply-adds ``m k n`` on (or from 4096 rows)...
MIN_MACS = 1 << 20
#: ...a weight gradient (a reduction over the rows, where MKL does comparatively well) from this many...
MIN_MACS_WEIGHT_GRAD = 1 << 21
#: ...and a forward with a fused ``tanh`` from this many rows (``torch.tanh`` after MKL is slow here), without
#: gradients.
MIN_ROWS_TANH = 128
#: With gradients, a layer goes to oneDNN from this many multiply-adds, or with a fused ``tanh`` from this many rows
#: (its backward products are then chosen as above). At 2^21 SHAC's critic minibatches (512 x 64 x 64) went to
#: oneDNN and its default run took 12.5 s for 300 iterations against 10.2 s on ATen alone; at 2^22, 10.6 s.
MIN_MACS_TRAIN = 1 << 22
MIN_ROWS_TANH_TRAIN = 512
ACTIVATIONS = ("none", "relu", "tanh")


# oneDNN's ``activation(x @ weight.T + bias)`` as an op that ``torch.compile`` leaves opaque (Inductor's own lowering
# of ``mkldnn._linear_pointwise`` requires frozen weights). Defined with the low-level ``torch.library.Library``: a
# call costs ~2 us more than the oneDNN op itself, against ~7 us for ``torch.library.custom_op``.
_LIBRARY = torch.library.Library("research", "DEF")
_LIBRARY.define("linear_pointwise(Tensor x, Tensor weight, Tensor? bias, str activation) -> Tensor")


def _linear_pointwise_kernel(x: Tensor, weight: Tensor, bias: Tensor | None, activation: str) -> Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, activation, [], "")


_LIBRARY.impl("linear_pointwise", _linear_pointwise_kernel, "CPU")


@torch.library.register_fake("research::linear_pointwise")
def _(x: Tensor, weight: Tensor, bias: Tensor | None, activation: str) -> Tensor:
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


def onednn_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None, activation: str = "none") -> Tensor:
    """``activation(x @ weight.T + bias)`` in oneDNN (CPU, float32; ``x`` and ``weight`` may be strided views)."""
    if torch.compiler.is_compiling():
        return torch.ops.research.linear_pointwise(x, weight, bias, activation)
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, activation, [], "")


def onednn_pays(m: int, k: int, n: int, min_macs: int | None = None) -> bool:
    """Whether oneDNN beats ATen on the product ``[m, k] x [k, n]`` (see the table in the module docstring);
    ``min_macs`` defaults to :data:`MIN_MACS`."""
    return min(m, k, n) >= 3 and (m * k * n >= (MIN_MACS if min_macs is None else min_macs) or m >= 4096)


def _on_cpu_float32(*tensors: Tensor | None) -> bool:
    """CPU float32 tensors, none of them inside a ``vmap``/``grad`` transform (oneDNN's op has no batching rule;
    Dynamo cannot trace the check, and compiled code does not meet such tensors here)."""
    compiling = torch.compiler.is_compiling()
    return all(
        t is None
        or (t.device.type == "cpu" and t.dtype == torch.float32
            and (compiling or not torch._C._functorch.is_functorch_wrapped_tensor(t)))
        for t in tensors
    )


def _activate(y: Tensor, activation: str) -> Tensor:
    if activation == "relu":
        return torch.relu(y)
    if activation == "tanh":
        return torch.tanh(y)
    return y


def _mm_nt(a: Tensor, b: Tensor, min_macs: int | None) -> Tensor:
    """``a @ b.T`` for 2-d ``a [m, k]`` and ``b [n, k]``, on the faster kernel."""
    if onednn_pays(a.shape[0], a.shape[1], b.shape[0], min_macs):
        return onednn_linear(a, b)
    return a @ b.t()


class _OneDNNLinear(torch.autograd.Function):
    """``activation(x @ weight.T + bias)`` for 2-d ``x``, the forward in oneDNN and each backward product on the
    faster kernel."""

    @staticmethod
    def forward(x: Tensor, weight: Tensor, bias: Tensor | None, activation: str) -> Tensor:
        return onednn_linear(x, weight, bias, activation)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, weight, bias, activation = inputs
        ctx.activation = activation
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x, weight, output if activation != "none" else None)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        x, weight, out = ctx.saved_tensors
        if ctx.activation == "relu":
            grad = torch.ops.aten.threshold_backward(grad, out, 0.0)
        elif ctx.activation == "tanh":
            grad = torch.ops.aten.tanh_backward(grad, out)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = _mm_nt(grad, weight.t(), None)  # [rows, out] x [out, in]
        if ctx.needs_input_grad[1]:
            grad_w = _mm_nt(grad.t(), x.t(), MIN_MACS_WEIGHT_GRAD)  # [out, rows] x [rows, in]
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum(0)
        return grad_x, grad_w, grad_b, None


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None, activation: str = "none") -> Tensor:
    """``activation(x @ weight.T + bias)``, differentiable, on the faster CPU kernel for these shapes.

    Args:
        x: ``[..., in]``.
        weight: ``[out, in]``.
        bias: ``[out]`` or ``None``.
        activation: ``"none"``, ``"relu"`` or ``"tanh"``.

    Returns:
        ``[..., out]``.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {list(ACTIVATIONS)}, got {activation!r}")
    if ENABLED and x.dim() >= 2 and x.device.type == "cpu":
        rows = x.numel() // x.shape[-1]
        out, inp = weight.shape
        if _forward_pays(rows, inp, out, activation, x, weight) and _on_cpu_float32(x, weight, bias):
            y = _OneDNNLinear.apply(x.reshape(rows, inp), weight, bias, activation)
            return y.reshape(*x.shape[:-1], out)
    return _activate(F.linear(x, weight, bias), activation)


def _forward_pays(rows: int, inp: int, out: int, activation: str, x: Tensor, weight: Tensor) -> bool:
    """The rule for a layer: :func:`onednn_pays` on its forward product, or a fused ``tanh`` on enough rows
    (:data:`MIN_ROWS_TANH`); with gradients the thresholds are :data:`MIN_MACS_TRAIN` and
    :data:`MIN_ROWS_TANH_TRAIN`, as the autograd function's Python overhead (~20 us a layer) must be paid back."""
    training = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    tanh_rows = MIN_ROWS_TANH_TRAIN if training else MIN_ROWS_TANH
    if activation == "tanh" and rows >= tanh_rows and min(inp, out) >= 3:
        return True
    return onednn_pays(rows, inp, out, MIN_MACS_TRAIN if training else None)


class FastLinear(nn.Linear):
    """An ``nn.Linear`` (same parameters, same state dict) that runs through :func:`linear`, with an optional fused
    ``activation``."""

    activation: str = "none"

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias, self.activation)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, activation={self.activation}"


_FUSABLE = {nn.ReLU: "relu", nn.Tanh: "tanh"}


def accelerate(module: nn.Module) -> nn.Module:
    """Switches every ``nn.Linear`` inside ``module`` to :class:`FastLinear`, in place; returns ``module``.

    A ``ReLU`` or ``Tanh`` that directly follows a linear layer in an ``nn.Sequential`` is folded into it (and
    replaced by ``nn.Identity``). Parameters are the same objects, so optimizers, state dicts and TorchRL's
    functional parameter copies keep working. Calling it twice changes nothing more.
    """
    for child in module.modules():
        if isinstance(child, nn.Sequential):
            layers = list(child)
            for i, layer in enumerate(layers[:-1]):
                follower = _FUSABLE.get(type(layers[i + 1]))
                if type(layer) is nn.Linear and follower is not None:
                    layer.__class__ = FastLinear
                    layer.activation = follower
                    child[i + 1] = nn.Identity()
    for child in module.modules():
        if type(child) is nn.Linear:
            child.__class__ = FastLinear
            child.activation = "none"
    return module
