"""The input pipeline: TFDS reading, the pp language, views, offline preparation.

TensorFlow runs here only as a host-side data loader: it must never take an
accelerator from JAX, so it is made blind to GPUs before anything else uses it.
"""

import tensorflow as tf

try:
  tf.config.set_visible_devices([], "GPU")
except (RuntimeError, ValueError):  # TF already initialized its devices.
  pass
