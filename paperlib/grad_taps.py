"""The gradients a :class:`paperlib.NoiseMonitor` sees: hooks on the trained parameters that
collect, per optimizer step, Σ_j |g_j|² over the K sources (micro-batches, on every rank) and
|ḡ|² of their mean, without an extra backward pass (the estimator of Sec. 5 needs only these
two numbers and K: :func:`paperlib.monitor.estimate_from_norms`).
"""

from __future__ import annotations

import torch

from .models import trained_parameters

__all__ = ["GradientTaps"]


class GradientTaps:
    """Hooks on ``model``'s trained parameters (and, for source "ranks", DDP's communication
    hook) that keep the float64 norms of each micro-batch's gradient and their sum.

    Args:
        model: an ``nn.Module``, or a ``DistributedDataParallel`` one for source "ranks".
        source: "micro_batches" (one process) or "ranks" (DDP).
        accumulation: "mean" or "sum" (see :class:`paperlib.NoiseMonitor`).
    """

    def __init__(self, model: torch.nn.Module, source: str, accumulation: str):
        from torch.nn.parallel import DistributedDataParallel as DDP

        module = model.module if isinstance(model, DDP) else model
        self.source, self.accumulation = source, accumulation
        self.paused = False  # backward passes while paused are not micro-batches of the step
        self.rank, self.world = 0, 1
        self.params = trained_parameters(module)
        if not self.params:
            raise ValueError("the model has no parameter with requires_grad=True")
        p0 = self.params[0]
        self._zero = torch.zeros((), dtype=torch.float64, device=p0.device)
        self._norms_seen: list[torch.Tensor] = []  # |g_jp| of every (micro-batch, tensor)
        self._queue: list[torch.Tensor] = []  # gradients of the current micro-batch
        self._queue_idx: list[int] = []
        self._queued: set[int] = set()
        self._counts = [0] * len(self.params)  # backward passes seen per tensor
        self._acc = None  # the one flat copy Σ_j g_j (source micro_batches only)
        self._handles = [p.register_hook(self._hook(i)) for i, p in enumerate(self.params)]
        if source == "ranks":
            import torch.distributed as dist

            self.rank, self.world = dist.get_rank(), dist.get_world_size()
            self._mean_sq = self._zero.clone()
            model.register_comm_hook(None, self._allreduce_hook)

    def _hook(self, i: int):
        """The hook of parameter i: sees its gradient from each backward pass (one micro-batch)
        before it is added to ``p.grad`` and only queues it; :meth:`_flush` then takes the
        float64 norms and adds the gradients into the flat copy with one ``torch._foreach_*``
        call each (per-tensor torch ops cost a fixed ~1.5 ms per step on small nets). A tensor
        seen twice marks the next micro-batch. Σ_j |g_j|² = Σ_(j,p) |g_jp|², so no pass needs
        to know where a backward ends."""
        def hook(g: torch.Tensor) -> None:
            if self.paused:
                return
            if i in self._queued:
                self._flush()
            self._queued.add(i)
            self._queue_idx.append(i)
            self._queue.append(g)
            self._counts[i] += 1

        return hook

    def _flush(self) -> None:
        """Norms and flat-copy sums of the queued gradients (one micro-batch's)."""
        if not self._queue:
            return
        self._norms_seen.extend(torch._foreach_norm(self._queue, 2, dtype=torch.float64))
        if self.source == "micro_batches":
            if self._acc is None:
                d = sum(p.numel() for p in self.params)
                dtype = torch.promote_types(self._queue[0].dtype, torch.float32)
                self._acc = torch.zeros(d, dtype=dtype, device=self._queue[0].device)
                self._views, offset = [], 0
                for p in self.params:
                    self._views.append(self._acc[offset:offset + p.numel()].view_as(p))
                    offset += p.numel()
            torch._foreach_add_([self._views[i] for i in self._queue_idx], self._queue)
        self._queue, self._queue_idx, self._queued = [], [], set()

    def _allreduce_hook(self, _state, bucket):
        """DDP's default all-reduce (mean over ranks) that also adds |all-reduced bucket|²."""
        import torch.distributed as dist

        tensor = bucket.buffer()
        tensor.div_(self.world)
        fut = dist.all_reduce(tensor, async_op=True).get_future()

        def done(f):
            out = f.value()[0]
            if not self.paused:
                self._mean_sq += torch.linalg.vector_norm(out, dtype=torch.float64).square()
            return out

        return fut.then(done)

    def norms(self, scale: float) -> tuple[float, float, int, str | None]:
        """(Σ_j |g_j|², |ḡ|², K) in gradient units, or a reason to skip the step."""
        self._flush()
        k_local = max(self._counts)  # micro-batches: every tensor a micro-batch reaches
        sum_sq = (torch.stack(self._norms_seen).square().sum() if self._norms_seen
                  else self._zero.clone())
        if self.source == "ranks":
            import torch.distributed as dist

            t = torch.stack([sum_sq, self._zero + k_local])
            dist.all_reduce(t)  # the only extra communication: two scalars
            sum_sq, k_total = float(t[0]), int(round(float(t[1])))
            mean_sq = float(self._mean_sq)
            self._mean_sq = self._zero.clone()
            unequal = k_total != k_local * self.world
        else:
            sum_sq, k_total, unequal = float(sum_sq), k_local, False
            mean_sq = (float(torch.linalg.vector_norm(self._acc, dtype=torch.float64).square())
                       if self._acc is not None else 0.0)
            if self._acc is not None:
                self._acc.zero_()
        self._norms_seen, self._counts = [], [0] * len(self.params)
        if unequal:
            return 0.0, 0.0, 0, "ranks ran different numbers of micro-batches"
        if k_total == 0:
            return 0.0, 0.0, 0, "no backward pass since the last step"
        # Each backward delivered s·w·g_j: s the loss scale, w = 1/k ("mean") or 1 ("sum").
        # The accumulated (one process) or all-reduced (DDP: the mean over ranks of each rank's
        # Σ_j s·w·g_rj) gradient is s·w·k·ḡ, with ḡ the mean over all K = k·R sources.
        w = 1.0 / k_local if self.accumulation == "mean" else 1.0
        sum_sq /= (scale * w) ** 2
        mean_sq /= (scale * w * k_local) ** 2
        return sum_sq, mean_sq, k_total, None

    def remove(self) -> None:
        """Detach the parameter hooks (a DDP communication hook cannot be unregistered; it
        keeps doing DDP's plain all-reduce)."""
        for h in self._handles:
            h.remove()
        self._handles = []
