"""A native (C) rollout for small batches: the MLP policy and Gymnasium's physics in one compiled loop.

At small batches the torch paths are bound by per-kernel overhead, not arithmetic: a step of the compiled rollout
at 32 rows is a dozen kernel launches of a few microseconds each for ~0.3 MFLOP of work, where gymnax (JAX) compiles
the whole scan into one XLA executable. This module generates C code specialised to the network's widths (so the
compiler unrolls and vectorises every layer) at the CPU's vector width (:func:`vector_lanes`: 16 floats with
AVX-512, 8 with AVX), compiles it once per shape with the system C compiler
(``cc -O3 -march=native``, IEEE arithmetic: no ``-ffast-math``; cached under ``~/.cache/research-native``) and calls it through ``ctypes``:

- :func:`native_simulate`: the gradient-free rollout (returns and final states), what :func:`research.rollout.simulate`
  runs for networks up to :data:`NATIVE_MAX_WIDTH` wide;
- :func:`native_rollout`: the differentiable rollout (rewards ``[B, H]``), an autograd function whose backward runs
  the adjoint recursion through the physics and the policy in C, from the last step to the first, accumulating the
  weight gradients as it goes.

Scope: a policy that describes itself to the loop (:meth:`~research.policies.SquashedMLP.native_layers` returns a
:class:`NativeLayers`: the C loop runs that description, never a guess from the policy's attributes) with ``tanh`` or
``relu`` hidden layers, float32 on CPU, and the
physics of Gymnasium's Pendulum-v1 with per-pendulum ``g, m, l, dt, max_speed, max_torque`` and any of the pendulum's
optional terms (damping, dry friction by sign or tanh, torque noise, a hard wall with restitution, a soft penalty
wall; per-pendulum knobs, :func:`knob_names`), the code for each set of terms generated and compiled on its own, so
Gymnasium's physics runs the same C as before the terms existed (:func:`supported` says whether a case qualifies;
the callers fall back to the torch paths otherwise). At non-differentiable points the adjoint takes torch's
subgradients (a clamp passes its bounds, a relu and a sign pass nothing at 0).
``tanh``, ``sin`` and ``cos`` are computed by range reduction and polynomials (within 2.5 and 1.5 float32 ulps of the
exact values, vectorised), so results agree with the torch paths to float tolerance, not bit for bit (``tests/test_native.py``). ``RESEARCH_NATIVE=0`` turns it off; so
does a machine without a working C compiler (a one-line warning, then the torch paths).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from itertools import pairwise
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from research.envs.physics import COST_SPEED, COST_TORQUE, GYMNASIUM_FEATURES, PhysicsFeatures, StepConstants

log = logging.getLogger(__name__)

#: ``RESEARCH_NATIVE=0`` turns the native rollouts off.
ENABLED = os.environ.get("RESEARCH_NATIVE", "1") != "0"
#: The widest layer the native loop takes: beyond it oneDNN's large products win (measured, one thread: the
#: evaluator's 1000 states x 200 steps take 17 ms native against 49 ms in torch with 64-64 tanh layers, but 821 ms
#: against 241 ms with DDPG's 400-300 relu layers).
NATIVE_MAX_WIDTH = 128
#: Rows processed together (their activations stay in L1 cache).
ROW_BLOCK = 16
CACHE = Path(os.environ.get("RESEARCH_NATIVE_CACHE", Path.home() / ".cache" / "research-native"))



class NativeLayers(NamedTuple):
    """What the C loop computes, as a policy declares it (its ``native_layers()`` method, e.g.
    :meth:`research.policies.SquashedMLP.native_layers`): ``action = scale * tanh(z_L)``, ``z_{i+1} = W_i h_i + b_i``,
    ``h_{i+1} = activation(z_{i+1})`` for ``i < L``, ``h_0`` the observation ``[cos th, sin th, thdot]``. A policy opts
    in by returning one only where its own forward computes exactly this."""

    weights: tuple[Tensor, ...]  #: ``W_i [out, in]``, the parameters themselves (the gradients reach them)
    biases: tuple[Tensor, ...]  #: ``b_i [out]``
    activation: str  #: of the hidden layers: ``"tanh"`` or ``"relu"``
    scale: float  #: the action's bound (``max_torque``)


def _c_float(x: float) -> str:
    """``x`` as a C float literal with the double's full precision (its shortest round-trip decimal)."""
    return f"{float(x)!r}f"


_PRELUDE = """
static inline float tanh_approx(float x) {
  /* tanh(|x|) = -expm1(-2|x|) / (2 + expm1(-2|x|)), expm1 by Cody-Waite reduction -2|x| = k ln2 + r, |r| <= ln2 / 2,
     and a degree-7 Taylor polynomial of expm1(r): no cancellation near 0 (k = 0 there); within 2.5 float ulps of
     tanh (measured over 2.2M floats); |x| >= 9 gives +-1 (tanh(9) rounds to 1 in float). Written so that gcc
     vectorises it (-fno-trapping-math lets it inline floorf). */
  float a = fabsf(x);
  a = a < 9.f ? a : 9.f;
  const float y = -2.f * a;
  const float kf = floorf(y * 1.44269504088896341f + 0.5f);
  const float r = (y - kf * 0.693145751953125f) - kf * 1.42860682030941723212e-6f;
  const float em1 = r * (1.f + r * (0.5f + r * (1.f / 6 + r * (1.f / 24 + r * (1.f / 120 + r * (1.f / 720
                    + r * (1.f / 5040)))))));
  union { int i; float f; } scale;
  scale.i = ((int)kf + 127) << 23;  /* 2^k */
  const float e1 = scale.f * em1 + (scale.f - 1.f);
  const float t = -e1 / (2.f + e1);
  return x < 0.f ? -t : t;
}
static inline void sincos_approx(float x, float* sn, float* cs) {
  /* x = k pi/2 + r, |r| <= pi/4 (pi/2 in three parts: exact products up to |k| < 2^12), then Taylor polynomials
     of degrees 9 and 10 and the quadrant's signs; within 1.5 float ulps (measured over 4M floats, |x| <= 300) */
  const float kf = floorf(x * 0.636619772367581343f + 0.5f);
  const float r = ((x - kf * 1.5703125f) - kf * 4.837512969970703e-4f) - kf * 7.549790126404332e-08f;
  const float r2 = r * r;
  const float s = r + r * r2 * (-1.f / 6 + r2 * (1.f / 120 + r2 * (-1.f / 5040 + r2 * (1.f / 362880))));
  const float c = 1.f + r2 * (-0.5f + r2 * (1.f / 24 + r2 * (-1.f / 720 + r2 * (1.f / 40320
                  + r2 * (-1.f / 3628800)))));
  const int q = (int)kf;
  const float sv = (q & 1) ? c : s, cv = (q & 1) ? s : c;
  *sn = (q & 2) ? -sv : sv;
  *cs = ((q + 1) & 2) ? -cv : cv;
}
typedef float vf __attribute__((vector_size(4 * LANES)));
typedef float vfu __attribute__((vector_size(4 * LANES), aligned(4)));
static inline float clampf(float x, float lo, float hi) { return x > hi ? hi : (x < lo ? lo : x); }
"""


