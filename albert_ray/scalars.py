"""TensorBoard scalars, written with TensorFlow's own ``tf.summary`` by rank 0, one value per
epoch: ``tensorboard --logdir <storage_path>/<name>/tensorboard``."""

from __future__ import annotations


class Scalars:
    """A ``tf.summary`` file writer under ``logdir``; a no-op without one (ranks other than 0)."""

    def __init__(self, logdir: str | None):
        self.writer = None
        if logdir:
            import tensorflow as tf

            self.writer = tf.summary.create_file_writer(logdir)

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

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
