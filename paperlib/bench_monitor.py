"""``make bench`` item 6: what :class:`paperlib.NoiseMonitor` costs in a training step.

Each row is a paired ratio measured in this run (``bench.interleaved``, median over repeats):

* accumulation: a plain loop step (k micro-batch backward passes, ``optimizer.step``) with the
  monitor's parameter hooks and ``mon.step()`` / the same step without the monitor;
* DDP: a 2-rank gloo step on the CPU with the monitor's communication hook and its scalar
  all-reduce / the same DDP step with DDP's default all-reduce (two processes, one thread each);
* the half-batch split (``sgd_step(measure=True)``: two half passes) / ``sgd_step`` without G/N,
  as item 3 measures it inside paperlib's loop, here on the same net as the accumulation row.

Target ≤ 2 % for the two monitor rows: they only read gradients the step computes anyway.
"""

from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from .models import build_model
from .monitor import NoiseMonitor
from .steps import Sampling, set_grad, sgd_step

# (arch, norm, resolution, B, k): the cpu profile's PreResNet-8 of item 3; quick: tiny.
SIZES = {"cpu": ("preresnet8", "gn", 16, 128, 4), "gpu": ("preresnet32", "gn", 32, 128, 4),
         "quick": ("convnet", "gn", 8, 8, 2)}
POPULATION = 50_000


def _setup(arch, norm, r, B, device, seed=0):
    model = build_model(arch, norm=norm).to(device)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, 3, r, r, generator=g).to(device)
    y = torch.randint(0, 10, (B,), generator=g).to(device)
    return model, x, y


def accumulation_stepper(model, x, y, k: int, mon: NoiseMonitor | None = None):
    """``step(_k)``: one plain-loop step, k micro-batches (loss / k), the monitor, SGD."""
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)

    def step(_k: int) -> None:
        for xm, ym in zip(x.chunk(k), y.chunk(k), strict=True):
            (F.cross_entropy(model(xm), ym) / k).backward()
        if mon is not None:
            mon.step(lr=1e-3)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def _ddp_worker(rank: int, world: int, init: str, out: str, size: tuple, timing: dict) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from .bench import interleaved

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    arch, norm, r, B, _ = size
    model, x, y = _setup(arch, norm, r, B // world, "cpu", seed=rank)
    plain, watched = DDP(copy.deepcopy(model)), DDP(model)
    mon = NoiseMonitor(watched, batch_size=B, sampling=Sampling.shuffled(POPULATION))
    times = interleaved({"on": accumulation_stepper(watched, x, y, 1, mon),
                         "off": accumulation_stepper(plain, x, y, 1)},
                        torch.device("cpu"), **timing)
    if rank == 0:
        Path(out).write_text(json.dumps(times))
    dist.destroy_process_group()


def bench_monitor(b) -> list:
    """Item 6 rows for the Bench ``b`` (see the module docstring)."""
    from .bench import Row, _net, interleaved, paired_ratio

    p = b.profile
    key = "quick" if b.quick else p.name
    arch, norm, r, B, k = SIZES[key]
    timing = dict(warmup=p.warmup, repeats=p.repeats, steps=p.steps)
    setting = _net(arch, norm, r, B)
    rows = []

    base, x, y = _setup(arch, norm, r, B, b.device)
    watched, plain = copy.deepcopy(base), copy.deepcopy(base)
    mon = NoiseMonitor(watched, batch_size=B, sampling=Sampling.shuffled(POPULATION))
    times = interleaved({"on": accumulation_stepper(watched, x, y, k, mon),
                         "off": accumulation_stepper(plain, x, y, k)}, b.device, **timing)
    ratio, note = paired_ratio(times, "on", "off")
    mon.remove()
    rows.append(Row("6", f"NoiseMonitor, accumulation (k={k} micro-batches): overhead",
                    setting + f" k={k}", 100 * (ratio - 1), "%", "≤ 2 %",
                    100 * (ratio - 1) <= 2, note + f"; {mon.measured} steps measured"))

    if b.device.type == "cpu":
        import torch.multiprocessing as mp

        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "times.json"
            mp.spawn(_ddp_worker, args=(2, str(Path(tmp) / "init"), str(out),
                                        (arch, norm, r, B, k), timing), nprocs=2, join=True)
            times = json.loads(out.read_text())
        ratio, note = paired_ratio(times, "on", "off")
        rows.append(Row("6", "NoiseMonitor, 2-rank DDP (gloo, comm hook + 2-scalar all-reduce): "
                        "overhead", setting + " (B/2 per rank)", 100 * (ratio - 1), "%", "≤ 2 %",
                        100 * (ratio - 1) <= 2, note + "; one thread per rank"))
    else:
        rows.append(Row("6", "NoiseMonitor, 2-rank DDP: overhead", setting, None, "%",
                        note="CPU profile only (gloo)"))

    loss_fn = torch.nn.CrossEntropyLoss(reduction="none")
    sampling = Sampling.shuffled(POPULATION)
    nets = {"on": copy.deepcopy(base), "off": copy.deepcopy(base)}
    opts = {n: torch.optim.SGD([q for q in m.parameters() if q.requires_grad], lr=1e-3)
            for n, m in nets.items()}

    def split(name: str, measure: bool):
        def step(_k: int) -> None:
            stats = sgd_step(nets[name], loss_fn, x, y, sampling=sampling, measure=measure)
            set_grad([q for q in nets[name].parameters() if q.requires_grad], stats.grad)
            opts[name].step()
        return step

    times = interleaved({"on": split("on", True), "off": split("off", False)}, b.device,
                        **timing)
    ratio, note = paired_ratio(times, "on", "off")
    rows.append(Row("6", "half-batch split, sgd_step(measure=True) / sgd_step (one process, "
                    "one micro-batch): overhead", setting, 100 * (ratio - 1), "%", "", None,
                    note + "; as item 3, on this net"))
    return rows