def _block_matmul(out: str, inp: str, mat: str, k: int, n: int, bias: str | None, lanes: int) -> str:
    """C for ``out[r][j] = bias[j] + sum_k inp[r][k] mat[k n + j]`` on the block's ``R`` rows. Where ``n`` is a
    multiple of ``lanes`` the rows go in groups whose accumulators (``lanes``-float vectors) stay in registers, each
    ``mat`` row loaded once per group; otherwise a plain vectorised loop."""
    if n % lanes:
        init = f"{bias}[j]" if bias else "0.f"
        return f"""      for (int r = 0; r < R; r++) {{
        #pragma omp simd
        for (int j = 0; j < {n}; j++) {out}[r][j] = {init};
        for (int kk = 0; kk < {k}; kk++) {{
          const float a = {inp}[r][kk];
          #pragma omp simd
          for (int j = 0; j < {n}; j++) {out}[r][j] += a * {mat}[kk * {n} + j];
        }}
      }}"""
    nv = n // lanes
    group = 1
    while group * 2 * nv <= _accumulators(lanes) and group * 2 <= ROW_BLOCK:
        group *= 2
    init = f"*(const vfu*)({bias} + {lanes} * v)" if bias else "(vf){0}"
    return f"""      for (int r = 0; r < R; r += {group}) {{
        vf acc[{group}][{nv}];
        #pragma GCC unroll 16
        for (int g = 0; g < {group}; g++)
          #pragma GCC unroll 16
          for (int v = 0; v < {nv}; v++) acc[g][v] = {init};
        for (int kk = 0; kk < {k}; kk++) {{
          vf w[{nv}];
          #pragma GCC unroll 16
          for (int v = 0; v < {nv}; v++) w[v] = *(const vfu*)({mat} + kk * {n} + {lanes} * v);
          #pragma GCC unroll 16
          for (int g = 0; g < {group}; g++) {{
            const float a = {inp}[r + g][kk];
            #pragma GCC unroll 16
            for (int v = 0; v < {nv}; v++) acc[g][v] += a * w[v];
          }}
        }}
        #pragma GCC unroll 16
        for (int g = 0; g < {group}; g++)
          #pragma GCC unroll 16
          for (int v = 0; v < {nv}; v++) *(vfu*)({out}[r + g] + {lanes} * v) = acc[g][v];
      }}"""


def _weight_grad(i: int, k_in: int, n_out: int, lanes: int) -> str:
    """C accumulating layer ``i``'s weight and bias gradients over the block's ``n`` rows of one step:
    ``GW[j][k] += sum_r dl[r][j] S[r][k]``, ``GB[j] += sum_r dl[r][j]`` (a row of ``GW`` stays in registers)."""
    if k_in % lanes and n_out % lanes == 0:  # accumulated transposed (GWT: [k_in][n_out]), added into GW at the end
        return f"""      {{
        const float* hin = S{i} + base * {k_in};
        for (int r = 0; r < n; r++)
          for (int k = 0; k < {k_in}; k++) {{
            const float x = hin[r * {k_in} + k];
            #pragma omp simd
            for (int j = 0; j < {n_out}; j++) GWT{i}[k][j] += dl{i}[r][j] * x;
          }}
        for (int r = 0; r < n; r++) {{
          #pragma omp simd
          for (int j = 0; j < {n_out}; j++) GB{i}[j] += dl{i}[r][j];
        }}
      }}"""
    if k_in % lanes:
        inner = f"""          #pragma omp simd
          for (int k = 0; k < {k_in}; k++) gw[k] += dj * hin[r * {k_in} + k];"""
        return f"""      {{
        const float* hin = S{i} + base * {k_in};
        for (int j = 0; j < {n_out}; j++) {{
          float* gw = GW{i} + j * {k_in};
          float gb = 0.f;
          for (int r = 0; r < n; r++) {{
            const float dj = dl{i}[r][j];
            gb += dj;
{inner}
          }}
          GB{i}[j] += gb;
        }}
      }}"""
    kv = k_in // lanes
    return f"""      {{
        const float* hin = S{i} + base * {k_in};
        for (int j = 0; j < {n_out}; j++) {{
          float* gw = GW{i} + j * {k_in};
          vf acc[{kv}];
          #pragma GCC unroll 16
          for (int v = 0; v < {kv}; v++) acc[v] = *(const vfu*)(gw + {lanes} * v);
          float gb = 0.f;
          for (int r = 0; r < n; r++) {{
            const float dj = dl{i}[r][j];
            gb += dj;
            #pragma GCC unroll 16
            for (int v = 0; v < {kv}; v++) acc[v] += dj * *(const vfu*)(hin + r * {k_in} + {lanes} * v);
          }}
          #pragma GCC unroll 16
          for (int v = 0; v < {kv}; v++) *(vfu*)(gw + {lanes} * v) = acc[v];
          GB{i}[j] += gb;
        }}
      }}"""


