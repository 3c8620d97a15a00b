"""The Lightning and Hugging Face callbacks train a tiny model on the CPU for a few steps with
gradient accumulation, log G, N, B* every step, and their first estimate equals the k-sample
estimator on the micro-batches the model actually saw (recomputed from the initial weights)."""

import copy
import math
import warnings

import pandas as pd
import pytest
import torch

import paperlib
from paperlib.nsr import direct_nsr

from problems import tanh_mlp

N_TRAIN, MICRO, K, STEPS = 64, 8, 2, 6
B = MICRO * K


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N_TRAIN, 6, generator=g)
    return x, (x[:, :3] + 0.5 * torch.randn(N_TRAIN, 3, generator=g)).argmax(1)


def _reference(net, seen):
    """(G, N) of the first step from the first K micro-batches the model saw."""
    grads = []
    for x, y in seen[:K]:
        loss = torch.nn.functional.cross_entropy(net(x), y)
        grads.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(
            loss, list(net.parameters()))]))
    G, N = direct_nsr(torch.stack(grads), MICRO, B, N_TRAIN, disjoint=True)
    return float(G), float(N)


def _check_log(path, monitor):
    log = pd.read_csv(path)
    assert len(log) == STEPS and (log["sources"] == K).all()
    assert log[["G", "N", "grad_sq"]].notna().all().all() and (log["N"] > 0).all()
    assert math.isfinite(log["ema_B_star"].iloc[-1]) and log["ema_B_star"].iloc[-1] > B
    s = monitor.summary()
    assert s["count"] == STEPS and s["lr_constant"] is True
    return log


def test_lightning_callback_logs_g_n_b_star(tmp_path):
    L = pytest.importorskip("lightning.pytorch")
    from paperlib.callbacks.lightning import NoiseMonitorCallback

    x, y = _data()

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.net = tanh_mlp(6, 16, 3)
            self.seen = []

        def training_step(self, batch, _):
            self.seen.append((batch[0].clone(), batch[1].clone()))
            return torch.nn.functional.cross_entropy(self.net(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    model = Tiny()
    initial = copy.deepcopy(model.net)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=MICRO,
                                         shuffle=True, drop_last=True,
                                         generator=torch.Generator().manual_seed(1))
    cb = NoiseMonitorCallback(batch_size=B, sampling=paperlib.Sampling.shuffled(N_TRAIN),
                              log_dir=tmp_path / "noise")
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=STEPS, accumulate_grad_batches=K,
                        callbacks=[cb], logger=L.loggers.CSVLogger(tmp_path),
                        enable_progress_bar=False, enable_checkpointing=False,
                        enable_model_summary=False, log_every_n_steps=1,
                        gradient_clip_val=1e-3)  # clipping must not change the estimate
    trainer.fit(model, loader)
    log = _check_log(tmp_path / "noise" / "noise.csv", cb.monitor)
    G, N = _reference(initial, model.seen)
    assert log["G"].iloc[0] == pytest.approx(G, rel=1e-5, abs=1e-8)
    assert log["N"].iloc[0] == pytest.approx(N, rel=1e-5)
    logged = pd.read_csv(next(tmp_path.glob("lightning_logs/*/metrics.csv")))
    for key in ("noise/G", "noise/N", "noise/B_star"):
        assert logged[key].notna().sum() == STEPS, key


def test_lightning_callback_skips_an_epochs_partial_accumulation_group(tmp_path):
    """7 micro-batches per epoch with k = 2: Lightning steps after the 7th alone; that step
    used to raise "one micro-batch per step gives no noise estimate" and stop trainer.fit."""
    L = pytest.importorskip("lightning.pytorch")
    from paperlib.callbacks.lightning import NoiseMonitorCallback

    x, y = _data()
    n = 7 * MICRO

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.net = tanh_mlp(6, 16, 3)

        def training_step(self, batch, _):
            return torch.nn.functional.cross_entropy(self.net(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[:n], y[:n]),
                                         batch_size=MICRO, shuffle=True, drop_last=True)
    cb = NoiseMonitorCallback(batch_size=B, sampling=paperlib.Sampling.shuffled(n),
                              log_dir=tmp_path / "noise")
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=2, accumulate_grad_batches=K,
                        callbacks=[cb], logger=False, enable_progress_bar=False,
                        enable_checkpointing=False, enable_model_summary=False)
    with pytest.warns(UserWarning, match="partial accumulation group: 1 micro-batch"):
        trainer.fit(Tiny(), loader)
    assert cb.monitor.measured == 6 and cb.monitor.skipped == 2
    assert sum(cb.monitor.skip_reasons.values()) == 2
    assert (pd.read_csv(tmp_path / "noise" / "noise.csv")["sources"] == K).all()


