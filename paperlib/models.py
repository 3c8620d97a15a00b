"""The paper's scale-invariant networks (built as in Li, Lyu, Arora 2020, App. C).

Scale-invariant families (``preresnet<depth>``, ``vgg11/13/16/19``, ``convnet``):

* every conv has no bias and Kaiming fan-in normal init (std = sqrt(2 / fan_in));
* every norm layer has no affine parameters and eps = 0, so the invariance is exact:
  ``ExactBatchNorm2d(C)`` (= BatchNorm2d(C, eps=0, affine=False), which torch refuses in
  training mode), ``GroupNorm(8, C, eps=0, affine=False)`` or none;
* the last linear layer (``model.head``) is fixed at its random init (weight ~ N(0, 2 / fan_in),
  bias 0, ``requires_grad=False``): it is neither trained nor decayed.

With norm "bn" or "gn" the output is invariant to scaling all trained (conv) weights jointly by
c > 0. With norm "none" they are not: VGG / convnet are then homogeneous of degree #convs and
PreResNet mixes degrees in its residual sums. Because eps = 0, a norm layer whose input has zero
variance (e.g. GroupNorm on an all-zero image) returns NaN; callers must avoid such inputs.

``resnet<depth>`` is the non-scale-invariant control: a standard post-activation CIFAR ResNet
(He et al. 2016) with affine BatchNorm (default eps), option-A shortcuts and a trainable last
linear layer with bias.
"""

import contextlib
import copy
import math
from collections.abc import Callable

import torch
from torch import nn

from paperlib.constants import GROUPNORM_GROUPS, NORMS, VGG_NAMES, parse_arch
from paperlib.seeding import STREAM_INIT, derive_seed
from paperlib.validate import check_choice, check_int, is_real

# Standard VGG conv lists (Simonyan & Zisserman 2015, configurations A, B, D, E); 'M' = 2x2 pool.
VGG_CFGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],
    # Small 3-stage net for CPU presets, built by the same VGG class: the CPU probe's convnet
    # (max pooling, the last pool an adaptive average pool to 2×2, see VGG_POOLING).
    "convnet": [16, "M", 32, "M", 64],
}
# 'M' pooling and head pooling per VGG config: VGGs follow the recipe (average pooling, global
# average pool); the convnet follows the 2-core CPU probe, where the Fig 1 gap was found with max
# pooling and a 2×2 adaptive average pool before the head. Max pooling is positively
# homogeneous, so scale invariance is unchanged.
VGG_POOLING = {"convnet": ("max", 2)}

assert tuple(VGG_CFGS) == VGG_NAMES  # the arch grammar (constants.parse_arch) names them


# ----------------------------------------------------------------------------- building blocks


class ExactBatchNorm2d(nn.BatchNorm2d):
    """``BatchNorm2d(C, eps=0, affine=False)``: exactly scale-invariant batch normalization.

    torch refuses eps = 0 in training mode, so training mode is computed here: batch mean and
    biased variance over (N, H, W), running statistics updated as in ``nn.BatchNorm2d`` (momentum,
    unbiased running variance). Eval mode uses ``F.batch_norm`` with the running statistics.
    A channel with zero batch variance gives NaN/inf (no eps to hide it).
    """

    def __init__(self, channels: int, momentum: float | None = 0.1):
        super().__init__(channels, eps=0.0, momentum=momentum, affine=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"expected a 4D input [N, C, H, W], got shape {tuple(x.shape)}")
        if not (self.training or self.running_mean is None):
            return nn.functional.batch_norm(x, self.running_mean, self.running_var,
                                            training=False, eps=0.0)
        n = x.numel() // x.shape[1]
        if n < 2:
            raise ValueError(f"batch norm in training mode needs more than 1 value per channel, "
                             f"got input shape {tuple(x.shape)}")
        var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=0)
        if self.training and self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                     else self.momentum)
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), m)
                unbiased = var.detach() * (n / (n - 1))
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), m)
        return (x - mean[None, :, None, None]) / var.sqrt()[None, :, None, None]


