"""stdiff's samplers against diffusers' schedulers, run by this script on the same problem: the same
GP, the same OU schedule (t_min = 1e-3, t_max = 10), the same exact ε-model, the same starting
noise, counted in network evaluations by wrapping the model.

    pip install -e ".[bench]"        # diffusers; without it only stdiff's rows are computed
    python -m stdiff.bench diffusers_kl [--n 20000] [--budgets 4 5 6 8 10 12 15 20 25 50] [--out stdiff/bench/results]
    python -m stdiff.bench diffusers_kl --reuse-diffusers   # stdiff's rows only, diffusers' from the committed table

The score is the exact KL of the sampler's output law to the GP: with the exact model of Gaussian
data every deterministic sampler (stdiff's and diffusers') is affine in its starting noise, so its
push-forward of N(0, I) is a Gaussian found from d + 1 runs (``stdiff.metrics.pushforward_kl``):
no sampling noise, floor zero. Beside it, for the rows that matter, the Monte Carlo estimate a
user would see: the Gaussian-fit KL of ``--n`` samples in excess of that of ``--n`` exact samples.

diffusers sees the schedule as its own discrete table: ``num_train_timesteps = 1000`` timesteps
uniform in t on [t_min, t_max], ``trained_betas`` so that ``alphas_cumprod`` is α(t)² there; the
model is called with diffusers' timestep, mapped back to t through the same table (log σ/α
interpolated linearly in the timestep, as diffusers maps σ to timesteps). Every setting in
``DIFFUSERS_SETTINGS`` (DPM-Solver++ 2M/3M, UniPC bh1/bh2 of order 2 and 3, DEIS 2/3; each time
grid diffusers offers: its default uniform-in-t, trailing, Karras, exponential = uniform in
log-SNR, Lu's λ; ``final_sigmas_type`` zero or sigma_min; ``lower_order_final`` on or off) runs
at every budget; "best" is the best of them at each budget, chosen after the fact (an oracle no
user has). Three problems: the quickstart's GP (d = 256), ``sampler_kl.md``'s (d = 32), and a
third that no setting of stdiff was chosen on (GeneralizedCauchy × Matérn on a 4 × 4 grid, d = 256).

Writes ``diffusers_kl.csv`` (every setting, problem and budget) and ``diffusers_kl.md``.
"""

from __future__ import annotations

import argparse
import csv
import math
import pathlib
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch

from stdiff.diffusion import ExactDenoiser
from stdiff.kernels import RBF, GeneralizedCauchy, Matern, PoweredExponential
from stdiff.metrics import gaussian_fit_kl, gaussian_fit_kl_floor, pushforward_kl
from stdiff.sampling import DPMSolver, Sampler, UniPC
from stdiff.schedules import NoiseSchedule, OrnsteinUhlenbeck
from stdiff.truth import KroneckerGP

BUDGETS = [4, 5, 6, 8, 10, 12, 15, 20, 25, 50]
TRAIN_TIMESTEPS = 1000


def problems() -> dict[str, KroneckerGP]:
    return {
        "quickstart": KroneckerGP(PoweredExponential(4.0, 1.0), RBF(1.0), frames=32, space_shape=(8,)),
        "sampler_kl": KroneckerGP(PoweredExponential(3.0, 1.0), RBF(1.0), frames=8, space_shape=(4,)),
        "held_out": KroneckerGP(GeneralizedCauchy(4.0, alpha=1.0), Matern(1.5, nu=1.5), frames=16, space_shape=(4, 4)),
    }


def schedule() -> NoiseSchedule:
    return OrnsteinUhlenbeck(t_min=1e-3, t_max=10.0)


# --- stdiff's side ---------------------------------------------------------------------------

STDIFF_SETTINGS: dict[str, Callable[[int], Sampler]] = {
    "UniPC (stdiff default)": lambda n: UniPC(steps=n),
    "UniPC, order 3": lambda n: UniPC(steps=n, order=3),
    "UniPC, endpoint t_min": lambda n: UniPC(steps=n, endpoint="t_min"),
    "UniPC, endpoint ode": lambda n: UniPC(steps=n, endpoint="ode"),
    "UniPC, endpoint root (denoise below 5)": lambda n: UniPC(steps=n, endpoint="root") if n >= 5 else UniPC(steps=n, endpoint="denoise"),
    "DPMSolver 2M (stdiff's default before)": lambda n: DPMSolver(steps=n),
    "DPMSolver 2M, endpoint ode": lambda n: DPMSolver(steps=n - 1, endpoint="ode"),
    "DPMSolver 3M, endpoint ode": lambda n: DPMSolver(steps=n - 1, order=3, endpoint="ode"),
}
STDIFF_DEFAULT = "UniPC (stdiff default)"


