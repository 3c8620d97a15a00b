"""Tests of paperlib.models against the paper's scale-invariant nets (Li, Lyu, Arora 2020)."""

import math

import pytest
import torch
from torch import nn

from paperlib.models import (
    ExactBatchNorm2d,
    build_model,
    is_scale_invariant,
    max_pool2x2,
    scale_invariance_error,
    trained_parameters,
)
from paperlib.sampling import batch_coupled

ALL_ARCHS = ["preresnet8", "preresnet32", "resnet32", "vgg11", "vgg13", "vgg16", "vgg19",
             "convnet"]


def _images(b: int, hw: int, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(1234)
    return torch.randn(b, 3, hw, hw, generator=g, dtype=dtype)


# ----------------------------------------------------------------------------- parameter counts


def _preresnet32_counts(w: int) -> tuple[int, int]:
    """(trained, total) by hand: convs only are trained; the head (64w*10 + 10) is fixed."""
    a, b, c = 16 * w, 32 * w, 64 * w
    stem = 9 * 3 * a
    stage1 = (9 * a * a + 9 * a * a + 1 * a * a) + 4 * (9 * a * a + 9 * a * a)
    stage2 = (9 * a * b + 9 * b * b + 1 * a * b) + 4 * (9 * b * b + 9 * b * b)
    stage3 = (9 * b * c + 9 * c * c + 1 * b * c) + 4 * (9 * c * c + 9 * c * c)
    trained = stem + stage1 + stage2 + stage3
    return trained, trained + c * 10 + 10


@pytest.mark.parametrize("w", [1, 4])
def test_preresnet32_parameter_counts(w):
    trained, total = _preresnet32_counts(w)
    model = build_model("preresnet32", width=w, norm="bn")
    assert sum(p.numel() for p in trained_parameters(model)) == trained
    assert sum(p.numel() for p in model.parameters()) == total


def test_preresnet32_counts_literal():
    # The hand formula itself, evaluated once (guards against a typo in the helper).
    assert _preresnet32_counts(1) == (464_048, 464_698)
    assert _preresnet32_counts(4) == (7_419_584, 7_422_154)


def test_vgg16_parameter_counts():
    trained = 9 * (3 * 64 + 64 * 64
                   + 64 * 128 + 128 * 128
                   + 128 * 256 + 256 * 256 + 256 * 256
                   + 256 * 512 + 512 * 512 + 512 * 512
                   + 512 * 512 + 512 * 512 + 512 * 512)
    total = trained + 512 * 10 + 10
    for norm in ("bn", "none"):  # no affine norms: same counts
        model = build_model("vgg16", norm=norm)
        assert sum(p.numel() for p in trained_parameters(model)) == trained == 14_710_464
        assert sum(p.numel() for p in model.parameters()) == total


def test_vgg19_parameter_counts():
    trained = 9 * (3 * 64 + 64 * 64
                   + 64 * 128 + 128 * 128
                   + 128 * 256 + 256 * 256 + 256 * 256 + 256 * 256
                   + 256 * 512 + 512 * 512 + 512 * 512 + 512 * 512
                   + 512 * 512 + 512 * 512 + 512 * 512 + 512 * 512)
    total = trained + 512 * 10 + 10
    model = build_model("vgg19", norm="bn")
    assert sum(p.numel() for p in trained_parameters(model)) == trained == 20_018_880
    assert sum(p.numel() for p in model.parameters()) == total


def test_resnet32_parameter_counts():
    # Option-A shortcuts (no parameters), affine BN (2 per channel), trainable head with bias.
    convs = (9 * 3 * 16
             + 5 * (9 * 16 * 16 + 9 * 16 * 16)
             + (9 * 16 * 32 + 9 * 32 * 32) + 4 * (9 * 32 * 32 + 9 * 32 * 32)
             + (9 * 32 * 64 + 9 * 64 * 64) + 4 * (9 * 64 * 64 + 9 * 64 * 64))
    bn = 2 * (16 + 10 * 16 + 10 * 32 + 10 * 64)
    total = convs + bn + 64 * 10 + 10
    model = build_model("resnet32", norm="bn")
    trained = sum(p.numel() for p in trained_parameters(model))
    assert trained == sum(p.numel() for p in model.parameters()) == total
    assert total == 464_154  # the familiar 0.46M of He et al. 2016


def test_convnet_parameter_count_and_width():
    model = build_model("convnet", width=2, norm="gn")
    assert sum(p.numel() for p in trained_parameters(model)) == 9 * (3 * 32 + 32 * 64 + 64 * 128)
    # head: 128 channels × 2×2 adaptive average pool → 10 (the CPU probe's convnet)
    assert sum(p.numel() for p in model.parameters()) == 9 * (3 * 32 + 32 * 64 + 64 * 128) \
        + 128 * 4 * 10 + 10


# ----------------------------------------------------------------------------- structure


@pytest.mark.parametrize("arch", ["preresnet8", "vgg11", "convnet"])
@pytest.mark.parametrize("norm", ["bn", "gn", "none"])
def test_scale_invariant_structure(arch, norm):
    model = build_model(arch, norm=norm)
    norms = [m for m in model.modules() if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm))]
    if norm == "bn":
        assert all(isinstance(m, ExactBatchNorm2d) for m in norms)
    assert (len(norms) > 0) == (norm != "none")
    for m in norms:
        assert m.eps == 0.0 and not m.affine
        if isinstance(m, nn.GroupNorm):
            assert m.num_groups == 8
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            assert m.bias is None
    assert all(isinstance(p, nn.Parameter) for p in trained_parameters(model))
    assert not model.head.weight.requires_grad and not model.head.bias.requires_grad
    assert torch.all(model.head.bias == 0)
    assert batch_coupled(model) == (norm == "bn")


