"""Evaluate job: `python jobs/evaluate.py --model DIR --data FILE [--output DIR]`."""

import sys

from albert_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
