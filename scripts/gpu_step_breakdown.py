"""Where the time of a paper-preset training step goes on a GPU (BENCHMARKS.md, "Reading the GPU
table"): host launch overhead against GPU work.

For PreResNet-32 (GN and BN) at B = 128 and 1024 on synthetic 32×32 data it prints, as JSON:
  - the host cost of launching one trivial op (``x.add_(1)``, µs);
  - a training step (``benchmarks.harness.Bench.stepper``: the public step functions, as in
    ``train``'s loop body) with the online G/N estimate on (the paper default) and off, ms per
    step;
  - the model's forward + backward alone, eager and replayed as one CUDA graph, ms: the graph
    replay is the GPU's own time, so eager − graph is host overhead;
  - the step with ``compile=True`` (torch.compile, default mode), GN at B = 128.

Usage: ``python scripts/gpu_step_breakdown.py [--device cuda] [--steps 60] [--json FILE]``
(about 80 s on an H200, the compile included). ``--device cpu --steps 1 --sizes 4 --no-compile``
is a dry run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import NEVER, PROFILES, Bench, synchronize  # noqa: E402
from paperlib.config import preset  # noqa: E402
from paperlib.data import load_dataset  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--steps", type=int, default=60, help="timed steps per measurement")
    ap.add_argument("--sizes", default="128,1024", help="batch sizes, comma-separated")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile step")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    dev = torch.device(a.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda: no CUDA device visible", file=sys.stderr)
        return 2
    cuda = dev.type == "cuda"
    bench = Bench(PROFILES["gpu"], dev, load_dataset("synthetic"), 1, False, False)
    res = {"device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__}

    def timed(fn, n, warm):
        for k in range(warm):
            fn(k)
        synchronize(dev)
        t = time.perf_counter()
        for k in range(warm, warm + n):
            fn(k)
        synchronize(dev)
        return (time.perf_counter() - t) / n * 1e3

    def report():
        print(json.dumps(res), flush=True)
        if a.json:
            a.json.write_text(json.dumps(res, indent=1))

    x = torch.zeros(1, device=dev)
    res["launch_us"] = timed(lambda k: x.add_(1), 2000, 10) * 1e3
    report()

    def model_pass(net, B, graph):
        xb = torch.randn(B, 3, 32, 32, device=dev)
        yb = torch.randint(0, 10, (B,), device=dev)

        def fb(_k=0):
            return torch.autograd.grad(F.cross_entropy(net.model(xb), yb), net.params)

        if not graph:
            return fb
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                fb()
        torch.cuda.current_stream().wait_stream(side)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            fb()
        return lambda _k: g.replay()

    for norm in ("gn", "bn"):
        for B in (int(b) for b in a.sizes.split(",")):
            cfg = preset("paper", dataset="synthetic", arch="preresnet32", norm=norm,
                         batch_size=B, device=dev.type)
            key = f"{norm}_B{B}"
            res[f"{key}_step_ms_nsr_on"] = timed(bench.stepper(cfg)[1], a.steps, 10)
            net, step = bench.stepper(cfg.replace(nsr_every=NEVER, nsr_extra_every=NEVER))
            res[f"{key}_step_ms_nsr_off"] = timed(step, a.steps, 10)
            res[f"{key}_model_ms_eager"] = timed(model_pass(net, B, False), a.steps, 5)
            if cuda:
                res[f"{key}_model_ms_cuda_graph"] = timed(model_pass(net, B, True), a.steps, 5)
            report()
    if not a.no_compile:
        B = int(a.sizes.split(",")[0])
        cfg = preset("paper", dataset="synthetic", arch="preresnet32", norm="gn", batch_size=B,
                     device=dev.type, compile=True)
        step = bench.stepper(cfg)[1]
        t = time.perf_counter()
        for k in range(10):
            step(k)
        synchronize(dev)
        res[f"gn_B{B}_compile_first_10_steps_s"] = time.perf_counter() - t
        res[f"gn_B{B}_step_ms_nsr_on_compile"] = timed(step, a.steps, 2)
        report()
    return 0


if __name__ == "__main__":
    sys.exit(main())
