"""Tests for paperlib.data.samplers: the four sampling schemes of the appendix, purity in
(seed, step), the CPU stream pinned against the plain host draws, and draws on the device."""

import pytest
import torch

from paperlib import seeding
from paperlib.constants import SAMPLERS
from paperlib.data import Sampler


def test_reshuffle_epoch_visits_each_once():
    s = Sampler("reshuffle", n=103, batch_size=10, seed=7)
    assert s.steps_per_epoch == 10
    epochs = []
    for e in range(2):
        idx = torch.cat([s.indices(e * 10 + k) for k in range(10)])
        assert len(set(idx.tolist())) == 100 and idx.min() >= 0 and idx.max() < 103
        epochs.append(idx)
    assert not torch.equal(epochs[0], epochs[1])  # a new permutation each epoch


def test_fixed_repeats_order():
    s = Sampler("fixed", n=40, batch_size=8, seed=1)
    first = torch.cat([s.indices(k) for k in range(5)])
    assert sorted(first.tolist()) == list(range(40)) and not torch.equal(first, torch.arange(40))
    assert torch.equal(first, torch.cat([s.indices(5 + k) for k in range(5)]))
    other = Sampler("fixed", n=40, batch_size=8, seed=2)
    assert not torch.equal(first, torch.cat([other.indices(k) for k in range(5)]))


def test_iid_and_replacement():
    iid = Sampler("iid", n=20, batch_size=20, seed=0)
    for step in range(5):
        assert sorted(iid.indices(step).tolist()) == list(range(20))  # distinct in a batch
    iid = Sampler("iid", n=50, batch_size=10, seed=0)
    assert not torch.equal(iid.indices(0), iid.indices(1))
    rep = Sampler("replacement", n=20, batch_size=20, seed=0)
    draws = torch.stack([rep.indices(k) for k in range(10)])
    assert draws.min() >= 0 and draws.max() < 20 and draws.dtype == torch.int64
    assert any(len(set(row.tolist())) < 20 for row in draws)  # repeats happen


@pytest.mark.parametrize("kind", SAMPLERS)
def test_indices_pure(kind):
    s = Sampler(kind, n=37, batch_size=5, seed=11)
    steps = [0, 9, 3, 15, 7, 1]
    forward = {k: s.indices(k) for k in sorted(steps)}
    resumed = Sampler(kind, n=37, batch_size=5, seed=11)
    for k in steps:  # other order, other instance
        assert torch.equal(resumed.indices(k), forward[k])
        assert torch.equal(s.indices(k), forward[k])
    out = s.indices(4)
    assert out.shape == (5,) and out.dtype == torch.int64 and out.device.type == "cpu"
    out[:] = -1  # callers mutating a batch must not corrupt later draws
    assert (s.indices(4) >= 0).all()


def test_sampler_validation():
    with pytest.raises(ValueError, match="kind.*reshuffle"):
        Sampler("shuffle", n=10, batch_size=2)
    with pytest.raises(ValueError, match="batch_size"):
        Sampler("iid", n=10, batch_size=11)
    with pytest.raises(ValueError, match="batch_size"):
        Sampler("iid", n=10, batch_size=0)
    with pytest.raises(ValueError, match="step"):
        Sampler("iid", n=10, batch_size=2).indices(-1)


def _host_reference(s: Sampler, step: int) -> torch.Tensor:
    """What every sampler drew before it drew on the device: host generator draws (the stream of
    all committed runs)."""
    g = seeding.generator
    b, stream = s.batch_size, seeding.STREAM_BATCH
    if s.kind in ("reshuffle", "fixed"):
        epoch, pos = divmod(step, s.steps_per_epoch)
        keys = (s.seed, stream, epoch) if s.kind == "reshuffle" else (s.seed, stream)
        return torch.randperm(s.n, generator=g(*keys))[pos * b : (pos + 1) * b]
    if s.kind == "iid":
        return torch.randperm(s.n, generator=g(s.seed, stream, step))[:b]
    return torch.randint(0, s.n, (b,), generator=g(s.seed, stream, step))


@pytest.mark.parametrize("kind", SAMPLERS)
def test_cpu_stream_is_the_host_stream(kind):
    """Exact equality: on the CPU the on-device draw is the same generator call as before, so
    CPU runs stay bitwise those trained by earlier versions."""
    s = Sampler(kind, n=53, batch_size=7, seed=3)
    for step in (0, 1, 6, 7, 8, 31):
        assert torch.equal(s.indices(step), _host_reference(s, step)), (kind, step)


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", SAMPLERS)
def test_indices_drawn_on_the_device(kind, device):
    s = Sampler(kind, n=41, batch_size=8, seed=5)
    out = s.indices(3, device=device)
    assert out.device.type == device and out.dtype == torch.int64 and out.shape == (8,)
    assert 0 <= int(out.min()) and int(out.max()) < 41
    assert torch.equal(out, Sampler(kind, n=41, batch_size=8, seed=5).indices(3, device=device))
    if kind != "replacement":
        assert len(set(out.tolist())) == 8  # distinct within a batch