def stdiff_draw(sampler: Sampler, model) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda z: sampler.sample(model, z.shape, dtype=z.dtype, noise=z)


# --- diffusers' side -------------------------------------------------------------------------


def diffusers_settings() -> dict[str, tuple[str, dict]]:
    """name -> (scheduler class name, options): every setting tried, defaults first."""
    grids = {"default grid": {}, "trailing": {"timestep_spacing": "trailing"}, "karras": {"use_karras_sigmas": True},
             "exponential": {"use_exponential_sigmas": True}, "lu lambdas": {"use_lu_lambdas": True}}  # fmt: skip
    out = {"DPMSolverMultistep (defaults)": ("DPMSolverMultistepScheduler", {}),
           "UniPCMultistep (defaults)": ("UniPCMultistepScheduler", {})}  # fmt: skip
    solvers = [("DPM++", "DPMSolverMultistepScheduler", {}), ("DEIS", "DEISMultistepScheduler", {})]
    solvers += [(f"UniPC {b}", "UniPCMultistepScheduler", {"solver_type": b}) for b in ("bh1", "bh2")]
    for label, cls, base in solvers:
        for order in (2, 3):
            for grid, grid_options in grids.items():
                if grid == "lu lambdas" and cls != "DPMSolverMultistepScheduler":
                    continue  # only DPMSolverMultistep has it
                finals = ("zero", "sigma_min") if cls != "DEISMultistepScheduler" else (None,)  # DEIS has no choice
                for final in finals:
                    for lower in (True, False):
                        options = {**base, "solver_order": order, **grid_options, "lower_order_final": lower}
                        if final is not None:
                            options["final_sigmas_type"] = final
                        ending = f", final {final}" if final else ""
                        out[f"{label} order {order}, {grid}{ending}, lower_order_final {lower}"] = (cls, options)
    return out


def diffusers_table(sched: NoiseSchedule) -> np.ndarray:
    """``trained_betas`` whose ``alphas_cumprod`` is α(t)² on 1000 times uniform on [t_min, t_max]."""
    t = torch.linspace(sched.t_min, sched.t_max, TRAIN_TIMESTEPS, dtype=torch.float64)
    a2 = sched.alpha(t) ** 2
    return (1 - torch.cat([a2[:1], a2[1:] / a2[:-1]])).numpy()


def diffusers_draw(cls_name: str, options: dict, budget: int, model, sched: NoiseSchedule, counter: list[int],
                   convention: str = "timestep"):  # fmt: skip
    """A draw(z) running diffusers' scheduler with ``budget`` network evaluations; ``counter``
    receives the model calls made. The model is called at the time of diffusers' integer timestep
    (``timestep``, as diffusers calls a model) or at the time of the scheduler's own σ for the step
    (``sigma``, as a continuous-time model is more naturally called)."""
    import diffusers

    scheduler = getattr(diffusers, cls_name)(num_train_timesteps=TRAIN_TIMESTEPS, trained_betas=diffusers_table(sched),
                                             prediction_type="epsilon", **options)  # fmt: skip
    ac = scheduler.alphas_cumprod.numpy().astype(np.float64)
    log_ratio = 0.5 * np.log((1 - ac) / ac)  # log σ/α of each training timestep

    def eps(x: torch.Tensor, timestep, i: int) -> torch.Tensor:
        counter[0] += 1
        if convention == "timestep":
            lr = np.interp(float(timestep), np.arange(TRAIN_TIMESTEPS), log_ratio)
        else:
            lr = math.log(float(scheduler.sigmas[i]))  # diffusers' σ is σ/α
        t = sched.time_at_log_snr(torch.tensor(-2 * lr, dtype=torch.float64)).clamp(sched.t_min, sched.t_max)
        return model(x, t.expand(len(x)).to(x.dtype))

    def draw(z: torch.Tensor) -> torch.Tensor:
        with warnings.catch_warnings():  # DEIS's NumPy 2 deprecations, not ours to fix
            warnings.simplefilter("ignore", DeprecationWarning)
            scheduler.set_timesteps(budget)
            x = z * scheduler.init_noise_sigma
            for i, timestep in enumerate(scheduler.timesteps):
                x = scheduler.step(eps(scheduler.scale_model_input(x, timestep), timestep, i), timestep, x).prev_sample
        return x

    return draw


def exact_kl(draw, gp: KroneckerGP) -> float:
    try:
        return pushforward_kl(draw, gp)
    except (ValueError, RuntimeError):  # a covariance that is not one: the sampler diverged
        return math.inf


