"""A data set on the training device: normalized float images, a seeded class-balanced subset,
area down-sampling, and batched random crop + flip drawn on the device (no DataLoader workers).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

import torch
import torch.nn.functional as F

from paperlib import seeding
from paperlib.constants import CROP_PADDING, IMAGE_SIZE, NORMALIZATION, RESOLUTIONS
from paperlib.validate import is_int

from .formats import RawDataset


def balanced_subset(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """A seeded, class-balanced choice of ``n`` indices (a pure function of labels, n, seed).

    Each class contributes ``n // K`` or ``n // K + 1`` examples (which classes get the extra one
    is random); a class with too few examples gives all it has and the rest is spread over the
    others.

    Args:
        labels: int64 [N] labels (any device; the draw runs on the CPU).
        n: subset size, 1 <= n <= N.
        seed: non-negative seed (stream ``STREAM_SUBSET``).

    Returns:
        Sorted int64 CPU tensor [n] of distinct indices into ``labels``.

    Raises:
        ValueError: n out of range.
    """
    total = len(labels)
    if not is_int(n) or not 1 <= n <= total:
        raise ValueError(f"subset must be an int with 1 <= subset <= {total}, got {n!r}")
    n = int(n)
    labels = labels.cpu()
    g = seeding.generator(seed, seeding.STREAM_SUBSET)
    perm = torch.randperm(total, generator=g)
    num_classes = int(labels.max()) + 1
    class_priority = torch.randperm(num_classes, generator=g)
    # Rank of each example within its class, in random order.
    y = labels[perm]
    order = torch.argsort(y, stable=True)
    sorted_y = y[order]
    starts = torch.searchsorted(sorted_y, sorted_y, right=False)
    rank = torch.empty(total, dtype=torch.int64)
    rank[order] = torch.arange(total) - starts
    # Take everyone's 0th, then 1st, ... example, classes in a random order within a rank.
    key = rank * num_classes + class_priority[y]
    chosen = perm[torch.argsort(key)[:n]]
    return torch.sort(chosen).values


def downsample(x: torch.Tensor, resolution: int) -> torch.Tensor:
    """Average-pool float images [n, C, 32, 32] to [n, C, r, r] (area down-sampling).

    Raises:
        ValueError: resolution not in ``RESOLUTIONS``.
    """
    if resolution not in RESOLUTIONS:
        raise ValueError(
            f"resolution must be one of {RESOLUTIONS} (divisors of 32), got {resolution!r}"
        )
    k = IMAGE_SIZE // resolution
    return x if k == 1 else F.avg_pool2d(x, kernel_size=k)


def augment_batch(
    x: torch.Tensor, generator: torch.Generator, *, padding: int, fill: torch.Tensor
) -> torch.Tensor:
    """Random crop with ``padding`` (padded with per-channel ``fill``) then random h-flip.

    One gather for the whole batch (no loop over examples); output values are taken from ``x``
    or ``fill`` only.

    Args:
        x: float [B, C, H, W] on any device.
        generator: torch.Generator on ``x``'s device.
        padding: pixels of padding per side (>= 0).
        fill: [C] padding value per channel (e.g. black after normalization).

    Returns:
        Tensor with the shape, dtype and device of ``x``.

    Raises:
        ValueError: bad shape, negative padding, fill size, or generator on another device.
    """
    if x.dim() != 4:
        raise ValueError(f"x must be [B, C, H, W], got shape {tuple(x.shape)}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    b, c, h, w = x.shape
    if fill.shape != (c,):
        raise ValueError(f"fill must have shape ({c},), got {tuple(fill.shape)}")
    if generator.device.type != x.device.type:
        raise ValueError(f"generator is on {generator.device}, data on {x.device}")
    dev = x.device
    padded = (
        fill.to(device=dev, dtype=x.dtype)
        .view(1, c, 1, 1)
        .expand(b, c, h + 2 * padding, w + 2 * padding)
        .clone()
    )
    padded[:, :, padding : padding + h, padding : padding + w] = x
    oy = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=dev)
    ox = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=dev)
    flip = torch.rand(b, generator=generator, device=dev) < 0.5
    ar_h = torch.arange(h, device=dev)
    ar_w = torch.arange(w, device=dev)
    cols = torch.where(flip[:, None], ar_w.flip(0)[None, :], ar_w[None, :]) + ox[:, None]
    rows = ar_h[None, :] + oy[:, None]
    return padded[
        torch.arange(b, device=dev).view(b, 1, 1, 1),
        torch.arange(c, device=dev).view(1, c, 1, 1),
        rows.view(b, 1, h, 1),
        cols.view(b, 1, 1, w),
    ]


@dataclass(frozen=True, eq=False)
class DeviceData:
    """Normalized float images and labels on one device (build with ``prepare``).

    Attributes:
        train_x: [n_train, C, r, r]; train_y: int64 [n_train]; test_x / test_y likewise.
        name, classes: from the RawDataset.
        mean, std: the per-channel normalization applied to [0, 1] pixels.
        resolution: r.
        subset_indices: CPU int64 indices of the training subset into the raw train set, or None.
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    name: str
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resolution: int
    subset_indices: torch.Tensor | None = None

    @property
    def train_size(self) -> int:
        return len(self.train_x)

    @property
    def test_size(self) -> int:
        return len(self.test_x)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return self.train_x.shape[1]

    @property
    def device(self) -> torch.device:
        return self.train_x.device

    @property
    def padding(self) -> int:
        """Crop padding: 4 at 32x32, scaled with the resolution, at least 1."""
        return max(1, CROP_PADDING * self.resolution // IMAGE_SIZE)

    @cached_property
    def fill(self) -> torch.Tensor:
        """[C] value of a black pixel after normalization (the crop padding value)."""
        # Same float32 arithmetic as ``prepare`` so the value equals a normalized black pixel.
        mean = torch.tensor(self.mean, dtype=torch.float32)
        std = torch.tensor(self.std, dtype=torch.float32)
        return ((torch.zeros(len(mean)) - mean) / std).to(self.device, self.train_x.dtype)

    def augment(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Random crop (padding ``self.padding``, black fill) + horizontal flip of a batch.

        Args:
            x: [B, C, r, r] on this data's device; generator: torch.Generator on that device.

        Returns:
            [B, C, r, r], same dtype and device.
        """
        return augment_batch(x, generator, padding=self.padding, fill=self.fill)

    def batch(
        self,
        indices: torch.Tensor,
        *,
        augment: bool = False,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Training examples at ``indices`` (no bounds check beyond torch's own).

        Args:
            indices: int64 [B] (moved to this device if needed).
            augment: apply ``self.augment``; needs ``generator``.
            generator: torch.Generator on this device.

        Returns:
            (x [B, C, r, r], y int64 [B]) on this device.

        Raises:
            ValueError: non-integer / non-1-D indices, or augment without a generator.
        """
        if indices.dim() != 1 or indices.dtype not in (torch.int64, torch.int32):
            raise ValueError(
                f"indices must be a 1-D int64 tensor, got {indices.dtype} {tuple(indices.shape)}"
            )
        if augment and generator is None:
            raise ValueError("augment=True needs a generator (paperlib.seeding.generator(...))")
        indices = indices.to(self.device)
        x, y = self.train_x[indices], self.train_y[indices]
        return (self.augment(x, generator) if augment else x), y

    def test_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The test set in order, in slices of ``batch_size`` (the last may be smaller)."""
        return _slices(self.test_x, self.test_y, batch_size)

    def train_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The (unaugmented) training set in order, e.g. for full-batch gradients."""
        return _slices(self.train_x, self.train_y, batch_size)


def _slices(
    x: torch.Tensor, y: torch.Tensor, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """In-order slices of (x, y); validates ``batch_size`` eagerly."""
    if not is_int(batch_size) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    b = int(batch_size)
    return ((x[i : i + b], y[i : i + b]) for i in range(0, len(x), b))


def prepare(
    raw: RawDataset,
    *,
    subset: int | None = None,
    resolution: int = IMAGE_SIZE,
    device: str | torch.device = "cpu",
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> DeviceData:
    """Move a RawDataset to ``device`` as normalized float images, optionally subset/down-sampled.

    Args:
        raw: the decoded data set.
        subset: if given, keep a seeded class-balanced subset of this many training examples
            (1 <= subset <= n_train); the test set stays complete.
        resolution: side r in ``RESOLUTIONS``; images are average-pooled to r x r.
        device: target device.
        seed: subset seed.
        dtype: a floating dtype for the images.

    Returns:
        DeviceData with train_x [n, 3, r, r] (dtype, device) and int64 labels on ``device``.

    Raises:
        ValueError: bad subset, resolution or dtype, or unknown data set name.
    """
    if raw.name not in NORMALIZATION:
        raise ValueError(f"unknown dataset {raw.name!r}; expected one of {tuple(NORMALIZATION)}")
    if resolution not in RESOLUTIONS:
        raise ValueError(
            f"resolution must be one of {RESOLUTIONS} (divisors of 32), got {resolution!r}"
        )
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating torch dtype, got {dtype!r}")
    device = torch.device(device)
    train_x, train_y, chosen = raw.train_x, raw.train_y, None
    if subset is not None:
        chosen = balanced_subset(raw.train_y, subset, seed)
        train_x, train_y = train_x[chosen], train_y[chosen]
    mean, std = NORMALIZATION[raw.name]

    def to_device(x: torch.Tensor) -> torch.Tensor:
        # uint8 travels (4x smaller), then [0, 1] -> pool -> normalize in float32, then cast.
        x = x.to(device).to(torch.float32).div_(255.0)
        x = downsample(x, resolution)
        m = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        s = torch.tensor(std, device=device).view(1, -1, 1, 1)
        return x.sub_(m).div_(s).to(dtype).contiguous()

    return DeviceData(
        train_x=to_device(train_x),
        train_y=train_y.to(device),
        test_x=to_device(raw.test_x),
        test_y=raw.test_y.to(device),
        name=raw.name,
        classes=raw.classes,
        mean=tuple(mean),
        std=tuple(std),
        resolution=resolution,
        subset_indices=chosen,
    )
