"""Finetuning: a benign/malignant classifier or an ROI segmenter from any encoder. Run it
directly or through Accelerate, on one device or many:

    accelerate launch finetune.py --config configs/finetune/vindr-classify.yaml init=runs/pretrain/mammo

Overrides use the config's dotted keys (train.epochs=10, data.manifest=cache/manifest.csv).
Running the same command again returns a finished run and resumes an interrupted one.
The same as `vismae finetune`, whose arguments and code it runs (vismae/commands/finetune.py).
"""

from __future__ import annotations

import sys

from vismae.cli import script_main


def main(argv: list[str] | None = None) -> int:
    return script_main("finetune", argv)


if __name__ == "__main__":
    sys.exit(main())
