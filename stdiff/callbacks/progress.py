"""``ProgressBar``: Lightning's TQDM bar, redrawn at most every ``refresh_seconds``."""

from __future__ import annotations

import time

from lightning.pytorch.callbacks import TQDMProgressBar


class ProgressBar(TQDMProgressBar):
    """Lightning's progress bar, redrawn at most every ``refresh_seconds`` instead of after every
    batch: a redraw costs ~0.6 ms (1 % of a quickstart step, several % of a fast GPU step), more
    than anyone can read at 20+ steps/s (``python -m stdiff.bench step_hooks`` measures it). The bar ends
    on the true count. stdiff adds it unless the trainer already has a progress bar or has
    ``enable_progress_bar: false``.

    Args:
        refresh_seconds: least time between two redraws.
        refresh_rate, leave: as ``TQDMProgressBar`` (redraw at most every ``refresh_rate`` batches).
    """

    def __init__(self, refresh_seconds: float = 0.25, refresh_rate: int = 1, leave: bool = False) -> None:
        if not refresh_seconds >= 0:
            raise ValueError(f"ProgressBar.refresh_seconds must be >= 0, got {refresh_seconds!r}")
        super().__init__(refresh_rate=refresh_rate, leave=leave)
        self.refresh_seconds = refresh_seconds
        self._last_redraw = float("-inf")
        self._trained = 0

    def _should_update(self, current: int, total: int) -> bool:
        if not super()._should_update(current, total):
            return False
        now = time.monotonic()
        if current != total and now - self._last_redraw < self.refresh_seconds:
            return False
        self._last_redraw = now
        return True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self._trained = batch_idx + 1
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_train_end(self, *args) -> None:
        bar = self.train_progress_bar
        if bar is not None and not bar.disable and bar.n != self._trained:
            bar.n = self._trained  # the redraws skipped at the end of an endless stream
            bar.refresh()
        super().on_train_end(*args)
