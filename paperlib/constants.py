"""String choices and fixed numbers shared by every module (one place for each)."""

ALGORITHMS = ("sgd", "svag", "ngd", "gd")
NORMS = ("bn", "gn", "none")
DATASETS = ("cifar10", "cifar100", "svhn", "synthetic")
SAMPLERS = ("reshuffle", "iid", "replacement", "fixed")
PRESETS = ("smoke", "cpu", "paper")
DATASET_CLASSES = {"cifar10": 10, "cifar100": 100, "svhn": 10, "synthetic": 10}
# Architectures: "preresnet<depth>" with depth = 6n + 2 (e.g. preresnet8, preresnet32),
# "vgg11" / "vgg13" / "vgg16" / "vgg19", "convnet" (a 3-stage VGG-style net for CPU presets),
# "resnet<depth>" (post-activation ResNet, the non-scale-invariant control, e.g. resnet32).
ARCH_FAMILIES = ("preresnet", "vgg", "convnet", "resnet")

GROUPNORM_GROUPS = 8  # GroupNorm(8), the paper's GN nets

# Input normalization of the paper's common recipe (CIFAR-10 train statistics).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)
