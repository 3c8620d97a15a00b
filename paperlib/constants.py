"""String choices and fixed numbers shared by every module (one place for each)."""

import re

ALGORITHMS = ("sgd", "svag", "ngd", "gd")
NORMS = ("bn", "gn", "none")
DATASETS = ("cifar10", "cifar100", "svhn", "synthetic")
SAMPLERS = ("reshuffle", "iid", "replacement", "fixed")
PRESETS = ("smoke", "cpu", "paper")
# Schedule.kind (schedules.py); "triangle" is piecewise_linear through the appendix's knots.
SCHEDULE_KINDS = ("constant", "step", "cosine", "piecewise_linear", "triangle")
# RunConfig.schedule: the kinds a config builds from its fields (piecewise_linear needs knots)
SCHEDULES = tuple(k for k in SCHEDULE_KINDS if k != "piecewise_linear")
SCHEDULE_UNITS = ("epoch", "step")  # Schedule.unit and RunConfig.schedule_unit
DATASET_CLASSES = {"cifar10": 10, "cifar100": 100, "svhn": 10, "synthetic": 10}
# The official (train, test) counts: RunConfig checks B and n against them before any data is
# loaded, and the loader refuses a copy of a data set that does not have them.
DATASET_SIZES = {
    "cifar10": (50_000, 10_000),
    "cifar100": (50_000, 10_000),
    "svhn": (73_257, 26_032),
    "synthetic": (2_000, 1_000),
}
# Architectures: "preresnet<depth>" with depth = 6n + 2 (e.g. preresnet8, preresnet32),
# "vgg11" / "vgg13" / "vgg16" / "vgg19", "convnet" (a 3-stage VGG-style net for CPU presets),
# "resnet<depth>" (post-activation ResNet, the non-scale-invariant control, e.g. resnet32).
ARCH_FAMILIES = ("preresnet", "vgg", "convnet", "resnet")
VGG_NAMES = ("vgg11", "vgg13", "vgg16", "vgg19", "convnet")  # one conv list each (models.VGG_CFGS)
_DEPTH_ARCH = re.compile(r"^(preresnet|resnet)(\d+)$")
ARCH_HELP = ("'preresnet<depth>' or 'resnet<depth>' with depth = 6n + 2, n >= 1 (e.g. 8, 14, 20, "
             "32, 56), " + ", ".join(repr(k) for k in VGG_NAMES))


def parse_arch(arch: str) -> tuple[str, int | None]:
    """The arch grammar: (family, blocks per stage n) for ``preresnet<6n+2>`` / ``resnet<6n+2>``,
    (name, None) for the VGG lists and ``convnet``; ValueError naming ``arch`` otherwise."""
    if isinstance(arch, str) and arch in VGG_NAMES:
        return arch, None
    m = _DEPTH_ARCH.match(arch) if isinstance(arch, str) else None
    if m is None:
        raise ValueError(f"arch={arch!r} is not allowed; choose {ARCH_HELP}")
    depth = int(m.group(2))
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"arch={arch!r} is not allowed: depth {depth} must be 6n + 2 with n >= 1 "
                         "(8, 14, 20, 26, 32, ..., 56, ...)")
    return m.group(1), (depth - 2) // 6


GROUPNORM_GROUPS = 8  # GroupNorm(8), the paper's GN nets

# Images: 32×32 RGB in every data set; a run may average-pool them to r×r, r a divisor of 32.
IMAGE_SIZE = 32
RESOLUTIONS = (1, 2, 4, 8, 16, 32)  # divisors of IMAGE_SIZE
CROP_PADDING = 4  # RandomCrop(32, padding=4) at full resolution (scaled with r)

# Input normalization of the paper's common recipe (CIFAR-10 train statistics).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)
# Standard CIFAR-100 statistics; SVHN uses the common 0.5 / 0.5.
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
SVHN_MEAN = (0.5, 0.5, 0.5)
SVHN_STD = (0.5, 0.5, 0.5)
NORMALIZATION = {  # (mean, std) per channel, in [0, 1] pixel units
    "cifar10": (CIFAR10_MEAN, CIFAR10_STD),
    "cifar100": (CIFAR100_MEAN, CIFAR100_STD),
    "svhn": (SVHN_MEAN, SVHN_STD),
    "synthetic": (CIFAR10_MEAN, CIFAR10_STD),
}
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)