def _norm(norm: str, channels: int, *, affine: bool) -> nn.Module:
    """BatchNorm / GroupNorm(8) / Identity. Scale-invariant nets use affine=False and eps=0."""
    if norm == "none":
        return nn.Identity()
    if norm == "bn":
        return nn.BatchNorm2d(channels, affine=True) if affine else ExactBatchNorm2d(channels)
    return nn.GroupNorm(GROUPNORM_GROUPS, channels, affine=affine) if affine else nn.GroupNorm(
        GROUPNORM_GROUPS, channels, eps=0.0, affine=False)


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class PreActBlock(nn.Module):
    """Pre-activation basic block: norm → ReLU → conv3x3 → norm → ReLU → conv3x3.

    With ``projection`` the shortcut is norm → 1x1 conv (no ReLU). The shortcut reuses the output
    of the block's first norm layer: for affine-free norms this is exactly a separate norm of x.
    """

    def __init__(self, cin: int, cout: int, stride: int, norm: str, projection: bool):
        super().__init__()
        self.norm1 = _norm(norm, cin, affine=False)
        self.conv1 = _conv3x3(cin, cout, stride)
        self.norm2 = _norm(norm, cout, affine=False)
        self.conv2 = _conv3x3(cout, cout)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride=stride, bias=False) if projection else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = self.norm1(x)
        out = self.conv2(torch.relu(self.norm2(self.conv1(torch.relu(o)))))
        return out + (self.shortcut(o) if self.shortcut is not None else x)


class PreResNet(nn.Module):
    """Scale-invariant PreResNet: stem conv → 3 stages of n blocks → norm → GAP → head.

    Stage widths 16w/32w/64w, strides 1/2/2; the first block of every stage (stage 1 too) has a
    projection shortcut, so each residual sum is homogeneous of degree 1 in the weights.
    """

    def __init__(self, n: int, widths: tuple[int, int, int], norm: str, num_classes: int,
                 in_channels: int):
        super().__init__()
        self.stem = _conv3x3(in_channels, widths[0])
        blocks, cin = [], widths[0]
        for cout, stride in zip(widths, (1, 2, 2), strict=True):
            for i in range(n):
                blocks.append(PreActBlock(cin, cout, stride if i == 0 else 1, norm, i == 0))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.final_norm = _norm(norm, cin, affine=False)  # no ReLU after it
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.final_norm(self.blocks(self.stem(x)))
        return self.head(torch.flatten(self.pool(x), 1))


class AvgPool2x2(nn.Module):
    """2x2 average (or max) pooling, stride 2, that is a no-op once the feature map is 1 pixel
    high or wide.

    This lets small inputs (e.g. 8x8) pass through all five pools of VGG-16/19: 8→4→2→1→1→1.
    """

    def __init__(self, kind: str = "avg"):
        super().__init__()
        self.kind = kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if min(x.shape[-2:]) < 2:
            return x
        if self.kind == "avg":
            return nn.functional.avg_pool2d(x, 2)
        return max_pool2x2(x)


CHANNELS_LAST_POOL_MIN = 1 << 16  # below this the two layout copies cost what they save


@contextlib.contextmanager
def channels_last_pool_min(numel: int):
    """Within the block, :func:`max_pool2x2` takes the channels-last route for maps of at least
    ``numel`` values (``1 << 62``: never); for measuring the route (``make bench``, item 2)."""
    global CHANNELS_LAST_POOL_MIN
    saved, CHANNELS_LAST_POOL_MIN = CHANNELS_LAST_POOL_MIN, int(numel)
    try:
        yield
    finally:
        CHANNELS_LAST_POOL_MIN = saved


def max_pool2x2(x: torch.Tensor) -> torch.Tensor:
    """``F.max_pool2d(x, 2)``, bitwise (values, and gradients with the same first-maximum tie
    rule), but on CPU through the channels-last kernel for large maps: torch's NCHW kernel is
    several times slower on them (the profiler put it at ~30 % of a full-data GD step at 8×8).
    ``make bench`` (item 2, max-pool rows): a test-set pass 1.6× faster; the GD step's gain is
    within the machine's noise."""
    if (x.device.type != "cpu" or x.dim() != 4 or not x.is_contiguous()
            or x.numel() < CHANNELS_LAST_POOL_MIN):
        return nn.functional.max_pool2d(x, 2)
    return nn.functional.max_pool2d(_ChannelsLast.apply(x), 2).contiguous()


