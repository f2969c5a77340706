"""Label job: `python jobs/label_corpus.py --model DIR --input PATH... --output DIR [options]`."""

import sys
from pathlib import Path

# Under `ray job submit --working-dir .` the script runs from the uploaded copy of the repo:
# import albert_ray from there, not from wherever the cluster's Python has it installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from albert_ray.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["label", *sys.argv[1:]]))
