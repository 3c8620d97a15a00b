"""What :class:`paperlib.NoiseMonitor` costs in a training step of the user's own loop.

Each row is a paired ratio measured in this run (``harness.interleaved``, median over repeats):

* accumulation: a plain loop step (k micro-batch backward passes, ``optimizer.step``) with the
  monitor's parameter hooks and ``mon.step()`` / the same step without the monitor;
* the monitor's own time per step on that net, hooks and ``mon.step()`` apart (:func:`own_cost`;
  CPU time on the CPU, which a busy machine inflates less than the ratio's wall time), and its
  share of the step without the monitor;
* DDP: a 2-rank gloo step on the CPU with the monitor's communication hook (which also carries the
  ranks' two scalars in the last bucket's all-reduce) / the same DDP step with DDP's default
  all-reduce (two processes, one thread each);
* the every-step accumulation and DDP rows again at CIFAR-10's native 32×32 (``NATIVE``): the
  same net, B and k, so the same monitor work (per tensor and micro-batch, and per parameter)
  against four times the compute of the 16×16 step;
* both again with ``NoiseMonitor(every=EVERY)``, which measures one optimizer step in EVERY and
  detaches its hooks for the others; each timed call is EVERY steps, so that it holds one
  measured step wherever the count starts;
* the half-batch split (``sgd_step(measure=True)``: two half passes) / ``sgd_step`` without G/N,
  as the online-nsr rows measure it inside paperlib's loop, here on the accumulation row's net.

Target ≤ 2 % for the monitor rows: they only read gradients the step computes anyway. A few
percent is within the pairs' noise on a CPU, so these rows take ``OVERHEAD_REPEATS`` × the
profile's repeats, give the median's 95 % interval and hold only when all of it is ≤ 2 %; the
null row times the plain step against an identical copy of itself in the same interleaving, so
its interval shows what the harness resolves (it should contain 0).
"""

from __future__ import annotations

import copy
import gc
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.harness import Row, interleaved, net_label, overhead_row, synchronize
from paperlib import NoiseMonitor, Sampling, set_grad, sgd_step
from paperlib.models import build_model, trained_parameters

GROUP = "monitor"  # the rows' name in the table and in --only

# (arch, norm, resolution, B, k): the cpu profile's PreResNet-8 of the online-nsr rows; quick: tiny.
SIZES = {"cpu": ("preresnet8", "gn", 16, 128, 4), "gpu": ("preresnet32", "gn", 32, 128, 4),
         "quick": ("convnet", "gn", 8, 8, 2)}
# The same nets at 32×32, the resolution of the data (the cpu profile's 16×16 shrinks the input,
# not the parameters: the monitor's cost stays, the step's compute falls by 4×). Timed one step
# per repeat, with as many repeats as the rows above time steps (a 16×16 repeat is 3 steps); none
# for "gpu" (already 32×32).
NATIVE = {"cpu": ("preresnet8", "gn", 32, 128, 4), "quick": ("convnet", "gn", 16, 8, 2)}
POPULATION = 50_000
OVERHEAD_REPEATS = 6  # × the profile's repeats for the ≤ 2 % rows (cpu: 90 pairs)
TARGET_PCT = 2.0
EVERY = 4  # the every= rows: one measured step in EVERY


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


def in_groups(step, m: int):
    """``step`` run m times per call (a timed call then holds one step of an ``every=m``
    monitor's cycle of m, wherever it starts)."""
    def steps(k: int) -> None:
        for j in range(m):
            step(m * k + j)

    return steps


def every_times(watched, plain, x, y, k: int, B: int, device: torch.device,
                timing: dict) -> tuple[dict[str, list[float]], int]:
    """(times of ``watched`` under ``NoiseMonitor(every=EVERY)`` ("on") and of ``plain``
    ("off"), each timed call EVERY steps (:func:`in_groups`); steps the monitor measured)."""
    mon = NoiseMonitor(watched, batch_size=B, sampling=Sampling.shuffled(POPULATION),
                       every=EVERY)
    times = interleaved({"on": in_groups(accumulation_stepper(watched, x, y, k, mon), EVERY),
                         "off": in_groups(accumulation_stepper(plain, x, y, k), EVERY)},
                        device, **timing)
    mon.remove()
    return times, mon.measured


