"""Tests use tiny tensors: one intra-op thread is fastest and immune to oversubscription."""

import torch

torch.set_num_threads(1)
