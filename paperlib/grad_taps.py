"""The gradients a :class:`paperlib.NoiseMonitor` sees: hooks on the trained parameters that
collect, per optimizer step, Σ_j |g_j|² over the K sources (micro-batches, on every rank) and
|ḡ|² of their mean, without an extra backward pass (the estimator of Sec. 5 needs only these
two numbers and K: :func:`paperlib.monitor.estimate_from_norms`).
"""

from __future__ import annotations

import torch

from .models import trained_parameters

__all__ = ["GradientTaps"]


# Bucket dtypes that carry the ranks' Σ_j |g_j|² and K through DDP's own all-reduce.
CARRIERS = (torch.float32, torch.float64)

# Largest model (elements) whose gradients are squared through a flat float64 copy on the CPU.
STAGE_MAX = 1 << 24


class GradientTaps:
    """Hooks on ``model``'s trained parameters (and, for source "ranks", DDP's communication
    hook) that keep the float64 squared norms of each micro-batch's gradient and their sum.

    Per optimizer step of k micro-batches and P parameter tensors the cost is k·P hook calls
    (each only stores the gradient), k flushes of two or three multi-tensor ops each, and a
    few ops plus one host transfer in :meth:`norms`.

    Args:
        model: an ``nn.Module``, or a ``DistributedDataParallel`` one for source "ranks".
        source: "micro_batches" (one process) or "ranks" (DDP).
        accumulation: "mean" or "sum" (see :class:`paperlib.NoiseMonitor`).
        stage: square the gradients through one flat float64 copy (``torch.dot``), not
            ``torch._foreach_norm(..., dtype=float64)``; default: on the CPU for models up to
            ``STAGE_MAX`` elements. Same numbers to float64 rounding either way.
    """

    def __init__(self, model: torch.nn.Module, source: str, accumulation: str,
                 stage: bool | None = None):
        from torch.nn.parallel import DistributedDataParallel as DDP

        module = model.module if isinstance(model, DDP) else model
        self.source, self.accumulation = source, accumulation
        self.paused = False  # backward passes while paused are not micro-batches of the step
        self.live = True  # False between the steps a NoiseMonitor(every=m) measures: detached
        self.rank, self.world = 0, 1
        self.params = trained_parameters(module)
        if not self.params:
            raise ValueError("the model has no parameter with requires_grad=True")
        p0 = self.params[0]
        self._zero = torch.zeros((), dtype=torch.float64, device=p0.device)
        d = sum(p.numel() for p in self.params)
        if stage is None:
            # torch's CPU _foreach_norm casts tensor by tensor to float64 (about twice the time
            # of one cast copy into a kept buffer plus a dot); on a GPU it is one fused kernel
            # without the copy, which would cost 8 bytes per parameter there
            stage = p0.device.type == "cpu" and d <= STAGE_MAX
        self._stage = (torch.zeros(d, dtype=torch.float64, device=p0.device) if stage
                       else None)
        self._stage_views = self._views_of(self._stage) if stage else None
        self._sq: list[torch.Tensor] = []  # staged: Σ_p |g_jp|² of each micro-batch (float64)
        self._norms: list[torch.Tensor] = []  # unstaged: |g_jp| of each (micro-batch, tensor)
        self._queue: list[torch.Tensor] = []  # gradients of the current micro-batch
        self._queue_idx: list[int] = []
        self._queued: set[int] = set()
        self._counts = [0] * len(self.params)  # backward passes seen per tensor
        self._acc = None  # the one flat copy Σ_j g_j (source micro_batches only)
        self._fresh = True  # no micro-batch in the flat copy yet this step
        self._handles = []
        self.attach()
        if source == "ranks":
            import torch.distributed as dist

            self.rank, self.world = dist.get_rank(), dist.get_world_size()
            self._bucket_sq: dict[int, torch.Tensor] = {}  # |all-reduced bucket|² per bucket
            self._totals = None  # (Σ_j |g_j|² over all ranks, K) carried by the last bucket
            model.register_comm_hook(None, self._allreduce_hook)

    def _views_of(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Views of ``flat`` shaped like the parameters, in their order."""
        views, offset = [], 0
        for p in self.params:
            views.append(flat[offset:offset + p.numel()].view_as(p))
            offset += p.numel()
        return views

    def _hook(self, i: int):
        """The hook of parameter i: sees its gradient from each backward pass (one micro-batch)
        before it is added to ``p.grad`` and only queues it; :meth:`_flush` then squares and
        sums the queue with a few multi-tensor ops (per-tensor torch ops cost a fixed ~1.5 ms
        per step on small nets). A tensor seen twice marks the next micro-batch. Σ_j |g_j|² =
        Σ_(j,p) |g_jp|², so no pass needs to know where a backward ends; when every tensor has
        been seen (the usual backward) the queue is flushed at once, so that the gradients are
        not held through the next forward pass."""
        def hook(g: torch.Tensor) -> None:
            if self.paused:
                return
            if i in self._queued:
                self._flush()
            self._queued.add(i)
            self._queue_idx.append(i)
            self._queue.append(g)
            self._counts[i] += 1
            if len(self._queue) == len(self.params):
                self._flush()

        return hook

    def _staged_sq(self, tensors: list[torch.Tensor], idx: list[int] | None = None
                   ) -> torch.Tensor:
        """Σ |t|² over ``tensors`` in float64 (0-d) through the flat float64 copy; ``idx``: the
        parameters they are gradients of (None: ``tensors`` is the one flat sum)."""
        if idx is None:
            self._stage.copy_(tensors[0])
        else:
            if len(idx) < len(self.params):  # a micro-batch that missed some tensors
                self._stage.zero_()
            torch._foreach_copy_([self._stage_views[i] for i in idx], tensors)
        return torch.dot(self._stage, self._stage)

    def _sum_sq_parts(self) -> list[torch.Tensor]:
        """0-d float64 tensors whose sum is this process's Σ_j |g_j|² of the step."""
        if not self._norms:
            return self._sq
        v = torch.stack(self._norms)  # the unstaged path's |g_jp|, squared and summed at once
        return [*self._sq, torch.dot(v, v)]

    def _flush(self) -> None:
        """Squared norm and flat-copy sum of the queued gradients (one micro-batch's)."""
        if not self._queue:
            return
        if self._stage is None:
            self._norms.extend(torch._foreach_norm(self._queue, 2, dtype=torch.float64))
        else:
            self._sq.append(self._staged_sq(self._queue, self._queue_idx))
        if self.source == "micro_batches":
            if self._acc is None:
                d = sum(p.numel() for p in self.params)
                dtype = torch.promote_types(self._queue[0].dtype, torch.float32)
                self._acc = torch.zeros(d, dtype=dtype, device=self._queue[0].device)
                self._views = self._views_of(self._acc)
            views = [self._views[i] for i in self._queue_idx]
            if self._fresh and len(views) == len(self._views):
                torch._foreach_copy_(views, self._queue)  # = 0 + g_1: no zeroing pass
            else:
                if self._fresh:
                    self._acc.zero_()
                torch._foreach_add_(views, self._queue)
            self._fresh = False
        self._queue, self._queue_idx, self._queued = [], [], set()

    def _allreduce_hook(self, _state, bucket):
        """DDP's default all-reduce (mean over ranks) that also keeps |all-reduced bucket|².

        The last bucket's all-reduce also carries this rank's Σ_j |g_rj|² and its number of
        micro-batches k_r, appended to the bucket and summed with it, so that the ranks' totals
        cost no collective of their own (on a CPU with gloo a separate 2-scalar all-reduce per
        step cost about as much as the rest of the monitor); the price is two copies of that
        bucket (on one CPU thread ≈ 0.1 ms per MB; DDP's buckets hold up to 25 MB). They travel
        in the bucket's dtype: exact for float64, a relative error below about world·2⁻²⁴ for
        float32, far below the sampling error of one step's estimate. A half-precision bucket,
        which could overflow or round them, gets a float64 all-reduce of its own beside it.
        Both are made on every step, with zeros where this rank does not measure (``every``,
        ``remove``, ``paused``): DDP calls this hook on every rank alike, so the ranks'
        collectives match whatever their monitors' states, and :meth:`norms` needs none."""
        import torch.distributed as dist

        tensor = bucket.buffer()
        tensor.div_(self.world)
        measured = self.live and not self.paused
        index, last = bucket.index(), bucket.is_last()
        carry = last and tensor.dtype in CARRIERS
        payload, side = tensor, None
        if last:
            extra = self._zero.new_zeros(2)
            if measured:
                # every tensor of this backward has been seen by now (its hook runs before it
                # is accumulated and handed to a bucket); a backward that skipped unused
                # tensors was not flushed by the hooks
                self._flush()
                parts = self._sum_sq_parts()
                local = torch.stack(parts).sum() if parts else self._zero
                extra = torch.stack([local, self._zero + max(self._counts)])
            if carry:
                payload = torch.cat([tensor, extra.to(tensor.dtype)])
            else:
                side = extra
        futs = [dist.all_reduce(t, async_op=True).get_future()
                for t in (payload, side) if t is not None]
        fut = futs[0] if side is None else torch.futures.collect_all(futs)

        def done(_f):
            for f in futs:
                f.wait()  # raises a failed all-reduce's error
            if carry:
                tensor.copy_(payload[:-2])
            if measured:
                if last:
                    # a copy: a float64 payload's view would keep the whole bucket copy alive
                    self._totals = (payload[-2:] if carry else side).to(torch.float64,
                                                                        copy=True)
                # Kept per bucket, the latest: with several synchronized backward passes in one
                # step (micro-batches not inside no_sync()), DDP all-reduces the accumulated
                # .grad each time, so the last all-reduce holds the step's mean gradient.
                self._bucket_sq[index] = torch.linalg.vector_norm(
                    tensor, dtype=torch.float64).square()
            return tensor

        return fut.then(done)

    def _local_sums(self) -> tuple[float, float]:
        """(Σ_j |g_j|², |Σ_j g_j|²) of this process's micro-batches (before any unscaling), with
        one stack and one host transfer for both (on a GPU: one synchronization per step)."""
        if self._acc is None:
            mean_sq = self._zero
        elif self._stage is None:
            mean_sq = torch.linalg.vector_norm(self._acc, dtype=torch.float64).square()
        else:
            mean_sq = self._staged_sq([self._acc])
        *parts, mean_sq = torch.stack([*self._sum_sq_parts(), mean_sq]).tolist()
        self._fresh = True  # the next flush starts the flat sum afresh
        return sum(parts), mean_sq  # k numbers; inf stays inf (fsum would raise on overflow)

    def _rank_sums(self, k_local: int) -> tuple[float, float, int, str | None]:
        """(Σ_j |g_j|² over every rank's micro-batches, |ḡ|² of the all-reduced gradient, K, a
        reason to skip the step or None), from what the step's last all-reduce carried."""
        totals, self._totals = self._totals, None
        bucket_sq, self._bucket_sq = self._bucket_sq, {}
        if totals is None:  # no collective here: the other ranks would not make it
            return 0.0, 0.0, 0, None if k_local == 0 else (  # norms: "no backward pass"
                "no synchronized backward pass was measured this step (DDP's all-reduce ran "
                "while paused, or not at all: every micro-batch inside no_sync())")
        sum_sq, k_total = totals.tolist()
        k_total = int(round(k_total))
        mean_sq = float(torch.stack(list(bucket_sq.values())).sum()) if bucket_sq else 0.0
        if k_total != k_local * self.world:
            return 0.0, 0.0, 0, "ranks ran different numbers of micro-batches"
        return sum_sq, mean_sq, k_total, None

    def norms(self, scale: float) -> tuple[float, float, int, str | None]:
        """(Σ_j |g_j|², |ḡ|², K) in gradient units, or a reason to skip the step."""
        self._flush()
        k_local = max(self._counts)  # micro-batches: every tensor a micro-batch reaches
        if self.source == "ranks":
            sum_sq, mean_sq, k_total, reason = self._rank_sums(k_local)
        else:
            (sum_sq, mean_sq), k_total, reason = self._local_sums(), k_local, None
        self._sq, self._norms, self._counts = [], [], [0] * len(self.params)
        if reason is not None:
            return 0.0, 0.0, 0, reason
        if k_total == 0:
            return 0.0, 0.0, 0, "no backward pass since the last step"
        # Each backward delivered s·w·g_j: s the loss scale, w = 1/k ("mean") or 1 ("sum").
        # The accumulated (one process) or all-reduced (DDP: the mean over ranks of each rank's
        # Σ_j s·w·g_rj) gradient is s·w·k·ḡ, with ḡ the mean over all K = k·R sources.
        w = 1.0 / k_local if self.accumulation == "mean" else 1.0
        sum_sq /= (scale * w) ** 2
        mean_sq /= (scale * w * k_local) ** 2
        return sum_sq, mean_sq, k_total, None

    def attach(self) -> None:
        """(Re)register the parameter hooks: the backward passes from here on are measured."""
        if not self._handles:
            self._handles = [p.register_hook(self._hook(i)) for i, p in enumerate(self.params)]
        self.live = True

    def remove(self) -> None:
        """Detach the parameter hooks until :meth:`attach`: backward passes cost nothing extra
        (a DDP communication hook cannot be unregistered; it keeps doing DDP's all-reduce,
        without the norm of the reduced buckets, and appends two zeros to the last bucket)."""
        for h in self._handles:
            h.remove()
        # A removed hook leaves the tensor's (now empty) hook dict behind, and autograd still
        # calls into Python for it on every backward (what made a detached step cost about as
        # much as hooks that do nothing); with no one else's hook left, drop the dict too.
        for p in self.params:
            if p._backward_hooks is not None and not p._backward_hooks:
                p._backward_hooks = None
        self._handles = []
        self.live = False
