"""Pre-training job:
`python jobs/pretrain.py --config jobs/configs/pretrain/sample.yaml [--input ...] [key=value ...]`."""

import sys
from pathlib import Path

# Under `ray job submit --working-dir .` the script runs from the uploaded copy of the repo.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from albert_ray.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["pretrain", *sys.argv[1:]]))
