"""Swin MAE pretraining. Run it through Accelerate, on one device or many:

    accelerate launch pretrain.py --config configs/pretrain/vismae.yaml [key=value ...]

Overrides use the config's dotted keys (train.max_steps=20, data.manifests=[a.csv,b.csv]).
Running the same command again resumes the run folder from its newest checkpoint.
The same as `vismae pretrain`, whose arguments and code it runs (vismae/commands/pretrain.py).
"""

from __future__ import annotations

import sys

from vismae.cli import script_main


def main(argv: list[str] | None = None) -> int:
    return script_main("pretrain", argv)


if __name__ == "__main__":
    sys.exit(main())
