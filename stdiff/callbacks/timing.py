"""Where validation time goes: ``Clock`` splits one validation into parts (``val/seconds/<part>``),
``FitTime`` adds up a fit's validations against its wall time (the end-of-fit summary's ``time``)."""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager

import torch

PARTS = ("sampling", "selection", "metrics", "figures")  # timed by the diagnostics and BestCheckpoint; the rest: "batches"


def now(device: torch.device) -> float:
    """``time.perf_counter()`` after the device's queued work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


class Clock:
    """Wall seconds of one validation since its start, by part, each part's own (a part entered
    inside another pauses it), the device's queued work included."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.seconds, self._open = device, defaultdict(float), []
        self.start = now(device)

    @contextmanager
    def part(self, name: str):
        start = now(self.device)
        if self._open:  # pause the enclosing part
            self.seconds[self._open[-1][0]] += start - self._open[-1][1]
        self._open.append([name, start])
        try:
            yield
        finally:
            end = now(self.device)
            self.seconds[name] += end - self._open.pop()[1]
            if self._open:
                self._open[-1][1] = end

    def costs(self) -> tuple[float, dict[str, float]]:
        """``(total, {part: seconds})`` so far, ``batches`` being what the parts leave."""
        total = now(self.device) - self.start
        cost = {part: self.seconds.get(part, 0.0) for part in PARTS}
        return total, {**cost, "batches": max(total - sum(cost.values()), 0.0)}


class FitTime:
    """A fit's wall time and its validations', each counted from its start to the next training
    step (or the end): Lightning's loop, the diagnostics and the other callbacks' work there
    (checkpoints, the EMA's weight swaps) alike; plus the validations' parts (``Clock.costs``)."""

    def __init__(self) -> None:
        self.start, self.parts, self._done, self._since = time.perf_counter(), defaultdict(float), 0.0, None

    def validation_started(self, device: torch.device) -> None:
        self._since = now(device)

    def training_resumed(self) -> None:
        if self._since is not None:
            self._done += time.perf_counter() - self._since
            self._since = None

    @property
    def validation_seconds(self) -> float:
        """Every validation so far, one in progress until now."""
        return self._done + (time.perf_counter() - self._since if self._since is not None else 0.0)

    def results(self) -> dict[str, float]:
        """``fit/seconds``, ``fit/validation_seconds`` and its parts (``other``: checkpoints and the rest)."""
        self.training_resumed()
        other = max(self._done - sum(self.parts.values()), 0.0)
        parts = {f"fit/validation_seconds/{k}": v for k, v in {**self.parts, "other": other}.items()}
        return {"fit/seconds": time.perf_counter() - self.start, "fit/validation_seconds": self._done, **parts}


def sampling_note(num_samples: int, sample_every: int, max_steps: int, batch_size: int, sampler_steps: int) -> str | None:
    """For a short fit (a smoke test) whose end-of-fit sampling is over twice its training, counted
    in network passes (a training sample: forward and backward, ~3; a sample: one a sampler step),
    how to make it cheaper; None otherwise."""
    if max_steps is None or max_steps <= 0 or sample_every == 0 or not sampler_steps:
        return None
    sampling, training = num_samples * sampler_steps, 3 * max_steps * batch_size
    if sampling <= 2 * training:  # only where it clearly dominates
        return None
    return (f"this fit of {max_steps} steps ends with a validation that draws diagnostics.num_samples={num_samples} "
            f"samples with {sampler_steps} sampler steps: about {sampling / training:.0f}× the network passes of its "
            "training. For a quick check, lower --diagnostics.num_samples (the KL needs more than twice the "
            "dimension) or --model.sampler.init_args.steps")  # fmt: skip