class _HFTiny(torch.nn.Module):
    """The tiny MLP as a Trainer model: records the micro-batches it trains on."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = tanh_mlp(6, 16, 3)
        self.seen = []

    def forward(self, x, labels):
        if self.training:
            self.seen.append((x.clone(), labels.clone()))
        return {"loss": torch.nn.functional.cross_entropy(self.net(x), labels)}


def _hf_trainer(tmp_path, model, report_to, callbacks=None):
    """A CPU Trainer of STEPS steps, K micro-batches of MICRO, logging every step."""
    import transformers

    x, y = _data()

    class Rows(torch.utils.data.Dataset):
        def __len__(self):
            return N_TRAIN

        def __getitem__(self, i):
            return {"x": x[i], "labels": y[i]}

    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=MICRO,
        gradient_accumulation_steps=K, max_steps=STEPS, learning_rate=0.1, optim="sgd",
        lr_scheduler_type="constant", logging_steps=1, report_to=report_to, save_strategy="no",
        use_cpu=True, dataloader_drop_last=True, seed=1, max_grad_norm=1e-3,
        disable_tqdm=True)
    return transformers.Trainer(model=model, args=args, train_dataset=Rows(),
                                callbacks=callbacks)


NOISE_KEYS = ("noise/G", "noise/N", "noise/N_over_G", "noise/B_star", "noise/B_simple")


def _tensorboard_scalars(log_dir):
    """{tag: [(step, value), ...]} of the TensorBoard event files under ``log_dir``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (run,) = {f.parent for f in log_dir.rglob("events.out.tfevents.*")}
    acc = EventAccumulator(str(run))
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def test_huggingface_callback_logs_g_n_b_star(tmp_path):
    """Attached, the callback's values reach the reporters: HF's own TensorBoardCallback
    (report_to) and a callback passed in callbacks=, both of which run before any callback
    that add_callback appends; and each training entry of log_history holds them once."""
    pytest.importorskip("transformers")
    pytest.importorskip("tensorboard")
    from transformers import TrainerCallback

    from paperlib.callbacks.huggingface import NoiseMonitorCallback

    class Spy(TrainerCallback):  # a reporter: keeps what on_log hands it
        def __init__(self):
            self.logs = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            self.logs.append(dict(logs))

    model, spy = _HFTiny(), Spy()
    initial = copy.deepcopy(model.net)
    trainer = _hf_trainer(tmp_path, model, ["tensorboard"], callbacks=[spy])
    cb = NoiseMonitorCallback.attach(trainer, batch_size=B,
                                     sampling=paperlib.Sampling.shuffled(N_TRAIN))
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*will not see noise")
        trainer.train()
    log = _check_log(tmp_path / "noise" / "noise.csv", cb.monitor)
    G, N = _reference(initial, model.seen)
    assert log["G"].iloc[0] == pytest.approx(G, rel=1e-5, abs=1e-8)
    assert log["N"].iloc[0] == pytest.approx(N, rel=1e-5)

    seen = [h for h in spy.logs if "loss" in h]
    assert len(seen) == STEPS
    for h, row in zip(seen, cb.monitor.history, strict=True):
        assert h["noise/G"] == row["G"] and h["noise/N"] == row["N"]
        assert h["noise/B_star"] == row["ema_B_star"]

    tb = _tensorboard_scalars(tmp_path / "runs")
    for key in ("noise/G", "noise/N", "noise/B_star"):
        assert [s for s, _ in tb[f"train/{key}"]] == list(range(1, STEPS + 1)), key
    assert [v for _, v in tb["train/noise/G"]] == pytest.approx(list(log["G"]), rel=1e-6)

    history = trainer.state.log_history
    assert len(history) == STEPS + 1  # the step entries and the end-of-training summary
    assert [h["step"] for h in history if "noise/G" in h] == list(range(1, STEPS + 1))
    assert all(("noise/G" in h) == ("loss" in h) for h in history)
    for key in NOISE_KEYS:
        assert all(math.isfinite(h[key]) for h in history if "loss" in h), key


