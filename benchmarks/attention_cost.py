"""Forward+backward time and peak memory of the attention variants inside a DiT, on this CPU.

    python benchmarks/attention_cost.py [--batch 8] [--width 128] [--depth 2] [--window 4] [--out benchmarks/results]

Token grids: T = 16 frames × P = 64 patches and T = 64 × P = 16, each also with T doubled. Each
configuration runs in its own process; peak memory is that process's peak resident set size
during three forward+backward passes minus its size just before them (parameters and input
included in the baseline). Times are medians. Writes ``attention_cost.csv`` and
``attention_cost.md`` (ratios to full attention) to ``--out``.
"""

import argparse
import csv
import json
import pathlib
import resource
import statistics
import subprocess
import sys
import time

GRIDS = [(16, 64), (32, 64), (64, 16), (128, 16)]  # (T, P)
VARIANTS = ["FullAttention", "TemporalAttention", "FactorizedAttention", "WindowedTemporalAttention"]


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def measure_one(variant: str, frames: int, patches: int, args) -> dict:
    import torch

    from stdiff.nn import ATTENTIONS, DiT

    torch.manual_seed(0)
    cls = ATTENTIONS[variant]
    attention = (lambda w, h: cls(w, h, window=args.window)) if variant == "WindowedTemporalAttention" else cls
    # One grid point per patch (patch_size=1): P tokens per frame.
    net = DiT((frames, patches), patch_size=1, width=args.width, depth=args.depth, heads=4, attention=attention)
    x, c = torch.randn(args.batch, frames, patches), torch.randn(args.batch)
    before = rss_mb()
    times = []
    for _ in range(3):
        start = time.perf_counter()
        net(x, c).square().mean().backward()
        times.append(time.perf_counter() - start)
        net.zero_grad(set_to_none=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    return {"variant": variant, "T": frames, "P": patches, "seconds": statistics.median(times),
            "peak_mb": round(peak - before, 1)}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--window", type=int, default=4)
    p.add_argument("--out", type=pathlib.Path, default=pathlib.Path(__file__).parent / "results")
    p.add_argument("--one", nargs=3, metavar=("VARIANT", "T", "P"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(measure_one(args.one[0], int(args.one[1]), int(args.one[2]), args)))
        return
    rows = []
    for frames, patches in GRIDS:
        for variant in VARIANTS:
            cmd = [sys.executable, __file__, "--one", variant, str(frames), str(patches), "--batch", str(args.batch),
                   "--width", str(args.width), "--depth", str(args.depth), "--window", str(args.window)]  # fmt: skip
            rows.append(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout))
            print(rows[-1], flush=True)
    full = {(r["T"], r["P"]): r for r in rows if r["variant"] == "FullAttention"}
    half = {(r["variant"], r["T"] * 2, r["P"]): r for r in rows}
    for r in rows:
        base = full[(r["T"], r["P"])]
        r["time_vs_full"] = round(r["seconds"] / base["seconds"], 3)
        r["memory_vs_full"] = round(r["peak_mb"] / base["peak_mb"], 3)
        prev = half.get((r["variant"], r["T"], r["P"]))
        r["time_x_when_T_doubles"] = round(r["seconds"] / prev["seconds"], 2) if prev and prev is not r else ""
        r["seconds"] = round(r["seconds"], 4)
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "attention_cost.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        f"DiT forward+backward, batch {args.batch}, width {args.width}, depth {args.depth}, 4 heads, window "
        f"J = {args.window}, CPU, {__import__('torch').get_num_threads()} threads. `python benchmarks/attention_cost.py`",
        "",
        "| T | P | variant | seconds | peak MiB | time / full | memory / full | time × when T doubles |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['T']} | {r['P']} | {r['variant']} | {r['seconds']} | {r['peak_mb']} | {r['time_vs_full']} | "
                     f"{r['memory_vs_full']} | {r['time_x_when_T_doubles']} |")  # fmt: skip
    (args.out / "attention_cost.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