def knob_names(features: PhysicsFeatures) -> tuple[str, ...]:
    """The per-pendulum constants (fields of :class:`~research.envs.physics.StepConstants`) the C loop reads for the
    optional physics terms of ``features``, in the order of its knob array ``K [len, B]``."""
    names = []
    if features.damping:
        names.append("damping")
    if features.friction:
        names.append("friction")
        if features.friction_smooth:
            names.append("friction_width")
            if features.friction_sign:
                names.append("friction_smooth")
    if features.noise:
        names.append("torque_noise")
    if features.hard_wall:
        names += ["wall_high", "wall_low", "wall_restitution", "wall_rebound"]
    if features.soft_wall:
        names += ["soft_high", "soft_low", "wall_stiffness"]
    return tuple(names)


def _knob(features: PhysicsFeatures, name: str) -> str:
    return f"kb[{knob_names(features).index(name)}][r]"


def _friction_direction(features: PhysicsFeatures, speed: str) -> str:
    """C for ``s(speed)``: the sign, ``tanh(speed / eps)``, or per row either (:func:`pendulum_step`'s)."""
    sign = f"(float)(({speed} > 0.f) - ({speed} < 0.f))"
    if not features.friction_smooth:
        return sign
    smooth = f"tanh_approx({speed} / {_knob(features, 'friction_width')})"
    if not features.friction_sign:
        return smooth
    return f"({_knob(features, 'friction_smooth')} != 0.f ? {smooth} : {sign})"


def _torque_terms(features: PhysicsFeatures, act: str, th: str, thd: str) -> list[str]:
    """C lines computing ``tau`` (the net joint torque) from the raw action ``act``: the (noisy) clipped torque,
    then damping, dry friction and the soft wall's penalty, in :func:`pendulum_step`'s order."""
    k = lambda name: _knob(features, name)  # noqa: E731
    lines = [f"float tau = clampf({act} + {k('torque_noise')} * XI[(size_t)(r0 + (r < n ? r : 0)) * H + t], -mt[r], "
             "mt[r]);" if features.noise else "float tau = u;"]
    if features.damping:
        lines.append(f"tau = tau - {k('damping')} * {thd};")
    if features.friction:
        lines.append(f"tau = tau - {k('friction')} * {_friction_direction(features, thd)};")
    if features.soft_wall:
        lines.append(f"tau = tau + {k('wall_stiffness')} * (fmaxf({k('soft_low')} - {th}, 0.f) - "
                     f"fmaxf({th} - {k('soft_high')}, 0.f));")
    return lines


def _step_source(features: PhysicsFeatures, layers: int) -> str:
    """C of one step of the physics on the block's rows (forward), from the action ``h{layers}``."""
    head = f"""      #pragma omp simd
      for (int r = 0; r < R; r++) {{
        const float u = clampf(h{layers}[r][0], -mt[r], mt[r]);
        const float x = th[r] + (float)M_PI, two_pi = 2.f * (float)M_PI;
        const float w = x - two_pi * floorf(x / two_pi) - (float)M_PI;
        const float cost = (w * w + {_c_float(COST_SPEED)} * thd[r] * thd[r]) + {_c_float(COST_TORQUE)} * u * u;"""
    if features == GYMNASIUM_FEATURES:  # Gymnasium's step, the code of the kernels before the optional terms
        return head + """
        const float v = thd[r] + (g[r] * s[r] + ii[r] * u) * d[r];
        const float nv = clampf(v, -ms[r], ms[r]);
        th[r] = th[r] + nv * d[r]; thd[r] = nv; ret[r] -= cost;
        rew[r] = -cost;
      }"""
    k = lambda name: _knob(features, name)  # noqa: E731
    lines = [*_torque_terms(features, f"h{layers}[r][0]", "th[r]", "thd[r]"),
             "const float v = thd[r] + (g[r] * s[r] + ii[r] * tau) * d[r];",
             "const float nv = clampf(v, -ms[r], ms[r]);"]
    if features.hard_wall:
        lines += ["float nth = th[r] + nv * d[r];",
                  f"const float over = fmaxf(nth - {k('wall_high')}, 0.f), under = fmaxf({k('wall_low')} - nth, 0.f);",
                  f"th[r] = nth + {k('wall_rebound')} * (under - over);",
                  f"thd[r] = over + under > 0.f ? -{k('wall_restitution')} * nv : nv; ret[r] -= cost;"]
    else:
        lines.append("th[r] = th[r] + nv * d[r]; thd[r] = nv; ret[r] -= cost;")
    lines.append("rew[r] = -cost;")
    return head + "".join(f"\n        {line}" for line in lines) + "\n      }"


def _knob_loads(features: PhysicsFeatures) -> list[str]:
    """C declaring the block's knob rows ``kb[j][r]`` and loading them from ``K`` (nothing without optional terms)."""
    count = len(knob_names(features))
    if not count:
        return []
    return [f"    float kb[{count}][R];",
            f"    for (int j = 0; j < {count}; j++) for (int r = 0; r < R; r++) "
            "kb[j][r] = K[(size_t)j * B + r0 + (r < n ? r : 0)];"]


def _lane_sum(name: str, lanes: int) -> str:
    """C for the sum of a ``lanes``-float vector by halving: lane ``j`` plus lane ``j + lanes / 2``, and again (at 16
    lanes: ``((a0 + a8) + (a4 + a12)) + ((a2 + a10) + (a6 + a14))`` plus the same from lane 1)."""
    terms = [f"{name}[{j}]" for j in range(lanes)]
    while len(terms) > 1:
        half = len(terms) // 2
        terms = [f"({terms[j]} + {terms[j + half]})" for j in range(half)]
    return terms[0]


