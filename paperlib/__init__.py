"""paperlib: SGD, SVAG, NGD and GD on scale-invariant nets, with online noise-to-signal
measurement and linear-scaling-rule prediction (Li, Malladi, Arora, NeurIPS 2021)."""

__version__ = "0.1.0"
