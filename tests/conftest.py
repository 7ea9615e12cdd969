"""Shared test settings: tests run on the CPU with few threads, so they behave the same on a
laptop and on a 2-core CI machine."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