def own_cost(model, B: int, k: int, device: torch.device, repeats: int) -> tuple[float, float]:
    """(µs per step of the monitor's hooks, µs of ``mon.step()``) on ``model``'s parameters.

    The backward passes are stand-ins, loss = Σ_p ⟨c_jp, p⟩ for micro-batch j: autograd calls
    the hook of every parameter tensor as on the net, with almost no compute of its own. The
    hooks' time is the median over ``repeats`` of (k stand-in passes with the monitor) − (the
    same without), paired; ``step()``'s is its median. CPU time (``time.process_time``) on the
    CPU, wall time with synchronization on a GPU.
    """
    on, off = copy.deepcopy(model), copy.deepcopy(model)
    mon = NoiseMonitor(on, batch_size=B, sampling=Sampling.shuffled(POPULATION))
    g = torch.Generator().manual_seed(1)
    cs = [[torch.randn(p.shape, generator=g).to(device) for p in trained_parameters(model)]
          for _ in range(k)]
    clock = time.process_time if device.type == "cpu" else time.perf_counter

    def passes(net) -> float:
        ps = trained_parameters(net)
        synchronize(device)
        t0 = clock()
        for c in cs:
            (sum((p * cj).sum() for p, cj in zip(ps, c, strict=True)) / k).backward()
        synchronize(device)
        return clock() - t0

    hooks, steps = [], []
    for r in range(repeats + 5):  # the first 5 are warm-up
        t_on, t_off = passes(on), passes(off)
        t0 = clock()
        mon.step(lr=1e-3)
        synchronize(device)
        if r >= 5:
            hooks.append(t_on - t_off)
            steps.append(clock() - t0)
        on.zero_grad(set_to_none=True)
        off.zero_grad(set_to_none=True)
    mon.remove()
    return 1e6 * statistics.median(hooks), 1e6 * statistics.median(steps)


