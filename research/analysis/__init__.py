"""Measurements on the simulator and its policies, as data: no figures, no reports (those are in ``scripts/``).

- :mod:`research.analysis.gradients`: first-order (BPTT) against zeroth-order (likelihood-ratio) policy gradients
  against the horizon (``make experiment EXP=gradient_study``; figures and report: ``scripts/gradient_report.py``).
- :mod:`research.analysis.optimal`: the optimal-control yardstick, finite-horizon dynamic programming on a
  ``(th, thdot)`` grid for every physics preset (``make optimal``; report: ``scripts/optimal_report.py``).
- :mod:`research.analysis.trajopt`: the yardstick where a grid DP is out of reach (cart-pole, acrobot): per-start
  trajectory optimisation through the differentiable physics, the better of it and the reference controller per
  start (``make optimal-systems``, part of ``make optimal``; the same report).
"""