def test_huggingface_callback_added_late_warns_that_reporters_miss_it(tmp_path):
    """Passed in callbacks=, the callback runs after the report_to integrations: it says so,
    still fills log_history, and TensorBoard indeed gets no noise/* scalars."""
    pytest.importorskip("transformers")
    pytest.importorskip("tensorboard")
    from paperlib.callbacks.huggingface import NoiseMonitorCallback

    cb = NoiseMonitorCallback(batch_size=B, sampling=paperlib.Sampling.shuffled(N_TRAIN))
    trainer = _hf_trainer(tmp_path, _HFTiny(), ["tensorboard"], callbacks=[cb])
    with pytest.warns(UserWarning, match=r"TensorBoardCallback runs on_log before") as caught:
        trainer.train()
    ours = [w for w in caught if "attach" in str(w.message)]
    assert ours and all(w.filename == __file__ for w in ours)  # the user's trainer.train() line
    assert sum("noise/G" in h for h in trainer.state.log_history) == STEPS
    assert not any(t.startswith("train/noise/") for t in _tensorboard_scalars(tmp_path / "runs"))


def test_huggingface_callback_added_late_without_reporters_still_warns(tmp_path):
    """add_callback puts it after the console printer too, whatever report_to says."""
    pytest.importorskip("transformers")
    from paperlib.callbacks.huggingface import NoiseMonitorCallback

    trainer = _hf_trainer(tmp_path, _HFTiny(), [])
    trainer.add_callback(NoiseMonitorCallback(batch_size=B,
                                              sampling=paperlib.Sampling.shuffled(N_TRAIN)))
    with pytest.warns(UserWarning, match=r"PrinterCallback runs on_log before .*attach"):
        trainer.train()


def test_huggingface_callback_passed_in_callbacks_without_reporters_does_not_warn(tmp_path):
    """In Trainer(callbacks=...) with report_to=[], nothing logs before it (the console printer
    comes after the callbacks= list): no warning about reporters, and its values are logged."""
    pytest.importorskip("transformers")
    from paperlib.callbacks.huggingface import NoiseMonitorCallback

    cb = NoiseMonitorCallback(batch_size=B, sampling=paperlib.Sampling.shuffled(N_TRAIN))
    trainer = _hf_trainer(tmp_path, _HFTiny(), [], callbacks=[cb])
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*will not see noise")
        trainer.train()
    assert sum("noise/G" in h for h in trainer.state.log_history) == STEPS


def test_huggingface_attach_refuses_a_second_monitor(tmp_path):
    pytest.importorskip("transformers")
    from paperlib.callbacks.huggingface import NoiseMonitorCallback

    trainer = _hf_trainer(tmp_path, _HFTiny(), [])
    kw = dict(batch_size=B, sampling=paperlib.Sampling.shuffled(N_TRAIN))
    cb = NoiseMonitorCallback.attach(trainer, **kw)
    names = [type(c).__name__ for c in trainer.callback_handler.callbacks]
    assert trainer.callback_handler.callbacks[0] is cb and names[1:] == [
        "DefaultFlowCallback", "PrinterCallback"]
    with pytest.raises(ValueError, match="already has a NoiseMonitorCallback"):
        NoiseMonitorCallback.attach(trainer, **kw)


def test_huggingface_callback_refuses_fp16_without_the_scaler(tmp_path):
    transformers = pytest.importorskip("transformers")
    from paperlib.callbacks.huggingface import NoiseMonitorCallback

    cb = NoiseMonitorCallback(batch_size=B, sampling=paperlib.Sampling.shuffled(N_TRAIN))
    args = transformers.TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    args.fp16 = True  # as on a GPU machine; the check runs before any training
    with pytest.raises(ValueError, match="scaler=trainer.accelerator.scaler"):
        cb.on_train_begin(args, None, None, model=torch.nn.Linear(2, 2))
