import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
# Every fit ends with a validation that samples (the quickstart: 2000 samples, 25 solver steps):
# the tests' short fits sample few, in few steps.
FEW_SAMPLES = ["--diagnostics.num_samples=64", "--model.sampler.init_args.steps=4"]
# Overlays are used on top of the quickstart: --config configs/quickstart.yaml --config <overlay>
OVERLAYS = [p for d in ("attention", "controls", "conditional") for p in sorted((ROOT / "configs" / d).glob("*.yaml"))]
GPU_OVERLAYS = [ROOT / "configs" / "gpu" / f"{name}.yaml" for name in ("ddp", "fsdp", "dit_b", "fast_truth")]  # after gpu/single.yaml
# The paper's CPU scale: configs/paper/cpu/<experiment>.yaml on top of configs/paper/<experiment>.yaml
PAPER_OVERLAYS = sorted((ROOT / "configs" / "paper" / "cpu").glob("*.yaml"))
# Real-data overlays need their prepared files: each is run by its example's test (tests/test_examples.py).
REAL_OVERLAYS = sorted((ROOT / "configs" / "real").glob("*.yaml"))
CONFIGS = sorted(set((ROOT / "configs").rglob("*.yaml")) - set(OVERLAYS) - set(GPU_OVERLAYS) - set(PAPER_OVERLAYS)
                 - set(REAL_OVERLAYS))  # fmt: skip
# Every preset with a known truth (a GP or a mixture of GPs): what its exact model reaches is checked
CONFIG_ARGS_GAUSSIAN = ([[c] for c in CONFIGS] + [[QUICKSTART, o] for o in OVERLAYS if "controls" not in o.parts]
                        + [[ROOT / "configs" / "gpu" / "single.yaml", o] for o in GPU_OVERLAYS]
                        + [[o.parents[1] / o.name, o] for o in PAPER_OVERLAYS])  # fmt: skip


def stdiff_subclasses(base):
    """Concrete subclasses of ``base`` defined in the stdiff package (not tests, not jsonargparse's
    ``LazyInstance_*`` wrappers), for registry-equals-subclasses checks."""
    out, todo = set(), [base]
    while todo:
        for sub in todo.pop().__subclasses__():
            todo.append(sub)
            concrete = not getattr(sub, "__abstractmethods__", None) and not sub.__name__.startswith("LazyInstance_")
            if sub.__module__.startswith("stdiff.") and concrete:
                out.add(sub)
    return out
