"""``make bench`` (``python -m benchmarks``): paperlib's step costs as ratios against baselines,
outside the library; see ``benchmarks/run.py``."""
