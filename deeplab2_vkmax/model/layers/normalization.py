"""Batch normalisation helpers shared by every block.

`make_batch_norm` builds the plain per-channel BN (optionally synchronised across
replicas). `AxisBatchNormalization` normalises with parameters of an arbitrary
broadcastable shape, e.g. `[3, 1, heads, 1, 1]` for the three similarity terms of
axial attention (Axial-DeepLab, Wang et al. 2020, Sec. 3.1) and `[1, heads, 1, d]`
for the retrieved values of the kMaX self-attention: DeepLab2 uses such shapes, so
checkpoints map one to one.
"""

from typing import Sequence

import keras
import tensorflow as tf


def make_batch_norm(*, name: str, momentum: float = 0.99, epsilon: float = 1e-3,
                    synchronized: bool = False, gamma_initializer='ones',
                    axis: int = -1) -> keras.layers.BatchNormalization:
  """Returns a `keras.layers.BatchNormalization` with the shared options."""
  return keras.layers.BatchNormalization(
      axis=axis, momentum=momentum, epsilon=epsilon, synchronized=synchronized,
      gamma_initializer=gamma_initializer, name=name)


@keras.saving.register_keras_serializable(package='deeplab2_vkmax')
class AxisBatchNormalization(keras.layers.Layer):
  """Batch norm whose gamma/beta/moving stats have shape `param_shape`.

  Statistics are reduced over every axis where `param_shape` is 1, so the input
  rank must equal `len(param_shape)`.

  Args:
    param_shape: shape of gamma, beta and the moving statistics.
    momentum: moving-average momentum.
    epsilon: variance epsilon.
    synchronized: all-reduce the batch statistics across replicas.
    gamma_initializer: initializer of gamma.
  """

  def __init__(self, *, param_shape: Sequence[int], momentum: float = 0.99,
               epsilon: float = 1e-3, synchronized: bool = False,
               gamma_initializer='ones', **kwargs):
    super().__init__(**kwargs)
    self.param_shape = tuple(int(d) for d in param_shape)
    self.momentum = momentum
    self.epsilon = epsilon
    self.synchronized = synchronized
    self.gamma_initializer = keras.initializers.get(gamma_initializer)
    self._reduction_axes = [i for i, d in enumerate(self.param_shape) if d == 1]

  def build(self, input_shape):
    if len(input_shape) != len(self.param_shape):
      raise ValueError(f'{self.name}: input rank {len(input_shape)} does not '
                       f'match param_shape {self.param_shape}.')
    # autocast=False: under a mixed policy the statistics and the affine
    # transform stay in float32 (as in keras.layers.BatchNormalization).
    self.gamma = self.add_weight(name='gamma', shape=self.param_shape,
                                 initializer=self.gamma_initializer, autocast=False)
    self.beta = self.add_weight(name='beta', shape=self.param_shape,
                                initializer='zeros', autocast=False)
    self.moving_mean = self.add_weight(name='moving_mean', shape=self.param_shape,
                                       initializer='zeros', trainable=False,
                                       autocast=False)
    self.moving_variance = self.add_weight(
        name='moving_variance', shape=self.param_shape, initializer='ones',
        trainable=False, autocast=False)
    self.built = True

  def call(self, inputs, training=False):
    # float32 statistics: E[x^2] - E[x]^2 in bfloat16/float16 loses the variance.
    inputs = tf.cast(inputs, tf.float32)
    if training:
      mean = tf.reduce_mean(inputs, axis=self._reduction_axes, keepdims=True)
      mean_square = tf.reduce_mean(tf.square(inputs), axis=self._reduction_axes,
                                   keepdims=True)
      replica_context = tf.distribute.get_replica_context()
      if (self.synchronized and replica_context is not None and
          replica_context.num_replicas_in_sync > 1):
        # Equal per-replica batches assumed, as with keras' synchronized BN.
        mean, mean_square = replica_context.all_reduce(
            tf.distribute.ReduceOp.MEAN, [mean, mean_square])
      variance = tf.maximum(mean_square - tf.square(mean), 0.0)
      self.moving_mean.assign(self.moving_mean * self.momentum +
                              tf.reshape(mean, self.param_shape) *
                              (1.0 - self.momentum))
      self.moving_variance.assign(self.moving_variance * self.momentum +
                                  tf.reshape(variance, self.param_shape) *
                                  (1.0 - self.momentum))
    else:
      mean = tf.convert_to_tensor(self.moving_mean)
      variance = tf.convert_to_tensor(self.moving_variance)
    outputs = tf.nn.batch_normalization(inputs, mean, variance, self.beta,
                                        self.gamma, self.epsilon)
    return tf.cast(outputs, self.compute_dtype)

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self):
    config = super().get_config()
    config.update({
        'param_shape': list(self.param_shape),
        'momentum': self.momentum,
        'epsilon': self.epsilon,
        'synchronized': self.synchronized,
        'gamma_initializer': keras.initializers.serialize(self.gamma_initializer),
    })
    return config
