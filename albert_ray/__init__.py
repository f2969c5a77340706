"""albert_ray: Chinese ALBERT (brightmart albert_zh) on keras-bert, distributed with Ray.

keras-bert 0.89 does ``from tensorflow import keras``; under TensorFlow >= 2.16 that is Keras 3,
which keras-bert does not support.  ``TF_USE_LEGACY_KERAS=1`` makes ``tf.keras`` resolve to the
``tf-keras`` package instead, but only if it is set before TensorFlow decides which Keras to use.
Importing this package sets it; nothing else happens on import.
"""

import os
import sys

__version__ = "0.1.0"

LEGACY_KERAS_ENV = "TF_USE_LEGACY_KERAS"


def _ensure_legacy_keras() -> None:
    previous = os.environ.get(LEGACY_KERAS_ENV)
    os.environ[LEGACY_KERAS_ENV] = "1"
    tf = sys.modules.get("tensorflow")
    if tf is None or previous == "1":
        return
    # TensorFlow was imported first. tf.keras is resolved lazily, so it may still be fine;
    # if Keras 3 was already bound, keras-bert cannot work in this process.
    keras_module = sys.modules.get("keras")
    if keras_module is not None and getattr(keras_module, "__version__", "2").startswith("3"):
        if "tf_keras" not in sys.modules:
            raise ImportError(
                "TensorFlow was imported with Keras 3 before albert_ray; keras-bert needs tf-keras. "
                "Set TF_USE_LEGACY_KERAS=1 in the environment (or import albert_ray before tensorflow) "
                "and start a new process."
            )


_ensure_legacy_keras()
