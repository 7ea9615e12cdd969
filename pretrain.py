"""Swin MAE pretraining. Run it through Accelerate, on one device or many:

    accelerate launch pretrain.py --config configs/pretrain/vismae.yaml [key=value ...]

Overrides use the config's dotted keys (train.max_steps=20, data.manifests=[a.csv,b.csv]).
Running the same command again resumes the run folder from its newest checkpoint.
"""

from __future__ import annotations

import argparse
import sys


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="YAML config, e.g. configs/pretrain/vismae.yaml")
    parser.add_argument(
        "--allow-config-change",
        action="store_true",
        help="resume a run folder even though its saved config differs in more than the run length",
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.max_steps=20")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from vismae.config import load_pretrain_config
    from vismae.engine.pretrain import run
    from vismae.engine.pretrain_loop import NonFiniteLossError

    try:
        config = load_pretrain_config(args.config, args.overrides)
        run(config, allow_config_change=args.allow_config_change)
    except (ValueError, FileNotFoundError) as error:  # bad config or data: one clear line
        print(f"pretrain: error: {error}", file=sys.stderr)
        return 2
    except NonFiniteLossError as error:
        print(f"pretrain: stopped: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
