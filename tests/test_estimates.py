"""Sizes and durations estimated before anything is allocated (``stdiff.estimates``,
``_validation.available_memory``); the CLI's refusals are in the bad-input battery."""

import resource
import subprocess
import sys

import pytest

from stdiff.estimates import MAX_STEPS, check_steps, duration


def test_available_memory_respects_the_process_limit():
    """Under ``ulimit -v`` (a job's memory limit) the memory a check allows is the limit's, not the machine's."""
    code = "from stdiff._validation import available_memory; print(available_memory())"
    limit = 6 * 2**30

    def limited():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    free = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    capped = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                preexec_fn=limited).stdout)  # fmt: skip
    assert 0 < capped < limit <= free or 0 < capped < free < limit


class Timed:
    """A model whose network takes about 10 ms an evaluation."""

    class schedule:
        t_min, t_max = 0.0, 1.0

    @staticmethod
    def denoiser(x, t):
        import time

        time.sleep(0.01)
        return x


def test_a_step_count_beyond_any_use_is_refused_with_its_memory_and_time():
    check_steps("likelihood.steps", MAX_STEPS, 3 * MAX_STEPS + 2, 112, 4, Timed, (32, 8), 64)  # at the limit: allowed
    with pytest.raises(ValueError) as err:
        check_steps("likelihood.steps", 10**9, 3 * 10**9 + 2, 112, 4, Timed, (32, 8), 64)
    message = str(err.value)
    assert message.startswith("likelihood.steps=1000000000 is more than any use needs (at most 100000")
    assert "a time grid of 104 GiB and 3e+09 network evaluations per batch of 64 samples, 1.2e+10 for the 4 batches" in message
    years = float(message.split("about ")[1].split(" years")[0])  # 1.2e10 × ~10 ms
    assert 3.5 < years < 6


def test_durations_read_in_their_largest_unit():
    assert [duration(s) for s in (2.5, 90, 7200, 3 * 86400, 2 * 365.25 * 86400)] == [
        "2.5 s", "1.5 minutes", "2 hours", "3 days", "2 years"]  # fmt: skip


# Peak host memory per step while a sampler's (or the likelihood's) time grid is made, in a fresh process.
# The peak is VmHWM, reset to the current size first (Linux: clear_refs 5): ru_maxrss keeps the
# imports' peak, under which a grid's memory can hide (it read 1.55 bytes per step for DDIM).
GRID_MEMORY = """
import sys
from stdiff.sampling import DDIM, UniPC
from stdiff.sampling.base import time_grid
from stdiff.schedules import OrnsteinUhlenbeck
def peak():
    return int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) * 1024
what, n, schedule = sys.argv[1], int(sys.argv[2]), OrnsteinUhlenbeck()
open("/proc/self/clear_refs", "w").write("5")
before = peak()
if what == "likelihood":  # as stdiff.likelihood._integrate prepares its ODE
    times = time_grid(schedule, n, "log_snr").flip(0)
    alpha, sigma = schedule.alpha(times).tolist(), schedule.sigma(times).tolist()
else:
    {"UniPC": UniPC, "DDIM": DDIM}[what](steps=n).times(schedule)
print((peak() - before) / n)
"""


@pytest.mark.slow
@pytest.mark.parametrize("what,bound", [("UniPC", "SAMPLER"), ("DDIM", "SAMPLER"), ("likelihood", "LIKELIHOOD")])
def test_the_bytes_per_step_of_the_estimates_are_measured(what, bound):
    """The estimates' bytes per step (``SAMPLER_BYTES_PER_STEP``, ``LIKELIHOOD_BYTES_PER_STEP``) bound
    what 10⁷ steps take, and not by more than a factor of three (measured: UniPC 40, DDIM 24, likelihood 96)."""
    import stdiff.estimates

    per_step = float(subprocess.run([sys.executable, "-c", GRID_MEMORY, what, "10000000"], capture_output=True,
                                    text=True, check=True).stdout)  # fmt: skip
    allowed = getattr(stdiff.estimates, f"{bound}_BYTES_PER_STEP")
    print(f"{what}: {per_step:.1f} bytes per step (estimate {allowed})")
    assert allowed / 3 < per_step <= allowed