def _source(widths: list[int], activation: str, lanes: int, features: PhysicsFeatures = GYMNASIUM_FEATURES) -> str:
    """C source of both kernels for an MLP ``widths[0] -> ... -> widths[-1]`` (``widths[-1] == 1``), with
    ``lanes``-float vectors (16 where the CPU has AVX-512, 8 with AVX, else 4: :func:`vector_lanes`)."""
    layers = len(widths) - 1
    hidden_act = "tanh_approx(z)" if activation == "tanh" else "(z > 0.f ? z : 0.f)"
    weight_args = ", ".join(f"const float* restrict WT{i}, const float* restrict W{i}, const float* restrict b{i}"
                            for i in range(layers))
    head = ("int B, int H, const float* th0, const float* thdot0, const float* gravity, const float* inv_inertia, "
            "const float* dt, const float* max_speed, const float* max_torque, float scale, " + weight_args)
    if features != GYMNASIUM_FEATURES:  # the optional terms' per-pendulum constants K [knobs, B], torque noise XI [B, H]
        head += ", const float* restrict K, const float* restrict XI"
    out = ["#include <math.h>", "#include <string.h>", f"#define R {ROW_BLOCK}", f"#define LANES {lanes}",
           _PRELUDE]

    def policy(save: bool) -> list[str]:
        """The policy on the block's rows: h0 (observation) -> h{layers} (the squashed action); the differentiable
        forward (``save``) adds the pre-squash action noise ``pre_noise [B, H]`` where it is given."""
        noise = ("""
      if (pre_noise) for (int r = 0; r < n; r++) out[r] += pre_noise[(size_t)(r0 + r) * H + t];""" if save else "")
        code = []
        for i in range(layers):
            k_in, n_out = widths[i], widths[i + 1]
            if i < layers - 1:
                code.append(_block_matmul(f"z{i + 1}", f"h{i}", f"WT{i}", k_in, n_out, f"b{i}", lanes))
                code.append(f"""      for (int r = 0; r < R; r++) {{
        #pragma omp simd
        for (int j = 0; j < {n_out}; j++) {{ const float z = z{i + 1}[r][j]; h{i + 1}[r][j] = {hidden_act}; }}
      }}""")
            elif k_in % lanes == 0:  # the output: per row, lane-wise partial sums, then a tree over the lanes
                code.append(f"""      for (int r = 0; r < R; r++) {{
        vf a = (vf){{0}};
        #pragma GCC unroll 16
        for (int v = 0; v < {k_in // lanes}; v++) a += *(const vfu*)(h{i}[r] + {lanes} * v) * *(const vfu*)(WT{i} + {lanes} * v);
        out[r] = b{i}[0] + {_lane_sum("a", lanes)};
      }}{noise}
      #pragma omp simd
      for (int r = 0; r < R; r++) h{layers}[r][0] = scale * tanh_approx(out[r]);""")
            else:
                code.append(f"""      for (int r = 0; r < R; r++) {{
        float acc = b{i}[0];
        #pragma omp simd reduction(+:acc)
        for (int k = 0; k < {k_in}; k++) acc += h{i}[r][k] * WT{i}[k];
        out[r] = acc;
      }}{noise}
      #pragma omp simd
      for (int r = 0; r < R; r++) h{layers}[r][0] = scale * tanh_approx(out[r]);""")
        if save:
            code.append("      for (int r = 0; r < n; r++) TH[(size_t)t * B + r0 + r] = th[r];")
            for i in range(layers + 1):
                code.append(f"      for (int r = 0; r < n; r++) memcpy(S{i} + ((size_t)t * B + r0 + r) * {widths[i]},"
                            f" h{i}[r], sizeof(float) * {widths[i]});")
        return code

    def body(save: bool) -> list[str]:
        code = ["  for (int r0 = 0; r0 < B; r0 += R) {",
                "    const int n = B - r0 < R ? B - r0 : R;",
                "    float th[R], thd[R], ret[R], g[R], ii[R], d[R], ms[R], mt[R], s[R];"]
        code += [f"    float h{i}[R][{w}];" for i, w in enumerate(widths)]
        code += [f"    float z{i}[R][{w}];" for i, w in enumerate(widths) if 0 < i < len(widths) - 1]
        code.append("    float out[R];")
        code += _knob_loads(features)
        code.append("""    for (int r = 0; r < R; r++) {
      const int k = r0 + (r < n ? r : 0);
      th[r] = th0[k]; thd[r] = thdot0[k]; ret[r] = 0.f;
      g[r] = gravity[k]; ii[r] = inv_inertia[k]; d[r] = dt[k]; ms[r] = max_speed[k]; mt[r] = max_torque[k];
    }
    for (int t = 0; t < H; t++) {
      #pragma omp simd
      for (int r = 0; r < R; r++) {
        float cs;
        sincos_approx(th[r], &s[r], &cs);
        h0[r][0] = cs; h0[r][1] = s[r]; h0[r][2] = thd[r];
      }""")
        code += policy(save)
        code.append(_step_source(features, layers))
        if save:
            code.append("      for (int r = 0; r < n; r++) rewards[(size_t)(r0 + r) * H + t] = rew[r];")
        code.append("    }")
        code.append("    for (int r = 0; r < n; r++) { returns[r0 + r] = ret[r]; th_out[r0 + r] = th[r]; "
                    "thdot_out[r0 + r] = thd[r]; }")
        code.append("  }")
        return code

    out.append(f"void simulate({head}, float* returns, float* th_out, float* thdot_out) {{")
    out.append("  float rew[R];")
    out += body(save=False)
    out.append("}")
    saves = ", ".join(f"float* restrict S{i}" for i in range(layers + 1))
    out.append(f"void forward({head}, const float* pre_noise, float* rewards, float* returns, float* th_out, "
               "float* thdot_out, "
               f"float* restrict TH, {saves}) {{")
    out.append("  float rew[R];")
    out += body(save=True)
    out.append("}")
    out.append(_backward_source(widths, activation, head, lanes, features))
    return "\n".join(out)


