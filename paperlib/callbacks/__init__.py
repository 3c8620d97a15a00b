"""Plug-ins that run :class:`paperlib.NoiseMonitor` inside training frameworks (optional extras:
``pip install 'paperlib[monitor]'``):

* :mod:`paperlib.callbacks.lightning`: ``NoiseMonitorCallback`` for PyTorch Lightning;
* :mod:`paperlib.callbacks.huggingface`: ``NoiseMonitorCallback`` for the Hugging Face Trainer.

Each module imports its framework when imported, and says which extra to install when missing.
"""