def test_resnet_control_structure():
    model = build_model("resnet32", norm="bn")
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(m.affine and m.eps == 1e-5 for m in bns)
    assert model.head.weight.requires_grad and model.head.bias.requires_grad
    gn = build_model("resnet32", norm="gn")
    gns = [m for m in gn.modules() if isinstance(m, nn.GroupNorm)]
    assert gns and all(m.affine and m.num_groups == 8 for m in gns)
    assert not batch_coupled(gn)


def test_kaiming_fan_in_init():
    model = build_model("vgg16", norm="bn", seed=3)
    w = model.features[-4].weight  # last 512->512 conv: fan_in 4608, 2.4M samples
    assert w.shape == (512, 512, 3, 3)
    assert abs(w.std().item() / math.sqrt(2 / 4608) - 1) < 0.01
    assert abs(w.mean().item()) < 1e-3 * math.sqrt(2 / 4608) * 10
    hw = model.head.weight
    assert hw.shape == (10, 512)
    assert abs(hw.std().item() / math.sqrt(2 / 512) - 1) < 0.05


def test_is_scale_invariant():
    for arch in ["preresnet8", "preresnet32", "preresnet56", "vgg11", "vgg19", "convnet"]:
        assert is_scale_invariant(arch)
    assert not is_scale_invariant("resnet32")
    with pytest.raises(ValueError, match="resnet31"):
        is_scale_invariant("resnet31")


# ----------------------------------------------------------------------------- scale invariance


@pytest.mark.parametrize("arch,hw", [("preresnet8", 32), ("preresnet32", 8), ("vgg11", 16),
                                     ("vgg16", 8), ("vgg19", 8), ("convnet", 8)])
@pytest.mark.parametrize("norm", ["bn", "gn"])
def test_scale_invariance(arch, hw, norm):
    model = build_model(arch, norm=norm).double()
    x = _images(4, hw, torch.float64)
    assert scale_invariance_error(model, x, 10.0) <= 1e-5
    if arch in ("preresnet8", "convnet"):
        assert scale_invariance_error(model, x, 0.1) <= 1e-5


@pytest.mark.parametrize("arch,norm", [("resnet32", "bn"), ("resnet32", "gn"),
                                       ("preresnet8", "none"), ("vgg11", "none"),
                                       ("convnet", "none")])
