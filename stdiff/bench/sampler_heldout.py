"""stdiff's default sampler against diffusers' on Gaussian problems it was not tuned on.

    pip install -e ".[bench]"     # diffusers
    python -m stdiff.bench sampler_heldout [--split held_out] [--numbers 192 193] [--jobs 2] [--out stdiff/bench/results]

The problems are ``sampling_problems.generate()``: 256 seeded Gaussian problems, 0-191 for tuning
stdiff's defaults, 192-255 held out and run only to report. On each, at
every budget of ``BUDGETS`` network evaluations, the exact KL (``sampling_problems.eigen_kl``, floor
0) of stdiff's default ``UniPC(steps=b)`` with the model that carries the data's mean and scale,
and of every diffusers setting of ``diffusers_kl.diffusers_settings()`` (DPM-Solver++ 2M/3M, UniPC
bh1/bh2, DEIS; every time grid; final sigma; lower-order final) under two conventions for calling
a continuous-time model from diffusers' discrete scheduler: ``timestep``, at the time of the
integer timestep diffusers passes (as ``diffusers_kl`` does), and ``sigma``, at the time whose
noise level is the scheduler's own σ for that step. "diffusers' best" is the best of all of them
at each (problem, budget), chosen after the fact (an oracle no user has). Budgets count network
evaluations per sample; UniPC's plan adds a probe of 2 calls (on 1 row and d) where d <= 560, else 66
calls on 16 or 17 rows, per ``sample`` call, whatever the batch (``stdiff.sampling.probe.probe``), and may spend fewer
evaluations than the budget. diffusers' rows are cached in ``sampler_heldout_diffusers.csv.gz`` (about 27 minutes per 64
problems on 2 cores, written after every problem); ``--rerun-diffusers`` recomputes them.

Writes ``sampler_heldout.md`` (the distribution of stdiff / diffusers-best over (problem, budget)
pairs: median, 90th percentile, worst and the problems behind the worst; monotonicity in the
budget) and ``sampler_heldout.csv``.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import importlib
import math
import pathlib
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch

from stdiff.bench.diffusers_kl import BUDGETS, diffusers_draw, diffusers_settings
from stdiff.bench.sampling_problems import EigenModel, Problem, eigen_kl, generate, problem
from stdiff.sampling import UniPC

RESULTS = pathlib.Path(__file__).parent / "results"
CONVENTIONS = ("timestep", "sigma")


def safe_kl(draw, p: Problem) -> float:
    try:
        return eigen_kl(draw, p)
    except (ValueError, RuntimeError, IndexError, AssertionError):  # a singular solve, a step past its table or an order-0 step inside a scheduler
        return math.inf


def stdiff_kl(p: Problem, budget: int, make=lambda b: UniPC(steps=b)) -> float:
    model, sampler = EigenModel(p), make(budget)
    return safe_kl(lambda z: sampler.sample(model, z.shape, dtype=z.dtype, noise=z), p)


def stdiff_problem(number: int) -> list[dict]:
    """stdiff's default on problem ``number`` at every budget, the KL its plan expected and the
    evaluations it spent, beside the same with the endpoint fixed to each of ``ENDPOINT_CHECKS``."""
    torch.set_num_threads(1)
    p, model, rows = problem(number), EigenModel(problem(number)), []
    for b in BUDGETS:
        sampler = UniPC(steps=b)
        row = {"problem": number, "split": p.split, "budget": b,
               "stdiff": safe_kl(lambda z, s=sampler: s.sample(model, z.shape, dtype=z.dtype, noise=z), p)}  # fmt: skip
        plan = sampler.planned or {}
        row.update(expected=plan.get("kl", math.nan), spent=sampler.evaluations, grid_steps=plan.get("steps"),
                   method=plan.get("method"), order=plan.get("order"), skew=plan.get("skew"), rho=plan.get("rho"),
                   endpoint=_endpoint_label(sampler.resolved))  # fmt: skip
        for end in ENDPOINT_CHECKS:
            row[f"stdiff_{end}"] = stdiff_kl(p, b, lambda n, end=end: UniPC(steps=n, endpoint=end))
        row["torch"] = torch.__version__  # the version that made the row, so that --render can name it anywhere
        rows.append(row)
    return rows


def _endpoint_label(endpoint) -> str:
    return endpoint if isinstance(endpoint, str) else f"fitted, {len(endpoint)} evaluations"


# --- diffusers -----------------------------------------------------------------------------------


def diffusers_rows(number: int) -> list[dict]:
    """Every diffusers setting, convention and budget on problem ``number``."""
    import diffusers

    torch.set_num_threads(1)
    p = problem(number)
    model, rows = EigenModel(p), []
    for name, (cls_name, options) in diffusers_settings().items():
        for convention in CONVENTIONS:
            for b in BUDGETS:
                counter = [0]
                kl = safe_kl(diffusers_draw(cls_name, options, b, model, p.schedule, counter, convention), p)
                rows.append({"problem": number, "setting": name, "convention": convention, "budget": b,
                             "evaluations": counter[0], "exact_kl": kl, "diffusers": diffusers.__version__})  # fmt: skip
    return rows


def load_diffusers(path: pathlib.Path, numbers: list[int], jobs: int, rerun: bool) -> list[dict]:
    """diffusers' rows for ``numbers``, from the cache where it has them."""
    cached = []
    if not rerun and path.exists():
        with gzip.open(path, "rt") as f:
            cached = list(csv.DictReader(f))
    have = {int(r["problem"]) for r in cached}
    missing = [n for n in numbers if n not in have]
    if missing:
        import diffusers

        print(f"diffusers {diffusers.__version__}: {len(missing)} problems × {len(diffusers_settings())} settings × "
              f"{len(CONVENTIONS)} conventions × {len(BUDGETS)} budgets", flush=True)  # fmt: skip
        start = time.perf_counter()
        work = importlib.import_module("stdiff.bench.sampler_heldout").diffusers_rows  # by its module's name: run as __main__, workers could not find it

        with ProcessPoolExecutor(jobs) as pool:
            for k, rows in enumerate(pool.map(work, missing), 1):
                cached += [{key: str(v) for key, v in r.items()} for r in rows]
                _write_cache(path, cached)  # after every problem: an interrupted sweep resumes where it stopped
                print(f"  {k}/{len(missing)} problems, {time.perf_counter() - start:.0f} s", flush=True)
    return [{**r, "problem": int(r["problem"]), "budget": int(r["budget"]), "evaluations": int(r["evaluations"]),
             "exact_kl": float(r["exact_kl"])} for r in cached if int(r["problem"]) in numbers]  # fmt: skip


