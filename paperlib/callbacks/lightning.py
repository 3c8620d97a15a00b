"""A PyTorch Lightning ``Callback`` that measures G, N and Thm 5.6's B* during ``trainer.fit``.

    from paperlib.callbacks.lightning import NoiseMonitorCallback
    cb = NoiseMonitorCallback(batch_size=B, sampling=paperlib.Sampling.shuffled(len(train_set)))
    trainer = lightning.Trainer(accumulate_grad_batches=k, callbacks=[cb])   # k ≥ 2, or DDP

``batch_size`` is B, the examples of one optimizer step: the DataLoader's batch size × k × the
number of devices. Lightning divides each micro-batch's loss by k (``accumulation="mean"``) and
calls ``on_before_optimizer_step`` once the k gradients are accumulated and before clipping;
the monitor's parameter hooks read every micro-batch's gradient as it is produced. Under the
DDP strategy the ranks are sources too (the monitor registers its DDP communication hook on
``trainer.strategy.model``). With ``precision="16-mixed"`` the GradScaler's scale is divided out.
Every measured step is logged through ``pl_module.log`` (``noise/G``, ``noise/N``,
``noise/N_over_G``, ``noise/B_star``, ``noise/B_simple``: the last three from the EMA) and to
``<log_dir>/noise.csv`` / ``.jsonl`` (default ``<trainer.log_dir>/noise``), TensorBoard when
installed. The per-step G is unbiased, so it can be negative when the true G is small against
the noise (early steps, small batches); the three EMA values are NaN while the EMA of G is ≤ 0
(B* and B_simple also while that of N is < 0).
"""

from __future__ import annotations

from pathlib import Path

try:
    from lightning.pytorch.callbacks import Callback
except ImportError as e:  # pragma: no cover - the extra is installed in CI
    raise ImportError("paperlib.callbacks.lightning needs PyTorch Lightning: pip install "
                      "'paperlib[monitor]' (or pip install lightning)") from e

from ..monitor import NoiseMonitor
from ..sampling import Sampling

__all__ = ["NoiseMonitorCallback"]


class NoiseMonitorCallback(Callback):
    """Runs a :class:`paperlib.NoiseMonitor` over ``trainer.fit``; ``self.monitor`` holds it.

    Args:
        batch_size: B, examples per optimizer step over all micro-batches and devices.
        sampling: how the batches are drawn (:class:`paperlib.Sampling`).
        log_dir: folder of ``noise.csv`` / ``noise.jsonl`` (default: the trainer's log dir
            + ``/noise``).
        **monitor_kw: passed to :class:`paperlib.NoiseMonitor` (``C``, ``window``, ``ema``, ...).

    Raises:
        ValueError: as :class:`paperlib.NoiseMonitor` (at fit start), e.g. one micro-batch
            per step on one device (nothing to estimate from).
    """

    def __init__(self, *, batch_size: int, sampling: Sampling, log_dir: str | Path | None = None,
                 **monitor_kw):
        super().__init__()
        self.batch_size, self.sampling, self.log_dir = batch_size, sampling, log_dir
        self.monitor_kw = monitor_kw
        self.monitor: NoiseMonitor | None = None
        self._examples = 0  # this rank's examples since the last optimizer step

    def on_fit_start(self, trainer, pl_module) -> None:
        from torch.nn.parallel import DistributedDataParallel as DDP

        wrapped = trainer.strategy.model
        model = wrapped if isinstance(wrapped, DDP) else pl_module
        log_dir = self.log_dir or Path(trainer.log_dir or trainer.default_root_dir) / "noise"
        self.monitor = NoiseMonitor(model, batch_size=self.batch_size, sampling=self.sampling,
                                    scaler=getattr(trainer.precision_plugin, "scaler", None),
                                    log_dir=log_dir, **self.monitor_kw)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        first = batch[0] if isinstance(batch, (list, tuple)) else batch
        self._examples += len(first) if hasattr(first, "__len__") else 0

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        # a partial last batch (drop_last=False) is skipped, not measured with wrong sizes
        examples = self._examples * trainer.world_size or None
        self._examples = 0
        row = self.monitor.step(lr=optimizer.param_groups[0]["lr"], examples=examples)
        if row is not None:
            pl_module.log_dict({"noise/G": row["G"], "noise/N": row["N"],
                                "noise/N_over_G": row["ema_N_over_G"],
                                "noise/B_star": row["ema_B_star"],
                                "noise/B_simple": row["ema_B_simple"]},
                               on_step=True, on_epoch=False, rank_zero_only=True)

    def on_fit_end(self, trainer, pl_module) -> None:
        if self.monitor is not None:
            self.monitor.remove()
