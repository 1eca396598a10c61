"""Measurements on the simulator and its policies, as data: no figures, no reports (those are in ``scripts/``).

- :mod:`research.analysis.gradients`: first-order (BPTT) against zeroth-order (likelihood-ratio) policy gradients
  against the horizon (``make experiment EXP=gradient_study``).
"""
