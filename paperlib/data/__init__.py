"""Data: raw image sets (CIFAR-10/100, SVHN, a synthetic stand-in), on-device tensors with
batched augmentation, and the paper's minibatch samplers.

* ``formats``: the accepted on-disk formats and their decoders, ``RawDataset``, the synthetic set;
* ``loading``: ``load_dataset`` (user path, else the decoded ``.pt`` cache, else a torchvision
  download) and the checks on what arrives;
* ``device``: ``prepare`` a RawDataset onto the training device as ``DeviceData`` (subset,
  resolution, normalization, batched crop + flip);
* ``samplers``: ``Sampler``, minibatch indices drawn on the training device.

Every random draw is a pure function of (seed, stream, step) via ``paperlib.seeding``, so a resumed
run sees the same subset, batches and augmentations.
"""

from .device import DeviceData, augment_batch, balanced_subset, downsample, prepare
from .formats import DatasetFormatError, DatasetNotFoundError, RawDataset, make_synthetic
from .loading import load_dataset
from .samplers import Sampler

__all__ = [
    "DatasetFormatError",
    "DatasetNotFoundError",
    "DeviceData",
    "RawDataset",
    "Sampler",
    "augment_batch",
    "balanced_subset",
    "downsample",
    "load_dataset",
    "make_synthetic",
    "prepare",
]