def _step_adjoint_source(features: PhysicsFeatures, layers: int, obs_width: int) -> str:
    """C of one step's adjoint with the optional terms of ``features`` (the same recursion as Gymnasium's step in
    :func:`_backward_source`, plus the noisy clip, damping, friction, the soft wall's penalty and the hard wall's
    reflection; subgradients as torch's: a clamp passes at its bounds, a relu and a sign pass nothing at 0)."""
    k = lambda name: _knob(features, name)  # noqa: E731
    lines = ["const int q = r < n ? r : 0;",
             f"const float* obs = S0 + (base + q) * {obs_width};",
             "const float c = obs[0], s = obs[1], thd = obs[2];",
             f"const float act = S{layers}[base + q];",
             "const float th = TH[base + q];",
             "const float u = clampf(act, -mt[r], mt[r]);",
             *_torque_terms(features, "act", "th", "thd"),
             "const float v = thd + (g[r] * s + ii[r] * tau) * d[r];",
             "float a_nth = a_th[r], a_nthd = a_thd[r];"]
    if features.hard_wall:  # th' = nth0 + (1 + e) (under - over), thd' = -e nv where it hit: d/dnth0 = -e there
        lines += ["const float nth0 = th + clampf(v, -ms[r], ms[r]) * d[r];",
                  f"if (nth0 - {k('wall_high')} > 0.f || {k('wall_low')} - nth0 > 0.f) {{ "
                  f"a_nth = (1.f - {k('wall_rebound')}) * a_nth; a_nthd = -{k('wall_restitution')} * a_nthd; }}"]
    lines += ["const float a_nv = a_nthd + a_nth * d[r];",
              "const float a_v = (v >= -ms[r] && v <= ms[r]) ? a_nv : 0.f;",
              "const float a_acc = a_v * d[r];",
              "a_s[r] = a_acc * g[r];",
              "const float a_tau = a_acc * ii[r];",
              "const float a_cost = -gr[r];",
              "const float x = th + (float)M_PI, two_pi = 2.f * (float)M_PI;",
              "const float w = x - two_pi * floorf(x / two_pi) - (float)M_PI;",
              "float a_thv = a_nth + a_cost * 2.f * w;",
              f"float a_thdv = a_v + a_cost * {_c_float(2 * COST_SPEED)} * thd;"]
    if features.damping:
        lines.append(f"a_thdv -= {k('damping')} * a_tau;")
    if features.friction_smooth:
        slope = (f"(1.f - fs * fs) / {k('friction_width')}" if not features.friction_sign else
                 f"({k('friction_smooth')} != 0.f ? (1.f - fs * fs) / {k('friction_width')} : 0.f)")
        lines += [f"const float fs = tanh_approx(thd / {k('friction_width')});",
                  f"a_thdv -= {k('friction')} * {slope} * a_tau;"]
    if features.soft_wall:
        lines.append(f"a_thv -= {k('wall_stiffness')} * a_tau * ((float)({k('soft_low')} - th > 0.f) + "
                     f"(float)(th - {k('soft_high')} > 0.f));")
    lines += ["a_th[r] = a_thv; a_thd[r] = a_thdv;",
              f"const float a_cmd = a_cost * {_c_float(2 * COST_TORQUE)} * u;"]
    if features.noise:
        lines += [f"const float xn = act + {k('torque_noise')} * XI[(size_t)(r0 + q) * H + t];",
                  "const float a_act = ((xn >= -mt[r] && xn <= mt[r]) ? a_tau : 0.f) + "
                  "((act >= -mt[r] && act <= mt[r]) ? a_cmd : 0.f);"]
    else:
        lines.append("const float a_act = (act >= -mt[r] && act <= mt[r]) ? a_tau + a_cmd : 0.f;")
    lines += ["const float y = act / scale;  /* act = scale tanh(z) */",
              f"dl{layers - 1}[r][0] = a_act * scale * (1.f - y * y);"]
    return ("""      #pragma omp simd
      for (int r = 0; r < R; r++) {""" + "".join(f"\n        {line}" for line in lines) + "\n      }")


