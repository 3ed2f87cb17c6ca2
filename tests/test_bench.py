"""The benchmark entry point runs every CPU section at a tiny size (no thresholds: the numbers
live in the README and stdiff/bench/results/)."""

import json

import pytest
import torch
from conftest import QUICKSTART

from stdiff.bench.speed import main

TINY = ["--config", str(QUICKSTART), "--repeats", "2", "--steps", "3", "--sample-steps", "2", "--sample-batch", "4",
        "--frames", "4", "--patches", "2", "--attention-batch", "2",
        "--data.init_args.batch_size=8", "--model.denoiser.init_args.backbone.init_args.depth=1", "--model.denoiser.init_args.backbone.init_args.width=16",
        "--trainer.enable_progress_bar=false"]  # fmt: skip


def test_bench_prints_and_writes_every_section(tmp_path, capsys):
    out = tmp_path / "bench.json"
    main([*TINY, "--json", str(out)])
    result = json.loads(out.read_text())
    training = result["training"]
    for key in ("stdiff_steps_per_s", "hand_written_steps_per_s", "ratio", "data_fraction"):  # overhead_ms may be < 0
        assert 0 < training[key]["min"] <= training[key]["median"] <= training[key]["max"]
    assert training["overhead_ms_per_step"]["min"] <= training["overhead_ms_per_step"]["max"]
    assert result["data"]["samples_per_s"]["median"] > 0
    rows = result["sampling"]
    assert {(r["sampler"], r["model"]) for r in rows} == {
        (s, m) for s in ("EulerMaruyama", "Ancestral", "DDIM", "Heun", "DPMSolver", "DEIS", "UniPC") for m in ("network", "oracle")
    }
    assert all(r["evaluations"] == (4 if r["sampler"] == "Heun" else 2) for r in rows)  # Heun: 2 per step
    attention = result["attention"]
    assert len(attention["rows"]) == 4 and all(r["peak_mib"] >= 0 for r in attention["rows"])
    assert set(attention["crossover"]) == {"2"}
    assert "gpu" not in result  # no CUDA here
    printed = capsys.readouterr().out
    for title in ("## training", "## data", "## sampling", "## attention", "Crossover"):
        assert title in printed
    assert result["machine"]["torch"]


def test_bench_names_a_bad_section_and_refuses_gpu_without_cuda(capsys):
    with pytest.raises(SystemExit):
        main(["--config", str(QUICKSTART), "--sections", "training,speed"])
    assert "unknown speed" in capsys.readouterr().err

    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            main(["--config", str(QUICKSTART), "--sections", "gpu"])
        assert "needs a CUDA device" in capsys.readouterr().err


def test_the_gpu_matrix_runs_its_loop_on_the_cpu():
    # The GPU section's code path, at a tiny size on the CPU (no compile: it is GPU-tested), so
    # that a GPU session does not find a bug in it.
    from stdiff.bench.speed import gpu

    overrides = [a for a in TINY[TINY.index("--data.init_args.batch_size=8") :]]
    rows = gpu.matrix([str(QUICKSTART)], overrides, steps=2, repeats=2,
                      settings=[("32-true", False), ("bf16-mixed", False)], device=torch.device("cpu"))  # fmt: skip
    assert [(r["precision"], r["compile"]) for r in rows] == [("32-true", False), ("bf16-mixed", False)]
    for r in rows:
        assert r["tokens_per_s"]["median"] > r["samples_per_s"]["median"] > 0
        assert r["peak_memory_gib"] == "n/a" and 0 < r["data_fraction"] < 1


def test_bench_refuses_an_unwritable_json_path_before_measuring(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--config", str(QUICKSTART), "--json", str(tmp_path / "missing" / "out.json")])
    assert "cannot write in" in capsys.readouterr().err


def test_every_benchmark_has_an_entry_and_each_runs_by_name(capsys):
    from pathlib import Path

    from stdiff import bench

    modules = {p.stem for p in Path(bench.__file__).parent.glob("*.py") if p.stem != "__init__" and p.stem != "__main__"}
    scripts = {p.stem for p in Path(bench.__file__).parent.glob("*.sh")}
    assert set(bench.BENCHMARKS) == modules | scripts | {"speed"}
    bench.main([])
    assert "gp_sampler" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="unknown benchmark 'nope'"):
        bench.main(["nope"])
    with pytest.raises(SystemExit, match="the speed benchmark is `python -m stdiff.bench speed"):
        bench.main(["--config", "x.yaml"])
    with pytest.raises(SystemExit) as done:  # a module's own --help, reached by name
        bench.main(["gp_sampler", "--help"])
    assert done.value.code == 0 and "python -m stdiff.bench gp_sampler" in capsys.readouterr().out
