"""A Hugging Face ``TrainerCallback`` that measures G, N and Thm 5.6's B* during
``Trainer.train``.

    from paperlib.callbacks.huggingface import NoiseMonitorCallback
    args = TrainingArguments(..., per_device_train_batch_size=b, gradient_accumulation_steps=k)
    trainer = Trainer(model, args, train_dataset=train_set)
    cb = NoiseMonitorCallback.attach(trainer, batch_size=b * k,
                                     sampling=paperlib.Sampling.shuffled(len(train_set)))
    trainer.train()

One process with k ≥ 2 micro-batches per step. The Trainer divides each micro-batch's loss by k
(or normalizes it by the accumulated batch's item count, the same for equal micro-batches), so
``accumulation="mean"``. The monitor's parameter hooks read each micro-batch's gradient as
backward produces it, so the Trainer's clipping before ``on_pre_optimizer_step`` does not
matter. With ``fp16=True`` pass ``scaler=trainer.accelerator.scaler``. Each measured step goes
to ``<log_dir>/noise.csv`` / ``.jsonl`` (default ``<output_dir>/noise``) and TensorBoard when
installed, and the latest values are added to the Trainer's training logs: ``noise/G`` and
``noise/N`` of the last optimizer step, ``noise/N_over_G``, ``noise/B_star`` and
``noise/B_simple`` from the monitor's bias-corrected EMA (so N_over_G is not noise/N ÷ noise/G).
The per-step G is unbiased, so it can be negative when the true G is small against the noise
(early steps, small batches); the three EMA values are NaN while the EMA of G is ≤ 0 (B* and
B_simple also while that of N is < 0).

Why :meth:`NoiseMonitorCallback.attach`: ``Trainer.log`` appends a copy of its ``logs`` dict to
``state.log_history`` and then hands that dict to every callback's ``on_log`` in list order.
The list starts with ``DefaultFlowCallback`` and the ``report_to`` integrations (TensorBoard,
W&B, ...), then the ``callbacks=`` of ``Trainer(...)``, then the console printer or progress
bar; ``trainer.add_callback`` appends at the end. A callback added either way therefore runs
after the reporters, which have already written the dict. ``attach`` puts the callback first,
so every reporter sees ``noise/*`` in the same dict; the values go into the step's
``log_history`` entry once.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

try:
    from transformers import TrainerCallback
    from transformers.trainer_callback import CallbackHandler
except ImportError as e:  # pragma: no cover - the extra is installed in CI
    raise ImportError("paperlib.callbacks.huggingface needs transformers: pip install "
                      "'paperlib[monitor]' (or pip install transformers)") from e

from ..monitor import NoiseMonitor
from ..sampling import Sampling
from ..warn import warn_user

__all__ = ["NoiseMonitorCallback"]


def _logs_before(handler, callback) -> list[str]:
    """Names of the handler's callbacks that run ``on_log`` before ``callback`` does."""
    callbacks = handler.callbacks
    before = callbacks[:callbacks.index(callback)] if callback in callbacks else []
    return [type(c).__name__ for c in before if type(c).on_log is not TrainerCallback.on_log]


class NoiseMonitorCallback(TrainerCallback):
    """Runs a :class:`paperlib.NoiseMonitor` over ``Trainer.train``; ``self.monitor`` holds it.

    Attach it with :meth:`attach` (ahead of the reporters). Built directly and passed in
    ``Trainer(callbacks=...)`` or ``trainer.add_callback``, it still measures and fills
    ``state.log_history``, but the ``report_to`` integrations never see its values, nor, after
    ``add_callback``, does the console printer; it warns at train start, naming the callbacks
    that log before it, when there are any.

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
        self._trainer = None  # set by attach: the trainer whose callback order is checked

    @classmethod
    def attach(cls, trainer, **kwargs) -> NoiseMonitorCallback:
        """Build the callback and make it the trainer's first, so that its ``on_log`` adds the
        ``noise/*`` values to the logs dict before any reporter (``report_to`` integrations,
        console printer, your own callbacks) reads it.

        Args:
            trainer: a ``transformers.Trainer`` (after ``__init__``, before ``train``).
            **kwargs: the constructor's arguments (``batch_size``, ``sampling``, ...).

        Returns:
            The callback (its ``monitor`` exists from train start on).

        Raises:
            ValueError: the trainer already has a ``NoiseMonitorCallback`` (two monitors would
                hook the same gradients and write the same keys).
        """
        existing = [c for c in trainer.callback_handler.callbacks if isinstance(c, cls)]
        if existing:
            raise ValueError("this Trainer already has a NoiseMonitorCallback; remove it "
                             "(trainer.remove_callback) before attaching another")
        cb = cls(**kwargs)
        cb._trainer = trainer
        # The Trainer only appends callbacks (add_callback); to go first, take the others out
        # and put them back after this one, in their order, with its documented pop/add.
        others = list(trainer.callback_handler.callbacks)
        for c in others:
            trainer.pop_callback(c)
        trainer.add_callback(cb)
        for c in others:
            trainer.add_callback(c)
        return cb

    def _warn_if_unreported(self, args, handler) -> None:
        """Warn when a reporter runs ``on_log`` before this callback (its values would miss
        it), from the order of the handler's callbacks (``handler``: the trainer's, or the
        ``CallbackHandler`` calling ``on_train_begin``; None when neither is known: then only
        the ``report_to`` integrations, which always precede user callbacks, are known)."""
        if self._trainer is not None:
            handler = self._trainer.callback_handler
        if handler is not None:
            early = _logs_before(handler, self)
            where = "on_log before this callback"
        else:
            early = [r for r in args.report_to or [] if r != "none"]
            where = ("on_log before a callback passed to Trainer(callbacks=...) or added with "
                     "trainer.add_callback")
        if early:
            verb = "runs" if len(early) == 1 else "run"
            warn_user(f"{', '.join(early)} {verb} {where} and will not see noise/G, noise/N, "
                      "noise/B_star, ...: attach the monitor with "
                      "NoiseMonitorCallback.attach(trainer, ...), which puts it first (call "
                      "it once the Trainer has all its other callbacks)")

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
            warn_user("TrainingArguments(dataloader_drop_last=False): the last optimizer "
                      "step of each epoch may hold a partial batch, which the noise monitor "
                      "would misread; set dataloader_drop_last=True")
        # The handler that calls this hook knows the callbacks' order (a bare callback has
        # no other way to see it); its frame is the caller's, CallbackHandler.call_event.
        caller = sys._getframe(1).f_locals.get("self")
        self._warn_if_unreported(args, caller if isinstance(caller, CallbackHandler) else None)
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
        # Training logs only ("loss"; not eval metrics or the end-of-training summary). The
        # callbacks after this one read `logs` itself; Trainer.log appended a copy of it to
        # log_history just before on_log, so that entry gets the values too.
        if logs is None or self.last is None or "loss" not in logs:
            return
        logs.update(self.last)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(self.last)

    def on_train_end(self, args, state, control, **kwargs):
        if self.monitor is not None:
            self.monitor.remove()