def test_not_scale_invariant(arch, norm):
    model = build_model(arch, norm=norm).double()
    assert scale_invariance_error(model, _images(4, 8, torch.float64)) > 1e-3


def test_homogeneous_degree_without_norm():
    # convnet without norm (3 convs, ReLU, avg pools, fixed zero-bias head) is homogeneous of
    # degree 3: f(cW) = c^3 f(W), so the relative change is exactly c^3 - 1.
    conv = build_model("convnet", norm="none").double()
    x = _images(4, 8, torch.float64)
    assert scale_invariance_error(conv, x, 10.0) == pytest.approx(999.0, rel=1e-9)
    assert scale_invariance_error(conv, x, 0.5) == pytest.approx(0.875, rel=1e-9)


def test_exact_batchnorm_matches_torch():
    x = _images(6, 5, torch.float64) * 3 + 1
    ours = ExactBatchNorm2d(3).double()
    ref = nn.BatchNorm2d(3, eps=1e-300, affine=False).double()
    for _ in range(3):
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours.running_mean, ref.running_mean, rtol=1e-12, atol=0)
    torch.testing.assert_close(ours.running_var, ref.running_var, rtol=1e-12, atol=0)
    assert ours.num_batches_tracked == ref.num_batches_tracked == 3
    ours.eval()
    ref.eval()
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-12, atol=1e-12)
    cum = ExactBatchNorm2d(3, momentum=None).double()
    cum(x)
    cum(2 * x)
    torch.testing.assert_close(cum.running_mean, 1.5 * x.mean((0, 2, 3)))
    with pytest.raises(ValueError, match="more than 1 value"):
        ExactBatchNorm2d(3)(torch.ones(1, 3, 1, 1))


@pytest.mark.parametrize("arch", ["preresnet8", "convnet"])
def test_trainable_head_breaks_invariance(arch):
    model = build_model(arch, norm="bn").double()
    x = _images(4, 8, torch.float64)
    assert scale_invariance_error(model, x) <= 1e-5
    model.head.requires_grad_(True)  # now scaled too: output scales by c
    assert scale_invariance_error(model, x) > 1e-3


def test_scale_invariance_error_leaves_model_untouched():
    model = build_model("preresnet8", norm="bn").eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scale_invariance_error(model.double(), _images(4, 8, torch.float64))
    assert not model.training
    after = model.state_dict()
    assert all(torch.equal(before[k].double(), after[k].double()) for k in before)
    assert after["blocks.0.norm1.num_batches_tracked"] == 0


def test_scale_invariance_error_validation():
    model = build_model("convnet")
    with pytest.raises(ValueError, match="-1"):
        scale_invariance_error(model, _images(2, 8), c=-1.0)
    with pytest.raises(ValueError, match="x must be"):
        scale_invariance_error(model, torch.zeros(2, 3, 8, 8, dtype=torch.long))


# ----------------------------------------------------------------------------- fixed head


@pytest.mark.parametrize("arch,norm", [("preresnet8", "gn"), ("convnet", "bn")])
def test_fixed_head_under_sgd_with_weight_decay(arch, norm):
    model = build_model(arch, norm=norm)
    head_w, head_b = model.head.weight.clone(), model.head.bias.clone()
    params = trained_parameters(model)
    assert all(p is not model.head.weight and p is not model.head.bias for p in params)
    before = [p.detach().clone() for p in params]
    opt = torch.optim.SGD(params, lr=0.1, weight_decay=5e-4)
    x, y = _images(4, 8), torch.tensor([0, 1, 2, 3])
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    assert model.head.weight.grad is None and model.head.bias.grad is None
    assert all(p.grad is not None for p in params)
    opt.step()
    assert torch.equal(model.head.weight, head_w) and torch.equal(model.head.bias, head_b)
    assert all(not torch.equal(p, b) for p, b in zip(params, before, strict=True))


# ----------------------------------------------------------------------------- seeding


