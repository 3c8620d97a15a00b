"""Training throughput of paperlib's on-device pipeline (the data set on the device, batched crop
and flip there) against the conventional one: a torchvision DataLoader with PIL transforms in
worker processes, same net, batch and augmentation.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F

from benchmarks.harness import Bench, Row, interleaved, net_label, paired_ratio
from paperlib.constants import NORMALIZATION

GROUP = "pipeline"  # the rows' name in the table and in --only


class _PILImages(torch.utils.data.Dataset):
    """The conventional pipeline: uint8 HWC images → PIL → torchvision transforms."""

    def __init__(self, x_nchw: torch.Tensor, y: torch.Tensor, transform):
        self.x = x_nchw.permute(0, 2, 3, 1).contiguous().numpy()
        self.y = y.numpy()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.x[i])), int(self.y[i])


def dataloader_stepper(b: Bench, cfg) -> tuple[Callable[[int], None], Callable[[], None]]:
    """A conventional training step: DataLoader(workers) batch → device → forward/backward/SGD."""
    from torchvision import transforms

    net = b.build(cfg)
    model = net.model.train()
    mean, std = NORMALIZATION[b.dataset]
    tf = transforms.Compose([transforms.RandomCrop(32, padding=4),
                             transforms.RandomHorizontalFlip(), transforms.ToTensor(),
                             transforms.Normalize(mean, std)])
    n = cfg.train_size
    ds = _PILImages(b.raw.train_x[:n], b.raw.train_y[:n], tf)
    mp = "fork" if b.workers and sys.platform.startswith("linux") else None
    loader = torch.utils.data.DataLoader(
        ds, batch_size=cfg.batch_size, shuffle=True, drop_last=True, num_workers=b.workers,
        pin_memory=b.device.type == "cuda", multiprocessing_context=mp)
    opt = torch.optim.SGD(net.params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.wd)

    def batches():
        while True:
            yield from loader

    it = batches()

    def step(_k: int) -> None:
        x, y = next(it)
        x, y = x.to(b.device, non_blocking=True), y.to(b.device, non_blocking=True)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    def close() -> None:  # ends the loader's iterator, which shuts its workers down
        it.close()

    return step, close


def rows(b: Bench) -> list[Row]:
    out = []
    for arch, norm, B in b.profile.pipeline_nets:
        cfg = b.config(algo="sgd", arch=arch, norm=norm, resolution=32, batch_size=B,
                       augment=True)
        ours = b.stepper(cfg)[1]
        theirs, close = dataloader_stepper(b, cfg)
        p = b.profile
        try:
            times = interleaved({"ours": ours, "loader": theirs}, b.device,
                                warmup=p.warmup + 2, repeats=p.repeats, steps=p.steps + 2)
        finally:
            close()
        setting = net_label(arch, norm, 32, B) + f" {b.device.type}"
        fast, slow = (B / statistics.median(times[k]) for k in ("ours", "loader"))
        ratio, note = paired_ratio(times, "loader", "ours")  # = ours/loader in samples/s
        out += [
            Row(GROUP, "on-device pipeline (augment on device)", setting, fast, "samples/s",
                note="sgd_step on the on-device batch, G/N off"),
            Row(GROUP, f"DataLoader + PIL transforms, {b.workers} workers", setting, slow,
                "samples/s", note="RandomCrop(32, 4) + flip + ToTensor + Normalize"),
            Row(GROUP, "throughput on-device / DataLoader", setting, ratio, "x", "", None, note),
        ]
    return out
