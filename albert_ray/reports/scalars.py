"""TensorBoard scalars, written with TensorFlow's own ``tf.summary`` by rank 0, one value per
epoch: ``tensorboard --logdir <storage_path>/<name>/tensorboard``."""

from __future__ import annotations

import tempfile

from albert_ray import paths


class Scalars:
    """A ``tf.summary`` file writer under ``logdir``; a no-op without one (ranks other than 0).

    TensorFlow writes no ``s3://`` without tensorflow-io, so for a URI the events go to a local
    folder first and are copied to ``logdir`` after every write (they are a few KB)."""

    def __init__(self, logdir: str | None):
        self.writer = None
        self.target = logdir if logdir and paths.is_uri(logdir) else None
        if logdir:
            import tensorflow as tf

            self.local = tempfile.mkdtemp(prefix="albert-ray-tb-") if self.target else logdir
            self.writer = tf.summary.create_file_writer(self.local)

    def write(self, step: int, values: dict[str, float | None]) -> None:
        """Each non-None value as the scalar ``tag`` at ``step``."""
        if self.writer is None:
            return
        import tensorflow as tf

        with self.writer.as_default(step=step):
            for tag, value in values.items():
                if value is not None:
                    tf.summary.scalar(tag, float(value))
        self.writer.flush()
        if self.target:
            paths.publish_dir(self.local, self.target)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
