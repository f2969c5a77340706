"""Label job: `python jobs/label_corpus.py --model DIR --input PATH... --output DIR [options]`."""

import sys

from albert_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["label", *sys.argv[1:]]))
