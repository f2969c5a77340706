"""Train job: `python jobs/train.py --config jobs/configs/sample_ner.yaml [key=value ...]`.

Works locally (starts a local Ray) and under `ray job submit` (attaches to the job's cluster)."""

import sys

from albert_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
