"""The benchmark entry point runs at a tiny size (no thresholds: numbers live in the README)."""

import json

from conftest import QUICKSTART

from stdiff.bench import main


def test_bench_prints_and_writes_every_figure(tmp_path, capsys):
    out = tmp_path / "bench.json"
    main(["--config", str(QUICKSTART), "--steps", "3", "--repeats", "1", "--json", str(out),
          "--data.init_args.batch_size=8", "--model.backbone.init_args.depth=1"])  # fmt: skip
    result = json.loads(out.read_text())
    for key in ("stdiff_steps_per_s", "hand_written_steps_per_s", "ratio", "data_fraction", "generation_samples_per_s"):
        assert result[key]["median"] > 0 and result[key]["min"] <= result[key]["median"] <= result[key]["max"]
    assert "| ratio |" in capsys.readouterr().out