class _ChannelsLast(torch.autograd.Function):
    """NCHW → channels-last copy whose backward returns the gradient in NCHW again (a
    channels-last gradient would send ReLU and GroupNorm backward to their slow kernels)."""

    @staticmethod
    def forward(ctx, x):
        return x.contiguous(memory_format=torch.channels_last)

    @staticmethod
    def backward(ctx, g):
        return g.contiguous()


class VGG(nn.Module):
    """Scale-invariant VGG (paper recipe): [conv3x3 (no bias) → norm → ReLU | avg-pool 'M']* → GAP
    → fixed linear head. Also builds the small ``convnet``."""

    def __init__(self, cfg: list[int | str], norm: str, num_classes: int, in_channels: int,
                 pool: str = "avg", head_pool: int = 1):
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for v in cfg:
            if v == "M":
                layers.append(AvgPool2x2(pool))
            else:
                layers += [_conv3x3(cin, v), _norm(norm, v, affine=False), nn.ReLU()]
                cin = v
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(head_pool)
        self.head_size = (head_pool, head_pool)
        self.head = nn.Linear(cin * head_pool * head_pool, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        if x.shape[-2:] != self.head_size:  # (an adaptive pool to its own size is the identity;
            x = self.pool(x)                # skipping it saves ~10 % of the convnet's CPU time)
        return self.head(torch.flatten(x, 1))


class BasicBlock(nn.Module):
    """Post-activation basic block (He et al. 2016): conv → norm → ReLU → conv → norm, + shortcut,
    ReLU. Option-A shortcut when the shape changes: stride-2 subsampling and zero-padded channels
    (parameter-free)."""

    def __init__(self, cin: int, cout: int, stride: int, norm: str):
        super().__init__()
        self.conv1 = _conv3x3(cin, cout, stride)
        self.norm1 = _norm(norm, cout, affine=True)
        self.conv2 = _conv3x3(cout, cout)
        self.norm2 = _norm(norm, cout, affine=True)
        self.stride, self.pad = stride, cout - cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.norm2(self.conv2(torch.relu(self.norm1(self.conv1(x)))))
        sc = x[:, :, ::self.stride, ::self.stride] if self.stride > 1 else x
        if self.pad:
            sc = nn.functional.pad(sc, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return torch.relu(out + sc)


class ResNet(nn.Module):
    """Standard post-activation CIFAR ResNet (the non-scale-invariant control): conv → norm → ReLU
    → 3 stages of n blocks (16w/32w/64w, strides 1/2/2) → GAP → trainable linear with bias."""

    def __init__(self, n: int, widths: tuple[int, int, int], norm: str, num_classes: int,
                 in_channels: int):
        super().__init__()
        self.stem = nn.Sequential(_conv3x3(in_channels, widths[0]),
                                  _norm(norm, widths[0], affine=True), nn.ReLU())
        blocks, cin = [], widths[0]
        for cout, stride in zip(widths, (1, 2, 2), strict=True):
            for i in range(n):
                blocks.append(BasicBlock(cin, cout, stride if i == 0 else 1, norm))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))


# ----------------------------------------------------------------------------- validation


def _scaled_channels(base: int, width: float, norm: str) -> int:
    c = base * width
    if abs(c - round(c)) > 1e-9 or round(c) < 1:
        raise ValueError(f"width {width!r} gives {c} channels for a {base}-channel layer; width "
                         "must make every channel count a positive integer")
    c = int(round(c))
    if norm == "gn" and c % GROUPNORM_GROUPS:
        raise ValueError(f"width {width!r} gives {c} channels, not divisible by the "
                         f"{GROUPNORM_GROUPS} groups of norm 'gn'")
    return c


def is_scale_invariant(arch: str) -> bool:
    """True for the scale-invariant families (preresnet, vgg*, convnet); False for resnet.

    By family only: with norm "none" those nets are not invariant.
    """
    family, _ = parse_arch(arch)
    return family != "resnet"


# ----------------------------------------------------------------------------- public API


@torch.no_grad()
def _init_weights(model: nn.Module, gen: torch.Generator) -> None:
    """Kaiming fan-in normal (std sqrt(2 / fan_in)) for every conv and linear weight; zero linear
    bias; affine norms (ResNet control only) keep weight 1, bias 0."""
    for mod in model.modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            w = mod.weight
            fan_in = w[0].numel()
            w.copy_(torch.randn(w.shape, generator=gen, dtype=w.dtype) * math.sqrt(2.0 / fan_in))
            if mod.bias is not None:
                mod.bias.zero_()