@pytest.mark.parametrize("arch", ["preresnet8", "convnet", "resnet32"])
def test_seeded_init(arch):
    rng = torch.get_rng_state()
    a, b = build_model(arch, seed=7), build_model(arch, seed=7)
    c = build_model(arch, seed=8)
    assert torch.equal(torch.get_rng_state(), rng)  # global RNG untouched
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["head.weight"], sc["head.weight"])
    first_conv = next(k for k in sa if k.endswith("weight") and sa[k].dim() == 4)
    assert not torch.equal(sa[first_conv], sc[first_conv])


def test_init_does_not_depend_on_global_rng():
    torch.manual_seed(0)
    a = build_model("convnet", seed=1)
    torch.manual_seed(99)
    b = build_model("convnet", seed=1)
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize("arch,bad", [("preresnet7", "preresnet7"), ("preresnet2", "preresnet2"),
                                      ("resnet33", "resnet33"), ("vgg12", "vgg12"),
                                      ("preresnet", "preresnet"), ("alexnet", "alexnet"),
                                      ("PreResNet32", "PreResNet32")])
def test_bad_arch(arch, bad):
    with pytest.raises(ValueError, match=bad):
        build_model(arch)


def test_bad_norm_and_width():
    with pytest.raises(ValueError, match="'ln'.*bn"):
        build_model("convnet", norm="ln")
    with pytest.raises(ValueError, match="0.3"):
        build_model("preresnet8", width=0.3)  # 16 * 0.3 is not an integer
    with pytest.raises(ValueError, match="0.25.*8 groups"):
        build_model("preresnet8", width=0.25, norm="gn")  # 4 channels for GroupNorm(8)
    build_model("preresnet8", width=0.25, norm="bn")  # 4 channels are fine without GN
    for w in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="width"):
            build_model("convnet", width=w)
    with pytest.raises(ValueError, match="num_classes"):
        build_model("convnet", num_classes=0)
    with pytest.raises(ValueError, match="seed"):
        build_model("convnet", seed=-1)


# ----------------------------------------------------------------------------- output shapes


@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_output_shape_32(arch):
    model = build_model(arch, norm="bn", num_classes=7)
    with torch.no_grad():
        assert model(_images(2, 32)).shape == (2, 7)


@pytest.mark.parametrize("arch,norm", [("convnet", "bn"), ("convnet", "gn"), ("convnet", "none"),
                                       ("preresnet8", "bn"), ("preresnet8", "gn"),
                                       ("preresnet8", "none"), ("resnet32", "bn"),
                                       ("vgg19", "bn")])  # 8 -> 4 -> 2 -> 1 -> 1 -> 1 pools
def test_output_shape_8(arch, norm):
    model = build_model(arch, norm=norm, num_classes=100, in_channels=1)
    with torch.no_grad():
        out = model(torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0)))
    assert out.shape == (3, 100) and torch.isfinite(out).all()


@pytest.mark.parametrize("shape", [(256, 16, 8, 8), (128, 32, 4, 4), (3, 5, 7, 9)])
def test_max_pool2x2_is_bitwise_max_pool2d(shape, monkeypatch):
    """The channels-last route gives F.max_pool2d's values and gradients bit for bit, ties
    included (ReLU zeros and repeated positive values pick the same first maximum)."""
    monkeypatch.setattr("paperlib.models.CHANNELS_LAST_POOL_MIN", 0)  # every shape takes it
    torch.manual_seed(0)
    x = torch.relu(torch.randn(shape).mul(3).round() / 3)  # many ties, zero and positive
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = nn.functional.max_pool2d(a, 2), max_pool2x2(b)
    g = torch.randn_like(ya)
    ya.backward(g)
    yb.backward(g)
    assert yb.is_contiguous() and yb.shape == ya.shape
    assert torch.equal(ya.view(torch.int32), yb.view(torch.int32))
    assert torch.equal(a.grad.view(torch.int32), b.grad.view(torch.int32))
    x[0, 0, 0, 0] = float("nan")  # NaN propagates as in max_pool2d (diverged runs stay NaN)
    assert torch.isnan(max_pool2x2(x)[0, 0, 0, 0])