def _write_cache(path: pathlib.Path, rows: list[dict]) -> None:
    rows = sorted(rows, key=lambda r: int(r["problem"]))
    partial = path.with_name(path.name + ".partial")
    with gzip.open(partial, "wt", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    partial.replace(path)


def diffusers_best(rows: list[dict]) -> dict[tuple[int, int], dict]:
    """(problem, budget) -> the best diffusers row using at most that many evaluations."""
    best: dict[tuple[int, int], dict] = {}
    for r in rows:
        key = (r["problem"], r["budget"])
        if r["evaluations"] <= r["budget"] and r["exact_kl"] < best.get(key, {"exact_kl": math.inf})["exact_kl"]:
            best[key] = r
    return best


# --- the table ----------------------------------------------------------------------------------

ENDPOINT_CHECKS = ("t_min", "denoise")  # the auto endpoint is compared with these at the same budget
DEFAULTS = ("DPMSolverMultistep (defaults)", "UniPCMultistep (defaults)")


def stdiff_rows(problems: list[Problem], diffusers: list[dict], jobs: int = 1) -> list[dict]:
    """One row per (problem, budget): stdiff's default and its fixed-endpoint variants
    (``stdiff_problem``), diffusers' best (either convention) and defaults (integer-timestep
    convention, as diffusers calls a model)."""
    best = diffusers_best(diffusers)
    defaults = {(r["problem"], r["budget"], r["setting"]): r["exact_kl"] for r in diffusers
                if r["setting"] in DEFAULTS and r["convention"] == "timestep"}  # fmt: skip
    work = importlib.import_module("stdiff.bench.sampler_heldout").stdiff_problem  # workers find it by name
    with ProcessPoolExecutor(jobs) as pool:
        rows = [r for rs in pool.map(work, [p.number for p in problems]) for r in rs]
    for row in rows:
        key = (row["problem"], row["budget"])
        if key in best:
            theirs = best[key]
            row.update(diffusers_best=theirs["exact_kl"], diffusers_setting=theirs["setting"],
                       diffusers_convention=theirs["convention"])  # fmt: skip
            for name in DEFAULTS:
                row[name] = defaults[(*key, name)]
    return rows


def summary(rows: list[dict]) -> dict:
    """The distribution of stdiff / diffusers-best over (problem, budget) pairs, and the checks."""
    ratios = np.array([r["stdiff"] / r["diffusers_best"] for r in rows])
    order = np.argsort(-ratios)
    by_problem: dict[int, list[float]] = {}
    for r in rows:
        by_problem.setdefault(r["problem"], []).append(r["stdiff"])
    rising = {n: [(BUDGETS[i], BUDGETS[i + 1], v[i], v[i + 1]) for i in range(len(v) - 1) if v[i + 1] > 1.01 * v[i]]
              for n, v in by_problem.items()}  # fmt: skip
    end_worse = [r for r in rows if r["stdiff"] > 1.01 * min(r[f"stdiff_{e}"] for e in ENDPOINT_CHECKS)]
    return {"pairs": len(rows), "at_most_1": float(np.mean(ratios <= 1)), "above_1_5": int(np.sum(ratios > 1.5)),
            "median": float(np.median(ratios)), "p90": float(np.quantile(ratios, 0.9)), "worst": float(ratios.max()),
            "worst_pairs": [(rows[i]["problem"], rows[i]["budget"], float(ratios[i])) for i in order[:5]],
            "rising": {n: v for n, v in rising.items() if v}, "endpoint_worse": end_worse,
            "endpoint_worse_than_both": [r for r in end_worse if r["stdiff"] > 1.01 * max(r[f"stdiff_{e}"] for e in ENDPOINT_CHECKS)],
            "defaults": {name: np.array([r["stdiff"] / r[name] for r in rows]) for name in DEFAULTS},
            "expected": float(np.median([r["expected"] / r["stdiff"] for r in rows if r["stdiff"] > 0])),
            "fewer": sum(r["spent"] < r["budget"] for r in rows)}  # fmt: skip


def fmt(v: float) -> str:
    return "diverged" if not math.isfinite(v) else (f"{v:.3g}" if v >= 1e-3 else f"{v:.1e}")


def markdown(rows: list[dict], versions: str) -> str:
    out = [__doc__.split("\n\n")[0], "", (f"`python -m stdiff.bench sampler_heldout`; {versions}. Every row is in "
           "`sampler_heldout.csv`; every diffusers setting, convention and budget in `sampler_heldout_diffusers.csv.gz`. "
           "Exact KL of each sampler's law with the exact model (no sampling noise); budgets count network evaluations "
           "per sample (UniPC's plan adds a probe, 2 calls on 1 and d rows where d <= 560, else 66 calls on 16 or 17 "
           "rows, per `sample` call, and may spend fewer than the budget). Problems 0-191 chose stdiff's settings "
           "(`python -m stdiff.bench sampler_tuning`, and the fixes of rounds three and four); problems 192-255 were "
           "fixed, and diffusers run on them, before stdiff was scored there, once."), ""]  # fmt: skip
    for split in ("held_out", "tuning"):
        mine = [r for r in rows if r["split"] == split and "diffusers_best" in r]
        if not mine:
            continue
        s = summary(mine)
        title = "Held out (never looked at while choosing)" if split == "held_out" else "Tuning problems (the defaults were chosen here)"
        out += [f"## {title}: {len({r['problem'] for r in mine})} problems × {len(BUDGETS)} budgets", "",
                f"stdiff's default / diffusers' best: **median {s['median']:.3g}, 90th percentile {s['p90']:.3g}, worst "
                f"{s['worst']:.3g}**; at most 1 on {100 * s['at_most_1']:.0f} % of the {s['pairs']} pairs, above 1.5 on "
                f"{s['above_1_5']}. Against diffusers' defaults (DPM-Solver++ 2M, UniPC): median "
                + ", ".join(f"{np.median(v):.2g}" for v in s["defaults"].values()) + ", worst "
                + ", ".join(f"{v.max():.2g}" for v in s["defaults"].values()) + ".", "",
                "| evaluations | " + " | ".join(map(str, BUDGETS)) + " |", "|---" * (len(BUDGETS) + 1) + "|"]  # fmt: skip
        for label, q in (("median", 0.5), ("90th percentile", 0.9), ("worst", 1.0)):
            cells = [np.quantile([r["stdiff"] / r["diffusers_best"] for r in mine if r["budget"] == b], q) for b in BUDGETS]
            out.append(f"| ratio, {label} | " + " | ".join(f"{c:.2g}" for c in cells) + " |")
        share = [np.mean([r["stdiff"] <= r["diffusers_best"] for r in mine if r["budget"] == b]) for b in BUDGETS]
        out += ["| share ≤ 1 | " + " | ".join(f"{100 * c:.0f} %" for c in share) + " |", "",
                "The worst pairs (problem, evaluations, ratio; stdiff's KL against diffusers' best and its setting):", ""]  # fmt: skip
        labels = {p.number: p.label() for p in generate(split)}
        for n, b, ratio in s["worst_pairs"]:
            r = next(r for r in mine if r["problem"] == n and r["budget"] == b)
            out.append(f"- {labels[n]}: at {b}, {ratio:.3g} ({fmt(r['stdiff'])} against {fmt(r['diffusers_best'])}, "
                       f"{r['diffusers_setting']}, {r['diffusers_convention']} convention)")  # fmt: skip
        rising = s["rising"]
        big = sum(k > 1e-3 for v in rising.values() for _, _, _, k in v)
        out += ["", f"Monotone in the budget (within 1 %) on {len(mine) // len(BUDGETS) - len(rising)} of "
                f"{len(mine) // len(BUDGETS)} problems; {sum(map(len, rising.values()))} rises, {big} of them to more "
                "than 10⁻³ nats" + (" (budgets, KL before → after): " + "; ".join(
                    f"#{n} " + ", ".join(f"{a}→{b} {fmt(x)} → {fmt(y)}" for a, b, x, y in v) for n, v in rising.items())
                    if rising else "")
                + f". stdiff's default is above the better of the same sampler ending on `t_min` or `denoise` (same "
                f"budget) on {len(s['endpoint_worse'])} of {s['pairs']} pairs, above both on "
                f"{len(s['endpoint_worse_than_both'])}. The KL its plan expected is a median {s['expected']:.2g} × the "
                f"draw's; it spent fewer evaluations than the budget on {s['fewer']} pairs.", ""]  # fmt: skip
    return "\n".join(out) + "\n"


def made_with(diffusers_versions: list[str], rows: list[dict]) -> str:
    """The versions that made the rows (recorded in them, not the ones running now)."""
    return f"diffusers {', '.join(diffusers_versions)}, torch {', '.join(sorted({r['torch'] for r in rows}))}"


def read_rows(path: pathlib.Path) -> list[dict]:
    """The rows of a written ``sampler_heldout.csv``, numbers as numbers."""
    text = {"split", "diffusers_setting", "diffusers_convention", "endpoint", "method", "torch"}
    with open(path) as f:
        rows = [{k: (v if k in text else float(v) if v != "" else None) for k, v in r.items()} for r in csv.DictReader(f)]
    for r in rows:
        r["problem"], r["budget"], r["spent"] = int(r["problem"]), int(r["budget"]), int(r["spent"])
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--split", choices=["held_out", "tuning", "all"], default="all")
    p.add_argument("--numbers", type=int, nargs="+", default=None, help="only these problems (a quick look; writes nothing)")
    p.add_argument("--jobs", type=int, default=2, help="processes")
    p.add_argument("--rerun-diffusers", action="store_true")
    p.add_argument("--out", type=pathlib.Path, default=RESULTS)
    p.add_argument("--render", action="store_true", help="rewrite sampler_heldout.md from sampler_heldout.csv, running nothing")
    args = p.parse_args()
    if args.render:
        rows = read_rows(args.out / "sampler_heldout.csv")
        made_by = sorted({r["diffusers"] for r in load_diffusers(args.out / "sampler_heldout_diffusers.csv.gz", [rows[0]["problem"]], 1, False)})
        (args.out / "sampler_heldout.md").write_text(markdown(rows, made_with(made_by, rows)))
        return
    problems = generate(None if args.split == "all" else args.split)
    if args.numbers is not None:
        unknown = sorted(set(args.numbers) - {q.number for q in problems})
        if unknown:
            p.error(f"--numbers: no problem {unknown} in split {args.split} (0-{len(generate()) - 1})")
        problems = [q for q in problems if q.number in args.numbers]
    diffusers = load_diffusers(args.out / "sampler_heldout_diffusers.csv.gz", [q.number for q in problems], args.jobs,
                               args.rerun_diffusers)  # fmt: skip
    made_by = sorted({r["diffusers"] for r in diffusers})  # the version each cached row was made with
    rows = stdiff_rows(problems, diffusers, args.jobs)
    table = markdown(rows, made_with(made_by, rows))
    print(table)
    if args.split == "all" and args.numbers is None:
        args.out.mkdir(parents=True, exist_ok=True)
        with open(args.out / "sampler_heldout.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]) + [k for k in rows[-1] if k not in rows[0]])
            writer.writeheader()
            writer.writerows(rows)
        (args.out / "sampler_heldout.md").write_text(table)


if __name__ == "__main__":
    main()
