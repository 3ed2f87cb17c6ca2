"""The paper's experiments (Fu et al., arXiv 2407.16134), reproduced and extended.

``python -m stdiff.paper <experiment> [--scale cpu|full]`` runs one experiment, sweeps included,
and writes ``results.csv``, ``summary.json`` and PNG figures into
``lightning_logs/paper/<experiment>/version_N/`` (each training run of a sweep keeps its own run
directory under ``runs/``). The base configuration of each is ``configs/paper/<experiment>.yaml``
(the full, GPU scale); ``--scale cpu`` adds the overlay ``configs/paper/cpu/<experiment>.yaml`` and
the sweep sizes of the experiment's ``CPU`` dict, so that it finishes on a laptop.
"""

EXPERIMENTS = ("theory", "sample_complexity", "attention", "dit_vs_unet", "moving_ball", "conditional", "regimes")
