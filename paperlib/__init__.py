"""paperlib: the tools of Li, Malladi, Arora (NeurIPS 2021), "On the Validity of Modeling SGD
with Stochastic Differential Equations", for any PyTorch model and training loop.

The public API (each name documented with shapes, units and the paper's equation):

* step functions on your model, loss and data, each returning a :class:`StepStats`:
  :func:`sgd_step` (eq. 1, with the unbiased online G = |∇L|², N = Tr Σ_B of Sec. 5),
  :func:`svag_step` (SVAG, eq. 5), :func:`ngd_step` and :func:`gd_step` (NGD / GD, eq. 3);
  :class:`Sampling` states how your batches are drawn; :func:`set_grad` hands the gradient to
  any torch optimizer;
* SVAG's LR, step count and schedule stretch: :func:`svag_lr`, :func:`svag_steps`,
  :func:`stretch_schedule`, :class:`SVAGSchedule`;
* :class:`NoiseMonitor`: unbiased G and N of every optimizer step of YOUR loop from the
  gradients it computes anyway (accumulation micro-batches, DDP ranks, or ``sgd_step``'s half
  batches), with window error bars, an EMA, Thm 5.6's B* and McCandlish's B_simple; Lightning
  and Hugging Face callbacks in :mod:`paperlib.callbacks`;
* window statistics and Thm 5.6: :class:`NSRWindow`, :func:`equilibrium_stats`,
  :func:`critical_kappa`, :func:`predict_critical_batch`.

paperlib's own training loop (``paperlib.train``), run store and figure notebooks are built on
these.
"""

__version__ = "0.1.0"

from .equilibrium import equilibrium_stats  # noqa: E402
from .lsr import critical_kappa, predict_critical_batch  # noqa: E402
from .monitor import NoiseMonitor  # noqa: E402
from .sampling import Sampling  # noqa: E402
from .steps import gd_step, ngd_step, sgd_step, svag_step  # noqa: E402
from .stepstats import StepStats, set_grad  # noqa: E402
from .svag import SVAGSchedule, stretch_schedule, svag_lr, svag_steps  # noqa: E402
from .windows import NSRWindow  # noqa: E402

__all__ = [
    "NoiseMonitor",
    "NSRWindow",
    "SVAGSchedule",
    "Sampling",
    "StepStats",
    "critical_kappa",
    "equilibrium_stats",
    "gd_step",
    "ngd_step",
    "predict_critical_batch",
    "set_grad",
    "sgd_step",
    "stretch_schedule",
    "svag_lr",
    "svag_step",
    "svag_steps",
]
