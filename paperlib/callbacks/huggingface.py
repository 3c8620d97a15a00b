"""A Hugging Face ``TrainerCallback`` that measures G, N and Thm 5.6's B* during
``Trainer.train``.

    from paperlib.callbacks.huggingface import NoiseMonitorCallback
    args = TrainingArguments(..., per_device_train_batch_size=b, gradient_accumulation_steps=k)
    trainer = Trainer(model, args, train_dataset=train_set)
    trainer.add_callback(NoiseMonitorCallback(batch_size=b * k,
                                              sampling=paperlib.Sampling.shuffled(len(train_set))))

One process with k ≥ 2 micro-batches per step. The Trainer divides each micro-batch's loss by k
(or normalizes it by the accumulated batch's item count, the same for equal micro-batches), so
``accumulation="mean"``. The monitor's parameter hooks read each micro-batch's gradient as
backward produces it, so the Trainer's clipping before ``on_pre_optimizer_step`` does not
matter. With ``fp16=True`` pass ``scaler=trainer.accelerator.scaler`` (callbacks do not see the
trainer). Each measured step goes to ``<log_dir>/noise.csv`` / ``.jsonl`` (default
``<output_dir>/noise``) and TensorBoard when installed, and the latest values are added to the
Trainer's logs (``noise/G``, ``noise/N``, ``noise/N_over_G``, ``noise/B_star``,
``noise/B_simple``) for the reporters after this callback and ``state.log_history``.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

try:
    from transformers import TrainerCallback
except ImportError as e:  # pragma: no cover - the extra is installed in CI
    raise ImportError("paperlib.callbacks.huggingface needs transformers: pip install "
                      "'paperlib[monitor]' (or pip install transformers)") from e

from ..monitor import NoiseMonitor
from ..sampling import Sampling

__all__ = ["NoiseMonitorCallback"]


class NoiseMonitorCallback(TrainerCallback):
    """Runs a :class:`paperlib.NoiseMonitor` over ``Trainer.train``; ``self.monitor`` holds it.

    Args:
        batch_size: B = per-device batch size × gradient_accumulation_steps.
        sampling: how the batches are drawn (:class:`paperlib.Sampling`).
        scaler: the ``GradScaler`` under ``fp16=True`` (``trainer.accelerator.scaler``).
        log_dir: folder of ``noise.csv`` / ``noise.jsonl`` (default ``<output_dir>/noise``).
        **monitor_kw: passed to :class:`paperlib.NoiseMonitor`.

    Raises:
        ValueError: at train start: more than one process (use ``NoiseMonitor`` on
            ``trainer.model_wrapped`` in your own loop), ``fp16`` without ``scaler``, or what
            :class:`paperlib.NoiseMonitor` raises.
    """

    def __init__(self, *, batch_size: int, sampling: Sampling, scaler=None,
                 log_dir: str | Path | None = None, **monitor_kw):
        self.batch_size, self.sampling, self.scaler = batch_size, sampling, scaler
        self.log_dir, self.monitor_kw = log_dir, monitor_kw
        self.monitor: NoiseMonitor | None = None
        self.last: dict | None = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if args.world_size > 1:
            raise ValueError(f"world_size={args.world_size}: this callback measures one process "
                             "(micro-batches); for DDP use paperlib.NoiseMonitor on the DDP "
                             "module in your own loop")
        if args.fp16 and self.scaler is None:
            raise ValueError("fp16=True scales the gradients: pass "
                             "scaler=trainer.accelerator.scaler")
        if not args.dataloader_drop_last:
            # The callback cannot see batch sizes: a partial last batch per epoch would be
            # measured as if it held B examples (its K sources are smaller than B/K).
            warnings.warn("TrainingArguments(dataloader_drop_last=False): the last optimizer "
                          "step of each epoch may hold a partial batch, which the noise monitor "
                          "would misread; set dataloader_drop_last=True", stacklevel=2)
        log_dir = self.log_dir or os.path.join(args.output_dir, "noise")
        self.monitor = NoiseMonitor(model, batch_size=self.batch_size, sampling=self.sampling,
                                    scaler=self.scaler, log_dir=log_dir, **self.monitor_kw)

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        row = self.monitor.step(lr=optimizer.param_groups[0]["lr"])
        if row is not None:
            self.last = {"noise/G": row["G"], "noise/N": row["N"],
                         "noise/N_over_G": row["ema_N_over_G"],
                         "noise/B_star": row["ema_B_star"], "noise/B_simple": row["ema_B_simple"]}

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is not None and self.last is not None and "loss" in logs:
            logs.update(self.last)
            if state.log_history and state.log_history[-1].get("step") == state.global_step:
                state.log_history[-1].update(self.last)

    def on_train_end(self, args, state, control, **kwargs):
        if self.monitor is not None:
            self.monitor.remove()