def monte_carlo_kl(draw, gp: KroneckerGP, n: int, floor: float, seed: int = 2) -> float:
    z = torch.randn(n, *gp.sample_shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x = draw(z)
    if not torch.isfinite(x).all():
        return math.inf
    return gaussian_fit_kl(x, gp.mean, gp.covariance()) - floor


# --- the tables --------------------------------------------------------------------------------


def run(n: int, budgets: list[int], with_diffusers: bool, reuse: list[dict] | None = None) -> list[dict]:
    """Every row; diffusers' rows taken from ``reuse`` (the committed table's) where it has them."""
    rows = []
    sched = schedule()
    settings = diffusers_settings() if with_diffusers else {}
    for problem, gp in problems().items():
        model = ExactDenoiser.from_gp(gp, sched)
        start = time.perf_counter()
        for name, make in STDIFF_SETTINGS.items():
            for b in budgets:
                sampler = make(b)
                kl = exact_kl(stdiff_draw(sampler, model), gp)  # first: UniPC's plan decides what it spends
                rows.append({"problem": problem, "library": "stdiff", "setting": name, "budget": b,
                             "evaluations": sampler.evaluations, "exact_kl": kl})  # fmt: skip
        kept = [r for r in reuse or [] if r["problem"] == problem and r["library"] == "diffusers"]
        if {(r["setting"], r["budget"]) for r in kept} == {(name, b) for name in settings for b in budgets}:
            rows += kept
            print(f"{problem}: diffusers' rows reused from the committed table", flush=True)
            add_monte_carlo(rows, problem, gp, model, sched, n, {}, stdiff_only=True)
            continue
        for name, (cls_name, options) in settings.items():
            for b in budgets:
                counter = [0]
                kl = exact_kl(diffusers_draw(cls_name, options, b, model, sched, counter), gp)
                rows.append({"problem": problem, "library": "diffusers", "setting": name, "budget": b,
                             "evaluations": counter[0], "exact_kl": kl})  # fmt: skip
        print(f"{problem}: {len(settings) + len(STDIFF_SETTINGS)} settings × {len(budgets)} budgets, exact KL "
              f"in {time.perf_counter() - start:.0f} s", flush=True)  # fmt: skip
        add_monte_carlo(rows, problem, gp, model, sched, n, settings)
    return rows


def best(rows: list[dict], problem: str, library: str, budget: int) -> dict:
    return min((r for r in rows if r["problem"] == problem and r["library"] == library and r["budget"] == budget
                and r["evaluations"] <= budget), key=lambda r: r["exact_kl"])  # fmt: skip


def add_monte_carlo(rows, problem, gp, model, sched, n, settings, stdiff_only: bool = False) -> None:
    """The Monte Carlo KL excess beside the exact one, for the rows the table shows (stdiff's only
    where diffusers' rows, with theirs, were reused)."""
    floor = gaussian_fit_kl_floor(gp, n, seed=1)
    budgets = {r["budget"] for r in rows if r["problem"] == problem and r["library"] == "diffusers"}
    oracle = {id(best(rows, problem, "diffusers", b)) for b in budgets}
    for r in rows:
        shown = r["setting"] in (STDIFF_DEFAULT, "DPMSolverMultistep (defaults)", "UniPCMultistep (defaults)")
        if r["problem"] != problem or not (shown or id(r) in oracle) or (stdiff_only and r["library"] != "stdiff"):
            continue
        if r["library"] == "stdiff":
            draw = stdiff_draw(STDIFF_SETTINGS[r["setting"]](r["budget"]), model)
        else:
            draw = diffusers_draw(*settings[r["setting"]], r["budget"], model, sched, [0])
        r["monte_carlo_kl"] = monte_carlo_kl(draw, gp, n, floor)


def fmt(v: float) -> str:
    if not math.isfinite(v):
        return "diverged"
    return f"{v:.3g}" if v >= 1e-3 else f"{v:.1e}"


def markdown(rows: list[dict], n: int, budgets: list[int]) -> str:
    from importlib.metadata import version

    made = f"diffusers {version('diffusers')}, torch {torch.__version__}" if any(r["library"] == "diffusers" for r in rows) else ""
    intro = (f"{__doc__.split(chr(10) * 2)[0]}\n\n`python -m stdiff.bench diffusers_kl` ({made}); every setting's exact KL at "
             "every budget is in `diffusers_kl.csv`. Columns: network evaluations. Exact KL in nats (floor 0); in "
             f"italics the Monte Carlo estimate from {n} samples (Gaussian-fit KL in excess of {n} exact samples').\n")  # fmt: skip
    titles = {"quickstart": "The quickstart's GP (d = 256)", "sampler_kl": "sampler_kl.md's GP (d = 32)",
              "held_out": "A problem no stdiff setting was chosen on (d = 256)"}  # fmt: skip
    out = [intro]
    for problem in dict.fromkeys(r["problem"] for r in rows):
        out += [f"\n## {titles.get(problem, problem)}\n", *problem_table(rows, problem, budgets)]
    return "\n".join(out) + "\n"


def problem_table(rows: list[dict], problem: str, budgets: list[int]) -> list[str]:
    mine = [r for r in rows if r["problem"] == problem]

    def setting(library: str, name: str) -> list[dict]:
        return [next(r for r in mine if r["library"] == library and r["setting"] == name and r["budget"] == b)
                for b in budgets]  # fmt: skip

    def line(label: str, picked: list[dict], mc: bool = False) -> str:
        values = [r.get("monte_carlo_kl") if mc else r["exact_kl"] for r in picked]
        cells = ["" if v is None else (f"*{fmt(v)}*" if mc else fmt(v)) for v in values]
        return f"| {label} | " + " | ".join(cells) + " |"

    out = ["| sampler | " + " | ".join(str(b) for b in budgets) + " |", "|---" * (len(budgets) + 1) + "|"]
    has_diffusers = any(r["library"] == "diffusers" for r in mine)
    oracle = [best(rows, problem, "diffusers", b) for b in budgets] if has_diffusers else []
    if has_diffusers:
        for name in ("DPMSolverMultistep (defaults)", "UniPCMultistep (defaults)"):
            out += [line(f"diffusers {name}", setting("diffusers", name)),
                    line("↳ Monte Carlo", setting("diffusers", name), mc=True)]  # fmt: skip
        out += [line("**diffusers, best setting at each budget** (oracle)", oracle),
                line("↳ Monte Carlo", oracle, mc=True)]  # fmt: skip
    for name in STDIFF_SETTINGS:
        if name == STDIFF_DEFAULT:
            out += [line(f"**stdiff {name}**", setting("stdiff", name)),
                    line("↳ Monte Carlo", setting("stdiff", name), mc=True)]  # fmt: skip
        else:
            out.append(line(f"stdiff {name}", setting("stdiff", name)))
    out.append(line("stdiff, best setting at each budget", [best(rows, problem, "stdiff", b) for b in budgets]))
    if has_diffusers:
        ratios = [r["exact_kl"] / o["exact_kl"] for r, o in zip(setting("stdiff", STDIFF_DEFAULT), oracle, strict=True)]
        out.append("| stdiff default / diffusers' best | " + " | ".join(f"{r:.2g}" for r in ratios) + " |")
        verdict = "ahead of" if all(r < 1 for r in ratios) else "NOT ahead of"
        out.append(f"\nstdiff's default is {verdict} diffusers' best setting at every budget here (largest ratio "
                   f"{max(ratios):.2g}). diffusers' best, by budget: "
                   + "; ".join(f"{b}: {o['setting']}" for b, o in zip(budgets, oracle, strict=True)) + ".")  # fmt: skip
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=20_000, help="samples for the Monte Carlo KL")
    p.add_argument("--budgets", type=int, nargs="+", default=BUDGETS)
    p.add_argument("--out", type=pathlib.Path, default=pathlib.Path(__file__).parent / "results")
    p.add_argument("--reuse-diffusers", action="store_true",
                   help="take diffusers' rows from the committed diffusers_kl.csv (same diffusers version): only stdiff's are run")
    args = p.parse_args()
    largest = max(gp.dim for gp in problems().values())
    if args.n <= largest:
        p.error(f"--n must be above the largest dimension, {largest} (a Gaussian fit needs more samples), got {args.n}")
    if any(b < 2 for b in args.budgets):
        p.error(f"--budgets must be at least 2 network evaluations each, got {args.budgets}")
    try:
        import diffusers  # noqa: F401
    except ImportError:
        print("diffusers is not installed (pip install -e \".[bench]\"): computing stdiff's rows only; the committed "
              "tables are not overwritten")  # fmt: skip
        with_diffusers = False
    else:
        with_diffusers = True
    reuse = None
    if with_diffusers and args.reuse_diffusers and (args.out / "diffusers_kl.csv").exists():
        from importlib.metadata import version

        if f"diffusers {version('diffusers')}," in (args.out / "diffusers_kl.md").read_text():
            with open(args.out / "diffusers_kl.csv") as f:
                reuse = [{**r, "budget": int(r["budget"]), "evaluations": int(r["evaluations"]), "exact_kl": float(r["exact_kl"]),
                          "monte_carlo_kl": float(r["monte_carlo_kl"]) if r["monte_carlo_kl"] else None}
                         for r in csv.DictReader(f)]  # fmt: skip
    rows = run(args.n, args.budgets, with_diffusers, reuse)
    table = markdown(rows, args.n, args.budgets)
    print(table)
    if not with_diffusers:
        return
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "diffusers_kl.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["problem", "library", "setting", "budget", "evaluations", "exact_kl",
                                               "monte_carlo_kl"])  # fmt: skip
        writer.writeheader()
        writer.writerows(rows)
    (args.out / "diffusers_kl.md").write_text(table)


if __name__ == "__main__":
    main()
