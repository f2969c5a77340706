"""``albert-ray`` command line: thin parsing, then one library call per subcommand."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import albert_ray  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)

DEFAULT_CONFIGS = os.environ.get("ALBERT_RAY_CONFIGS", str(Path("..") / "shared" / "corpora" / "albert_zh"))


def setup_logging(verbose: bool = False) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def _cmd_params(args) -> int:
    from albert_ray.params import format_table, params_table

    rows = params_table(args.configs, num_classes=args.classes, seq_len=args.seq_len)
    print(format_table(rows))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="albert-ray", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("params", help="parameter counts of every encoder config in a folder")
    p.add_argument("--configs", default=DEFAULT_CONFIGS,
                   help="folder of albert_config*.json / bert_config.json (default: %(default)s or $ALBERT_RAY_CONFIGS)")
    p.add_argument("--classes", type=int, default=5, help="classes of the [CLS] softmax head (default: 5)")
    p.add_argument("--seq-len", type=int, default=512, help="sequence length (default: 512)")
    p.set_defaults(func=_cmd_params)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as exc:
        # user errors: one clear line, no TensorFlow traceback
        print(f"albert-ray {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
