"""Samplers: from noise at ``t_max`` to a sample at the early-stopping time ``t_min``.

Every sampler has the same signature, ``sampler.sample(model, shape, generator, …, cond=…)``, and
takes any noise model ``model(x_t, t, **cond) -> ε̂`` with a ``schedule`` (``Denoiser``,
``ExactDenoiser``, or the ``DiffusionModule`` holding one); ``cond`` (observations, masks) is
passed to every model call unchanged. The time grid (``steps``, ``spacing``) is a sampler option.
Nothing is clamped: GP data is unbounded. ``base``: the interface; ``single_step``: Euler–Maruyama,
ancestral, DDIM, Heun; ``multistep``: DPM-Solver++ and UniPC (the default); ``deis``: DEIS;
``probe`` and ``plan``: how UniPC chooses its settings for the model at hand.
"""

from stdiff.sampling.base import ENDPOINTS, Endpoint, Sampler, Spacing, time_grid
from stdiff.sampling.deis import DEIS
from stdiff.sampling.multistep import DPMSolver, UniPC
from stdiff.sampling.single_step import DDIM, Ancestral, EulerMaruyama, Heun

SAMPLERS: dict[str, type[Sampler]] = {
    cls.__name__: cls for cls in (EulerMaruyama, Ancestral, DDIM, Heun, DPMSolver, DEIS, UniPC)
}
for _cls in (Sampler, *SAMPLERS.values()):
    _cls.__module__ = __name__  # configs and checkpoints name them stdiff.sampling.<Class>, as before the split

__all__ = [
    "DDIM",
    "DEIS",
    "ENDPOINTS",
    "SAMPLERS",
    "Ancestral",
    "DPMSolver",
    "Endpoint",
    "EulerMaruyama",
    "Heun",
    "Sampler",
    "Spacing",
    "UniPC",
    "time_grid",
]  # fmt: skip