def build_model(arch: str, *, width: float = 1, norm: str = "bn", num_classes: int = 10,
                in_channels: int = 3, seed: int = 0) -> nn.Module:
    """Build ``arch`` (see module docstring) with channels × ``width`` and norm ``norm``.

    The init is a pure function of ``seed`` (stream ``STREAM_INIT``); the global torch RNG is left
    untouched. Scale-invariant nets have a fixed head (``model.head``, requires_grad False).
    """
    family, n = parse_arch(arch)
    check_choice("norm", norm, NORMS)
    if not is_real(width) or not width > 0:
        raise ValueError(f"width={width!r} is not allowed; width must be a finite number > 0")
    check_int("num_classes", num_classes, 1)
    check_int("in_channels", in_channels, 1)
    check_int("seed", seed, 0)

    if n is not None:
        widths = tuple(_scaled_channels(b, width, norm) for b in (16, 32, 64))
    else:
        cfg = [v if v == "M" else _scaled_channels(v, width, norm) for v in VGG_CFGS[family]]

    with torch.random.fork_rng(devices=[]):  # module constructors draw from the global CPU RNG
        if family == "preresnet":
            model = PreResNet(n, widths, norm, int(num_classes), int(in_channels))
        elif family == "resnet":
            model = ResNet(n, widths, norm, int(num_classes), int(in_channels))
        else:
            model = VGG(cfg, norm, int(num_classes), int(in_channels),
                        *VGG_POOLING.get(family, ("avg", 1)))
    gen = torch.Generator().manual_seed(derive_seed(int(seed), STREAM_INIT) % 2**63)
    _init_weights(model, gen)
    if family != "resnet":
        model.head.requires_grad_(False)  # fixed at its random init: not trained, not decayed
    return model


def trained_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters with requires_grad: what SGD updates, what weight decay and R = |x|² cover."""
    return [p for p in model.parameters() if p.requires_grad]


def accelerate(model: nn.Module, device: torch.device | str, *, channels_last: bool = False,
               tf32: bool = True, compile: bool = False, bf16: bool = False
               ) -> Callable[[torch.Tensor], torch.Tensor]:
    """Apply the accelerator options (``RunConfig.channels_last``, ``tf32``, ``compile``,
    ``bf16``) to a built model on ``device`` and return its forward pass with them, for the
    ``forward=`` argument of the step functions.

    ``channels_last`` puts the model (and each batch, in the returned forward) in NHWC memory
    format; ``compile`` compiles the model in place (parameters and state_dict keys unchanged);
    ``bf16`` runs the forward (so the backward) under bfloat16 autocast with the output cast
    back to float32. TF32 is a process-wide CUDA switch, set here from the model being built;
    CPU convolutions and matmuls are always full fp32. With every option off the forward is
    ``model(x)``.
    """
    device = torch.device(device)
    if device.type == "cuda":  # the allow_tf32 flags: code reading either torch API sees them
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if compile:
        model.compile()  # in place: parameters and state_dict keys are unchanged

    def forward(x: torch.Tensor) -> torch.Tensor:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if bf16:  # forward (so backward) in bfloat16 where autocast allows; loss fp32
            with torch.autocast(device.type, dtype=torch.bfloat16):
                return model(x).float()
        return model(x)

    return forward


@torch.no_grad()
def scale_invariance_error(model: nn.Module, x: torch.Tensor, c: float = 10.0) -> float:
    """max|f_{cW}(x) − f_W(x)| / max|f_W(x)| with W all trained parameters scaled by c > 0.

    Runs on a deep copy in train mode (BN uses batch statistics) cast to x's dtype and device, so
    the caller's model, mode and running statistics are untouched.
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got {type(x).__name__} "
                         f"{getattr(x, 'dtype', '')}")
    if not is_real(c) or not c > 0:
        raise ValueError(f"c={c!r} is not allowed; c must be a finite number > 0")
    net = copy.deepcopy(model).to(device=x.device, dtype=x.dtype).train()
    ref = net(x)
    for p in trained_parameters(net):
        p.mul_(c)
    diff = (net(x) - ref).abs().max().item()
    scale = ref.abs().max().item()
    if scale == 0.0:
        return 0.0 if diff == 0.0 else math.inf
    return diff / scale
