"""Finetuning: a benign/malignant classifier or an ROI segmenter from any encoder. Run it
directly or through Accelerate, on one device or many:

    accelerate launch finetune.py --config configs/finetune/vindr-classify.yaml init=runs/pretrain/mammo

Overrides use the config's dotted keys (train.epochs=10, data.manifest=cache/manifest.csv).
Running the same command again returns a finished run and resumes an interrupted one.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from vismae.commands.finetune import add_arguments, run

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (ValueError, FileNotFoundError) as error:  # bad config or data: one clear line
        print(f"finetune: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
