"""Shared test settings. Tests run the tiny models on one CPU thread: their operations are too
small to split, and two threads per process wait on each other (and on the second process of
the distributed tests) far more than they gain."""

import os

os.environ["OMP_NUM_THREADS"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402  (after the environment is set)

torch.set_num_threads(1)