def _backward_source(widths: list[int], activation: str, head: str, lanes: int,
                     features: PhysicsFeatures = GYMNASIUM_FEATURES) -> str:
    """The adjoint recursion, :data:`ROW_BLOCK` pendulums at a time, from the last step to the first. Inputs: the
    saved angles ``TH [H, B]`` and layer inputs ``S_i [H, B, w_i]`` (``S_0`` is the observation, ``S_L`` the squashed
    action), the reward gradients ``[B, H]`` and the final-state gradients. Outputs (zeroed by the caller): the
    weight and bias gradients ``GW_i [w_{i+1}, w_i]``, ``GB_i [w_{i+1}]`` and the start-state gradients."""
    layers = len(widths) - 1
    saves = ", ".join(f"const float* restrict S{i}" for i in range(layers + 1))
    deltas = ", ".join(f"float* restrict GW{i}, float* restrict GB{i}" for i in range(layers))
    derivative = "(1.f - y * y)" if activation == "tanh" else "(y > 0.f ? 1.f : 0.f)"
    code = [f"void backward({head}, const float* restrict TH, {saves}, const float* grad_rewards, "
            f"const float* grad_th, const float* grad_thdot, {deltas}, float* grad_th0, float* grad_thdot0) {{",
            *[f"  float GWT{i}[{widths[i]}][{widths[i + 1]}];  memset(GWT{i}, 0, sizeof GWT{i});"
              for i in range(layers) if widths[i] % lanes and widths[i + 1] % lanes == 0],
            "  for (int r0 = 0; r0 < B; r0 += R) {",
            "    const int n = B - r0 < R ? B - r0 : R;",
            "    float g[R], ii[R], d[R], ms[R], mt[R], a_th[R], a_thd[R], a_s[R], gr[R];"]
    code += [f"    float ah{i}[R][{widths[i]}], dl{i}[R][{widths[i + 1]}];" for i in range(layers)]
    code += _knob_loads(features)
    code.append("""    for (int r = 0; r < R; r++) {
      const int k = r0 + (r < n ? r : 0);
      g[r] = gravity[k]; ii[r] = inv_inertia[k]; d[r] = dt[k]; ms[r] = max_speed[k]; mt[r] = max_torque[k];
      a_th[r] = r < n ? grad_th[k] : 0.f; a_thd[r] = r < n ? grad_thdot[k] : 0.f;
    }
    for (int t = H - 1; t >= 0; t--) {
      const size_t base = (size_t)t * B + r0;""")
    if features != GYMNASIUM_FEATURES:
        code.append("      for (int r = 0; r < R; r++) gr[r] = r < n ? grad_rewards[(size_t)(r0 + r) * H + t] : 0.f;")
        code.append(_step_adjoint_source(features, layers, widths[0]))
    else:
        code.append(f"""      for (int r = 0; r < R; r++) gr[r] = r < n ? grad_rewards[(size_t)(r0 + r) * H + t] : 0.f;
      #pragma omp simd
      for (int r = 0; r < R; r++) {{
        const int q = r < n ? r : 0;
        const float* obs = S0 + (base + q) * {widths[0]};
        const float c = obs[0], s = obs[1], thd = obs[2];
        const float act = S{layers}[base + q];
        const float u = clampf(act, -mt[r], mt[r]);
        const float v = thd + (g[r] * s + ii[r] * u) * d[r];
        /* next_th = th + nv d, next_thd = nv = clip(v) */
        const float a_nv = a_thd[r] + a_th[r] * d[r];
        const float a_v = (v >= -ms[r] && v <= ms[r]) ? a_nv : 0.f;
        const float a_acc = a_v * d[r];
        a_s[r] = a_acc * g[r];
        float a_u = a_acc * ii[r];
        /* reward = -((w^2 + {COST_SPEED!r} thd^2) + {COST_TORQUE!r} u^2), w = angle_normalize(th) */
        const float a_cost = -gr[r];
        const float x = TH[base + q] + (float)M_PI, two_pi = 2.f * (float)M_PI;
        const float w = x - two_pi * floorf(x / two_pi) - (float)M_PI;
        a_th[r] += a_cost * 2.f * w;
        a_thd[r] = a_v + a_cost * {_c_float(2 * COST_SPEED)} * thd;
        a_u += a_cost * {_c_float(2 * COST_TORQUE)} * u;
        const float a_act = (act >= -mt[r] && act <= mt[r]) ? a_u : 0.f;
        const float y = act / scale;  /* act = scale tanh(z) */
        dl{layers - 1}[r][0] = a_act * scale * (1.f - y * y);
      }}""")
    for i in range(layers - 1, -1, -1):
        k_in, n_out = widths[i], widths[i + 1]
        if k_in % lanes and n_out % lanes == 0:  # a narrow input (the observation): dot products over the wide output
            code.append(f"""      for (int r = 0; r < R; r++)
        for (int k = 0; k < {k_in}; k++) {{
          float acc = 0.f;
          #pragma omp simd reduction(+:acc)
          for (int j = 0; j < {n_out}; j++) acc += dl{i}[r][j] * WT{i}[k * {n_out} + j];
          ah{i}[r][k] = acc;
        }}""")
        else:
            code.append(_block_matmul(f"ah{i}", f"dl{i}", f"W{i}", n_out, k_in, None, lanes))
        code.append(_weight_grad(i, k_in, n_out, lanes))
        if i > 0:
            code.append(f"""      for (int r = 0; r < R; r++) {{
        const float* hin = S{i} + (base + (r < n ? r : 0)) * {k_in};
        #pragma omp simd
        for (int k = 0; k < {k_in}; k++) {{ const float y = hin[k]; dl{i - 1}[r][k] = ah{i}[r][k] * {derivative}; }}
      }}""")
    code.append("""      /* observation = (cos th, sin th, thd); sin th also drives the physics */
      #pragma omp simd
      for (int r = 0; r < R; r++) {
        const float* obs = S0 + (base + (r < n ? r : 0)) * 3;
        a_th[r] += -obs[1] * ah0[r][0] + obs[0] * (ah0[r][1] + a_s[r]);
        a_thd[r] += ah0[r][2];
      }
    }
    for (int r = 0; r < n; r++) { grad_th0[r0 + r] = a_th[r]; grad_thdot0[r0 + r] = a_thd[r]; }
  }""")
    for i in range(layers):
        if widths[i] % lanes and widths[i + 1] % lanes == 0:
            code.append(f"""  for (int j = 0; j < {widths[i + 1]}; j++)
    for (int k = 0; k < {widths[i]}; k++) GW{i}[j * {widths[i]} + k] += GWT{i}[k][j];""")
    code.append("}")
    return "\n".join(code)


# ---------------------------------------------------------------------------------------------------- build and load
_LIBS: dict[tuple[tuple[int, ...], str, PhysicsFeatures], ctypes.CDLL | None] = {}
_WARNED = False


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return next((line for line in cpuinfo if line.startswith("flags")), "")
    except OSError:
        return platform.processor()


def vector_lanes() -> int:
    """Floats per vector in the generated C: 16 (one AVX-512 register) where the CPU has ``avx512f``, 8 (AVX) where
    it has ``avx``, else 4; ``RESEARCH_NATIVE_LANES`` overrides. A 16-float vector on a CPU without AVX-512 is
    emulated by the compiler and spills its registers: measured on a 2-core AMD EPYC with AVX2 only, one thread, the
    gradient-free rollout of 4096 pendulums for 100 steps took 2.0 s with 16 lanes and 74 ms with 8."""
    override = os.environ.get("RESEARCH_NATIVE_LANES")
    if override is not None:
        if override not in ("4", "8", "16"):
            raise ValueError(f"RESEARCH_NATIVE_LANES must be 4, 8 or 16, got {override!r}")
        return int(override)
    flags = set(_cpu_flags().split())
    return 16 if "avx512f" in flags else 8 if "avx" in flags else 4