def _ddp_worker(rank: int, world: int, init: str, out: str, size: tuple, timing: dict,
                with_every: bool = True) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    arch, norm, r, B, _ = size
    model, x, y = _setup(arch, norm, r, B // world, "cpu", seed=rank)
    plain, twin, watched = DDP(copy.deepcopy(model)), DDP(copy.deepcopy(model)), DDP(model)
    mon = NoiseMonitor(watched, batch_size=B, sampling=Sampling.shuffled(POPULATION))
    times = interleaved({"on": accumulation_stepper(watched, x, y, 1, mon),
                         "off": accumulation_stepper(plain, x, y, 1),
                         "twin": accumulation_stepper(twin, x, y, 1)},
                        torch.device("cpu"), **timing)
    sparse = DDP(copy.deepcopy(model)) if with_every else None
    every, measured = (every_times(sparse, plain, x, y, 1, B, torch.device("cpu"), timing)
                       if with_every else (None, 0))
    if rank == 0:
        Path(out).write_text(json.dumps({"step": times, "every": every, "measured": measured}))
    # Tear down in order: the DDP reducers (and the monitor's comm hook) before their process
    # group, and that group only once both ranks are done with it; a rank that left its
    # reducers to interpreter exit after the other rank had gone aborted once in a CI run
    # ("terminate called without an active exception", SIGABRT).
    mon.remove()
    del plain, twin, watched, sparse, mon, times, every
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


def accumulation_times(base, x, y, k: int, B: int, device: torch.device,
                       timing: dict) -> tuple[dict[str, list[float]], int]:
    """(times of the accumulation step with the monitor ("on"), without ("off") and of an
    identical copy without ("twin", the null), interleaved; steps the monitor measured)."""
    watched, plain, twin = (copy.deepcopy(base) for _ in range(3))
    mon = NoiseMonitor(watched, batch_size=B, sampling=Sampling.shuffled(POPULATION))
    times = interleaved({"on": accumulation_stepper(watched, x, y, k, mon),
                         "off": accumulation_stepper(plain, x, y, k),
                         "twin": accumulation_stepper(twin, x, y, k)}, device, **timing)
    mon.remove()
    return times, mon.measured


def ddp_times(size: tuple, timing: dict, with_every: bool) -> dict:
    """The 2-rank gloo DDP timings of :func:`_ddp_worker` (rank 0's)."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "times.json"
        mp.spawn(_ddp_worker, args=(2, str(Path(tmp) / "init"), str(out), size, timing,
                                    with_every), nprocs=2, join=True)
        return json.loads(out.read_text())


def rows(b) -> list[Row]:
    """The monitor's rows for the Bench ``b`` (see the module docstring)."""
    p = b.profile
    key = "quick" if b.quick else p.name
    arch, norm, r, B, k = SIZES[key]
    timing = dict(warmup=p.warmup, repeats=p.repeats, steps=p.steps)
    many = dict(timing, repeats=OVERHEAD_REPEATS * p.repeats)
    setting = net_label(arch, norm, r, B)
    result = []

    base, x, y = _setup(arch, norm, r, B, b.device)
    times, measured = accumulation_times(base, x, y, k, B, b.device, many)
    result.append(overhead_row(GROUP, f"NoiseMonitor, accumulation (k={k} micro-batches): "
                               "overhead", setting + f" k={k}", times, "on", "off", TARGET_PCT,
                               f"{measured} steps measured"))
    result.append(overhead_row(GROUP, "null: the same plain step / an identical copy of it "
                               "(what the harness resolves)", setting + f" k={k}", times, "twin",
                               "off", None))
    every, measured = every_times(copy.deepcopy(base), copy.deepcopy(base), x, y, k, B,
                                  b.device, many)
    result.append(overhead_row(GROUP, f"NoiseMonitor(every={EVERY}), accumulation (k={k}): "
                               "overhead", setting + f" k={k}", every, "on", "off", TARGET_PCT,
                               f"{measured} steps measured, 1 in {EVERY}; timed in groups of "
                               f"{EVERY} steps"))
    repeats = 20 * p.repeats
    hooks_us, step_us = own_cost(base, B, k, b.device, repeats)
    calls = k * len(trained_parameters(base))
    share = 100 * (hooks_us + step_us) * 1e-6 / statistics.median(times["off"])
    clock = "CPU time" if b.device.type == "cpu" else "wall time"
    result.append(Row(GROUP, f"NoiseMonitor, accumulation (k={k}): its own time per step "
                      "(hooks + step())", setting + f" k={k}", hooks_us + step_us, "µs", "", None,
                      f"{calls} hook calls {hooks_us:.0f} µs + step() {step_us:.0f} µs ({clock}, "
                      f"medians over {repeats}); {share:.2f} % of the accumulation row's step "
                      "without the monitor"))

    native = NATIVE.get(key)
    # one step per repeat and the repeats × steps: as many timed steps per side as the rows above
    one_step = dict(many, steps=1, repeats=many["repeats"] * many["steps"])
    if native is not None:
        n_arch, n_norm, n_r, n_B, n_k = native
        n_setting = net_label(n_arch, n_norm, n_r, n_B) + f" k={n_k}"
        same = (f"the net, B and k of the {r}x{r} rows at {(n_r // r) ** 2}x the pixels"
                + ("; CIFAR-10's own resolution" if n_r == 32 else ""))
        n_base, n_x, n_y = _setup(n_arch, n_norm, n_r, n_B, b.device)
        n_times, n_measured = accumulation_times(n_base, n_x, n_y, n_k, n_B, b.device, one_step)
        result.append(overhead_row(GROUP, f"NoiseMonitor, accumulation (k={n_k}), inputs at "
                                   f"{n_r}x{n_r}: overhead", n_setting, n_times, "on", "off",
                                   TARGET_PCT, f"{n_measured} steps measured; {same}"))
        result.append(overhead_row(GROUP, f"null at {n_r}x{n_r}: the same plain step / an "
                                   "identical copy of it", n_setting, n_times, "twin", "off",
                                   None))

    if b.device.type == "cpu":
        got = ddp_times((arch, norm, r, B, k), many, with_every=True)
        result.append(overhead_row(GROUP, "NoiseMonitor, 2-rank DDP (gloo, comm hook; its 2 "
                                   "scalars ride in the last bucket): overhead",
                                   setting + " (B/2 per rank)", got["step"], "on", "off",
                                   TARGET_PCT, "one thread per rank"))
        result.append(overhead_row(GROUP, "null, 2-rank DDP: the same plain DDP step / an "
                                   "identical copy of it", setting + " (B/2 per rank)",
                                   got["step"], "twin", "off", None))
        result.append(overhead_row(GROUP, f"NoiseMonitor(every={EVERY}), 2-rank DDP: overhead",
                                   setting + " (B/2 per rank)", got["every"], "on", "off",
                                   TARGET_PCT, f"{got['measured']} steps measured, 1 in "
                                   f"{EVERY}; timed in groups of {EVERY} steps"))
        if native is not None:
            n_setting = net_label(*native[:4]) + " (B/2 per rank)"
            got = ddp_times(native, one_step, with_every=False)
            result.append(overhead_row(GROUP, f"NoiseMonitor, 2-rank DDP, inputs at "
                                       f"{native[2]}x{native[2]}: overhead", n_setting,
                                       got["step"], "on", "off", TARGET_PCT,
                                       f"one thread per rank; {same}"))
            result.append(overhead_row(GROUP, f"null, 2-rank DDP at {native[2]}x{native[2]}: "
                                       "the same plain DDP step / an identical copy of it",
                                       n_setting, got["step"], "twin", "off", None))
    else:
        result.append(Row(GROUP, "NoiseMonitor, 2-rank DDP: overhead", setting, None, "%",
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

    times = interleaved({"on": split("on", True), "off": split("off", False)}, b.device, **many)
    result.append(overhead_row(GROUP, "half-batch split, sgd_step(measure=True) / sgd_step (one "
                             "process, one micro-batch): overhead", setting, times, "on", "off",
                             None, "two passes of B/2 instead of one of B, as paperlib's own loop "
                             "measures G/N (the online-nsr rows); smaller passes can be faster "
                             "on a CPU"))
    return result
