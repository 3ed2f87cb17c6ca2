"""Discrete-time β schedules as DDPM and diffusers define them, exact at every one of their steps."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor

from stdiff._validation import check_int, check_positive
from stdiff.schedules.base import VPSchedule

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")
# diffusers scheduler-config keys that define ᾱ; the others (prediction_type, timestep_spacing, …)
# are about the network or the sampler, not the schedule.
SCHEDULE_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas")


def betas(schedule: str, steps: int, beta_start: float, beta_end: float) -> Tensor:
    """β_1..β_N (float64) of a diffusers ``beta_schedule`` (``DDPMScheduler``'s formulas)."""
    if schedule == "linear":
        return torch.linspace(beta_start, beta_end, steps, dtype=torch.float64)
    if schedule == "scaled_linear":  # Stable Diffusion's
        return torch.linspace(beta_start**0.5, beta_end**0.5, steps, dtype=torch.float64) ** 2
    if schedule == "squaredcos_cap_v2":  # Nichol & Dhariwal's cosine, β capped at 0.999

        def alpha_bar(t: Tensor) -> Tensor:
            return torch.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        i = torch.arange(steps, dtype=torch.float64)
        return (1 - alpha_bar((i + 1) / steps) / alpha_bar(i / steps)).clamp(max=0.999)
    if schedule == "sigmoid":
        return torch.sigmoid(torch.linspace(-6, 6, steps, dtype=torch.float64)) * (beta_end - beta_start) + beta_start
    raise ValueError(f"DiscreteBeta.beta_schedule must be one of {BETA_SCHEDULES}, got {schedule!r}")


class DiscreteBeta(VPSchedule):
    """A discrete β schedule: ᾱ_k = Π_{i ≤ k} (1 − β_i) at t = k/N, k = 1..N, exactly, with log α
    linear in t between steps (β constant within a step). The defaults are DDPM's (Ho et al.
    2020): β linear from 1e-4 to 0.02 over 1000 steps; ``LinearBeta``, its continuous-time limit,
    is 7 % off in ᾱ at the last step.

    The arguments are a diffusers scheduler config's; ``from_diffusers`` reads one.

    Args:
        t_min: early-stopping time t₀ > 0 (default: the first step, 1/N).
        t_max: horizon in (t_min, 1] (1 is step N).
        num_train_timesteps: N, the number of steps.
        beta_start: β_1 > 0.
        beta_end: β_N >= beta_start.
        beta_schedule: ``"linear"``, ``"scaled_linear"``, ``"squaredcos_cap_v2"`` or ``"sigmoid"``.
        trained_betas: β_1..β_N given directly (each in (0, 1)); then ``beta_*`` are unused.
    """

    def __init__(
        self,
        t_min: float | None = None,
        t_max: float = 1.0,
        num_train_timesteps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Sequence[float] | None = None,
    ) -> None:
        steps = check_int("DiscreteBeta.num_train_timesteps", num_train_timesteps, 1)
        super().__init__(1.0 / steps if t_min is None else t_min, t_max)
        if self.t_max > 1:
            raise ValueError(f"DiscreteBeta.t_max must be <= 1 (step N), got {t_max}")
        self.num_train_timesteps, self.beta_schedule = steps, beta_schedule
        self.beta_start = check_positive("DiscreteBeta.beta_start", beta_start)
        self.beta_end = check_positive("DiscreteBeta.beta_end", beta_end)
        self.trained_betas = None if trained_betas is None else [float(b) for b in trained_betas]
        if self.trained_betas is not None:
            b = torch.tensor(self.trained_betas, dtype=torch.float64)
            if len(b) != steps:
                raise ValueError(f"DiscreteBeta.trained_betas has {len(b)} values, num_train_timesteps is {steps}")
        else:
            if beta_end < beta_start:
                raise ValueError(f"DiscreteBeta.beta_end must be >= beta_start={beta_start}, got {beta_end}")
            b = betas(beta_schedule, steps, self.beta_start, self.beta_end)
        bad = ~((b > 0) & (b < 1))
        if bad.any():
            i = int(bad.nonzero()[0])
            raise ValueError(f"DiscreteBeta: every β must lie in (0, 1); β_{i + 1} = {b[i].item()!r}")
        # log α at t = k/N, k = 0..N: ½ log ᾱ_k, with ᾱ_0 = 1
        self._log_alpha = torch.cat([torch.zeros(1, dtype=torch.float64), 0.5 * torch.cumsum(torch.log1p(-b), 0)])

    @property
    def alphas_cumprod(self) -> Tensor:
        """ᾱ_1..ᾱ_N (float64), as diffusers' ``scheduler.alphas_cumprod``."""
        return (2 * self._log_alpha[1:]).exp()

    @classmethod
    def from_diffusers(cls, config, t_min: float | None = None, t_max: float = 1.0) -> DiscreteBeta:
        """The schedule of a diffusers scheduler: its ``config`` (a mapping), the scheduler itself
        (anything with ``.config``), or a ``scheduler_config.json`` file or the folder holding it.
        Only the keys that define ᾱ are read (``SCHEDULE_KEYS``); a zero-terminal-SNR rescale is
        refused (ᾱ_N = 0 has no finite log-SNR)."""
        if hasattr(config, "config"):
            config = config.config
        if isinstance(config, (str, Path)):
            path = Path(config)
            path = path / "scheduler_config.json" if path.is_dir() else path
            if not path.is_file():
                raise FileNotFoundError(f"DiscreteBeta.from_diffusers: no scheduler config at {path}")
            try:
                config = json.loads(path.read_text(encoding="utf-8"))
            except UnicodeDecodeError:
                raise ValueError(f"DiscreteBeta.from_diffusers: {path} is not a text file (binary content); expected "
                                 "a diffusers scheduler_config.json") from None
            except json.JSONDecodeError as err:
                raise ValueError(f"DiscreteBeta.from_diffusers: {path} is not valid JSON (line {err.lineno}, column "
                                 f"{err.colno}: {err.msg}); a truncated or damaged scheduler_config.json?") from None
        if not isinstance(config, Mapping):
            raise TypeError(f"DiscreteBeta.from_diffusers takes a config mapping, a scheduler or a path, got "
                            f"{type(config).__name__}")  # fmt: skip
        if config.get("rescale_betas_zero_snr"):
            raise ValueError("DiscreteBeta.from_diffusers: rescale_betas_zero_snr=True makes ᾱ_N = 0 (infinite noise "
                             "at the last step), which a schedule of finite log-SNR cannot represent")  # fmt: skip
        return cls(t_min=t_min, t_max=t_max, **{k: config[k] for k in SCHEDULE_KEYS if config.get(k) is not None})

    def log_alpha(self, t: Tensor) -> Tensor:
        table = self._log_alpha.to(device=t.device, dtype=t.dtype)
        u = t * self.num_train_timesteps
        k = u.detach().floor().clamp(0, self.num_train_timesteps - 1)
        frac = u - k
        k = k.long()
        return table[k] + frac * (table[k + 1] - table[k])
