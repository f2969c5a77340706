"""Params job: `python jobs/params.py [--configs DIR]` prints the parameter table."""

import sys

from albert_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["params", *sys.argv[1:]]))
