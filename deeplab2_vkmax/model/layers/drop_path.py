"""Drop path (stochastic depth, Huang et al. 2016), as used by kMaX-DeepLab."""

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package='deeplab2_vkmax')
class DropPath(keras.layers.Layer):
  """Zeroes a whole residual branch per sample with prob `1 - keep_prob`.

  Kept samples are scaled by `1 / keep_prob`; identity at inference.

  Args:
    keep_prob: probability of keeping the branch, in (0, 1].
  """

  def __init__(self, *, keep_prob: float = 1.0, **kwargs):
    super().__init__(**kwargs)
    if not 0.0 < keep_prob <= 1.0:
      raise ValueError(f'keep_prob must be in (0, 1], got {keep_prob}.')
    self.keep_prob = keep_prob

  def call(self, inputs, training=False):
    if not training or self.keep_prob == 1.0:
      return inputs
    batch_size = tf.shape(inputs)[0]
    mask_shape = tf.concat(
        [[batch_size], tf.ones([tf.rank(inputs) - 1], tf.int32)], axis=0)
    keep = tf.floor(self.keep_prob + tf.random.uniform(mask_shape, dtype=inputs.dtype))
    return inputs / self.keep_prob * keep

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self):
    config = super().get_config()
    config.update({'keep_prob': self.keep_prob})
    return config