def _accumulators(lanes: int) -> int:
    """How many vector accumulators a matrix product keeps in registers: half the register file (32 AVX-512
    registers, 16 with AVX or SSE on x86-64)."""
    return 16 if lanes == 16 else 8


def _compile(source: str) -> ctypes.CDLL | None:
    """The shared library of ``source`` (compiled once, cached by its hash and the compiler), or ``None``."""
    global _WARNED
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        if not _WARNED:
            log.warning("research.native: no C compiler found (cc, gcc); using the torch rollouts")
            _WARNED = True
        return None
    flags = ["-O3", "-march=native", "-fopenmp-simd", "-fno-math-errno", "-fno-trapping-math", "-shared", "-fPIC"]
    # -march=native: the library is specific to this CPU's instruction set, so its flags are part of the key
    key = hashlib.sha256("\0".join([source, compiler, *flags, _cpu_flags()]).encode()).hexdigest()[:20]
    path = CACHE / f"rollout_{key}.so"
    try:
        if not path.exists():
            CACHE.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
                src = Path(tmp) / "rollout.c"
                src.write_text(source)
                built = Path(tmp) / "rollout.so"
                subprocess.run([compiler, *flags, str(src), "-o", str(built), "-lm"], check=True,
                               capture_output=True, text=True)
                os.replace(built, path)  # atomic: concurrent runs never load a half-written file
        return ctypes.CDLL(str(path))
    except (OSError, subprocess.CalledProcessError) as error:
        if not _WARNED:
            detail = (getattr(error, "stderr", "") or str(error)).strip()
            log.warning("research.native: building the rollout failed (%s); using the torch rollouts",
                        detail.splitlines()[-1] if detail else type(error).__name__)
            _WARNED = True
        return None


def _library(widths: tuple[int, ...], activation: str,
             features: PhysicsFeatures = GYMNASIUM_FEATURES) -> ctypes.CDLL | None:
    key = (widths, activation, features)
    if key not in _LIBS:
        _LIBS[key] = _compile(_source(list(widths), activation, vector_lanes(), features))
    return _LIBS[key]


def _layers(policy: object) -> NativeLayers | None:
    """The policy's own description of its network (its ``native_layers()`` method), where it gives one that the
    kernels have: ``tanh``/``relu`` hidden layers, ``3 -> ... -> 1`` with biases and matching shapes. Nothing else
    runs natively: a plain function, a module without the method, an instance whose method returns ``None``."""
    describe = getattr(type(policy), "native_layers", None)
    if describe is None:
        return None
    layers = describe(policy)
    if not isinstance(layers, NativeLayers) or layers.activation not in ("tanh", "relu"):
        return None
    weights, biases = layers.weights, layers.biases
    if len(weights) < 2 or len(biases) != len(weights):
        return None
    if any(w.dim() != 2 or b.shape != w.shape[:1] for w, b in zip(weights, biases, strict=True)):
        return None
    if weights[0].shape[1] != 3 or weights[-1].shape[0] != 1:
        return None
    if any(w.shape[1] != prev.shape[0] for prev, w in pairwise(weights)):
        return None
    return layers


def supported(policy: object, constants: StepConstants, like: Tensor, rows: int) -> bool:
    """Whether the native loop runs this case: a policy whose ``native_layers()`` describes tanh/relu layers (e.g.
    a :class:`~research.policies.SquashedMLP` that is exactly one) no wider than :data:`NATIVE_MAX_WIDTH` on CPU in
    float32, the pendulum's physics with any of its optional terms (damping, dry friction, torque noise, a hard or
    soft wall), parameters that need no gradient, at least one row, and a C compiler."""
    if not ENABLED or torch.compiler.is_compiling() or rows == 0:
        return False
    if like.device.type != "cpu" or like.dtype != torch.float32 or not isinstance(constants, StepConstants):
        return False
    layers = _layers(policy)
    if layers is None:
        return False
    if any(p.device.type != "cpu" or p.dtype != torch.float32 for p in (*layers.weights, *layers.biases)):
        return False
    if max(w.shape[0] for w in layers.weights) > NATIVE_MAX_WIDTH:
        return False
    if any(torch.is_tensor(v) and v.requires_grad for v in constants):
        return False
    return _library(_widths(layers), layers.activation, constants.features) is not None


def _ptr(t: Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr())


def _per_row(constants: StepConstants, rows: int, like: Tensor) -> list[Tensor]:
    """``gravity, inverse_inertia, dt, max_speed, max_torque`` as contiguous ``[rows]`` float32 tensors."""
    return [torch.broadcast_to(torch.as_tensor(v, dtype=like.dtype, device=like.device), (rows,)).contiguous()
            for v in constants[:5]]


def _weights(layers: NativeLayers) -> list[Tensor]:
    """Per layer: ``W.T`` (the forward's ``[in, out]``), ``W`` (the backward's ``[out, in]``), ``b``."""
    out = []
    for w, b in zip(layers.weights, layers.biases, strict=True):
        w = w.detach()
        out += [w.t().contiguous(), w.contiguous(), b.detach().contiguous()]
    return out


def _widths(layers: NativeLayers) -> tuple[int, ...]:
    return (layers.weights[0].shape[1], *(w.shape[0] for w in layers.weights))


def _lib_for(layers: NativeLayers, features: PhysicsFeatures) -> tuple[ctypes.CDLL, tuple[int, ...]]:
    widths = _widths(layers)
    return _library(widths, layers.activation, features), widths


def _physics_args(constants: StepConstants, rows: int, horizon: int, like: Tensor,
                  noise: Tensor | None) -> list[Tensor | None]:
    """The optional terms' C arguments: the knob rows ``K [knobs, rows]`` and the torque noise ``XI [rows, H]``
    (``[]`` for Gymnasium's physics)."""
    features = constants.features
    if features == GYMNASIUM_FEATURES:
        return []
    knobs = [torch.broadcast_to(torch.as_tensor(getattr(constants, name), device=like.device).to(like.dtype),
                                (rows,)) for name in knob_names(features)]
    table = torch.stack(knobs).contiguous() if knobs else torch.zeros(1, rows, dtype=like.dtype)
    if features.noise:
        if noise is None:
            raise ValueError("research.native: these physics have torque noise; pass the noise [N, H]")
        noise = noise.detach().reshape(rows, horizon).to(like.dtype).contiguous()
    return [table, noise if features.noise else None]


def _described(policy: object) -> NativeLayers:
    layers = _layers(policy)
    if layers is None:
        raise ValueError(f"research.native cannot run {type(policy).__name__}: its native_layers() gives no "
                         "description the C loop has (check research.native.supported first)")
    return layers


@torch.no_grad()
def _ptrs(tensors: list[Tensor | None]) -> list[ctypes.c_void_p | None]:
    return [None if t is None else _ptr(t) for t in tensors]


def native_simulate(policy: nn.Module, th: Tensor, thdot: Tensor, constants: StepConstants,
                    horizon: int, noise: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """``(returns, th, thdot)``, each ``[N]``, of ``horizon`` gradient-free steps from ``th, thdot [N]``
    (check :func:`supported` first); ``noise [N, H]`` (standard normal) where the physics have torque noise."""
    layers = _described(policy)
    lib, _ = _lib_for(layers, constants.features)
    n = th.numel()
    th, thdot = th.contiguous(), thdot.contiguous()
    consts, weights = _per_row(constants, n, th), _weights(layers)
    physics = _physics_args(constants, n, horizon, th, noise)
    returns, th_out, thdot_out = torch.empty(n), torch.empty(n), torch.empty(n)
    lib.simulate(n, horizon, _ptr(th), _ptr(thdot), *map(_ptr, consts), ctypes.c_float(layers.scale),
                 *map(_ptr, weights), *_ptrs(physics), _ptr(returns), _ptr(th_out), _ptr(thdot_out))
    return returns, th_out, thdot_out


class _NativeRollout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, layers, constants, horizon, pre_noise, noise, th, thdot, *params):
        lib, widths = _lib_for(layers, constants.features)
        n = th.numel()
        th, thdot = th.detach().contiguous(), thdot.detach().contiguous()
        pre_noise = None if pre_noise is None else pre_noise.detach().reshape(n, horizon).contiguous()
        consts, weights = _per_row(constants, n, th), _weights(layers)
        physics = _physics_args(constants, n, horizon, th, noise)
        rewards = torch.empty(n, horizon)
        returns, th_out, thdot_out = torch.empty(n), torch.empty(n), torch.empty(n)
        th_saved = torch.empty(horizon, n)
        saved = [torch.empty(horizon, n, w) for w in widths]
        lib.forward(n, horizon, _ptr(th), _ptr(thdot), *map(_ptr, consts), ctypes.c_float(layers.scale),
                    *map(_ptr, weights), *_ptrs(physics), None if pre_noise is None else _ptr(pre_noise),
                    _ptr(rewards), _ptr(returns), _ptr(th_out), _ptr(thdot_out), _ptr(th_saved), *map(_ptr, saved))
        ctx.lib, ctx.widths, ctx.horizon, ctx.scale = lib, widths, horizon, layers.scale
        ctx.inputs = (th, thdot, consts, weights, th_saved, saved, physics)
        observations = saved[0].transpose(0, 1)  # [N, H, 3], the states the policy saw
        ctx.mark_non_differentiable(observations)
        return rewards, th_out, thdot_out, observations

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_rewards, grad_th, grad_thdot, _grad_observations):
        th, thdot, consts, weights, th_saved, saved, physics = ctx.inputs
        n, horizon, widths = th.numel(), ctx.horizon, ctx.widths
        grad_rewards = torch.zeros(n, horizon) if grad_rewards is None else grad_rewards.contiguous()
        grad_th = torch.zeros(n) if grad_th is None else grad_th.contiguous()
        grad_thdot = torch.zeros(n) if grad_thdot is None else grad_thdot.contiguous()
        grads = [torch.zeros(shape) for k, m in pairwise(widths) for shape in ((m, k), (m,))]
        grad_th0, grad_thdot0 = torch.empty(n), torch.empty(n)
        ctx.lib.backward(n, horizon, _ptr(th), _ptr(thdot), *map(_ptr, consts), ctypes.c_float(ctx.scale),
                         *map(_ptr, weights), *_ptrs(physics), _ptr(th_saved), *map(_ptr, saved),
                         _ptr(grad_rewards), _ptr(grad_th), _ptr(grad_thdot), *map(_ptr, grads), _ptr(grad_th0),
                         _ptr(grad_thdot0))
        return (None, None, None, None, None, grad_th0, grad_thdot0, *grads)


def native_rollout(policy: nn.Module, th: Tensor, thdot: Tensor, constants: StepConstants, horizon: int,
                   pre_noise: Tensor | None = None, noise: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(rewards [N, H], th [N], thdot [N], observations [N, H, 3])`` of a differentiable rollout from
    ``th, thdot [N]``: gradients reach the policy's parameters and the start state (check :func:`supported` first);
    ``observations`` (what the policy saw at each step) carry none. ``pre_noise [N, H]`` (or ``[N, H, 1]``), when
    given, is added to the policy's output before its squash at each step (randomised smoothing; the gradient flows
    through the mean: ``action = scale * tanh(z + pre_noise)``). ``noise [N, H]`` (standard normal) is the torque
    noise where the physics have it."""
    layers = _described(policy)
    params = [p for w, b in zip(layers.weights, layers.biases, strict=True) for p in (w, b)]
    return _NativeRollout.apply(layers, constants, horizon, pre_noise, noise, th, thdot, *params)
