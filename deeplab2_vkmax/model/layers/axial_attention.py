"""Axial attention with relative positional encodings.

Axial-DeepLab (Wang et al., ECCV 2020), Eq. (3)-(4): position-sensitive self
attention along one axis, with learned relative positional encodings for query,
key and value; kMaX-DeepLab uses it in the first two pixel-decoder stages. Three
similarity terms (q.k, q.r_q, k.r_k) and two retrieved terms (softmax.v,
softmax.r_v) are each batch-normalised per head before summing (Axial-DeepLab
Sec. 3.1, "BN on similarities and outputs").
"""

import keras
import tensorflow as tf

from deeplab2_vkmax.model.layers import normalization

_PACKAGE = 'deeplab2_vkmax'


@keras.saving.register_keras_serializable(package=_PACKAGE)
class RelativePositionalEncoding(keras.layers.Layer):
  """A table of `2 * max_span - 1` embeddings indexed by relative offset.

  Args:
    max_span: longest axis supported without clipping offsets.
    depth: embedding depth.

  Call with a scalar `length` L; returns [L, L, depth] where entry (i, j), for
  query position i and key position j, embeds the offset j - i (key minus
  query: Axial-DeepLab's r_{p-o}, DeepLab2's relative distance matrix
  `key_index - query_index`); it is table row j - i + max_span - 1. Offsets
  beyond +-(max_span - 1) are clipped.
  """

  def __init__(self, *, max_span: int = 255, depth: int = 64, **kwargs):
    super().__init__(**kwargs)
    self.max_span = max_span
    self.depth = depth

  def build(self, input_shape=None):
    self.embeddings = self.add_weight(
        name='embeddings', shape=(2 * self.max_span - 1, self.depth),
        initializer=keras.initializers.TruncatedNormal(stddev=1.0))
    self.built = True

  def call(self, length):
    if not self.built:
      self.build()
    positions = tf.range(length)
    offsets = positions[None, :] - positions[:, None] + (self.max_span - 1)
    offsets = tf.clip_by_value(offsets, 0, 2 * self.max_span - 2)
    return tf.gather(self.embeddings, offsets)  # [L, L, depth]

  def get_config(self):
    config = super().get_config()
    config.update({'max_span': self.max_span, 'depth': self.depth})
    return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class AxialAttention1D(keras.layers.Layer):
  """Multi-head position-sensitive attention along axis 1 of [B, L, C].

  Args:
    query_key_channels: total query (= key) channels over all heads.
    value_channels: total value (= output) channels over all heads.
    num_heads: attention heads.
    max_span: relative positional encoding span (table length 2*max_span-1).
    bn_momentum, bn_epsilon, use_sync_batchnorm: BN options.

  Input [B, L, Cin]; output [B, L, value_channels].
  """

  def __init__(self, *, query_key_channels: int, value_channels: int,
               num_heads: int = 8, max_span: int = 255,
               bn_momentum: float = 0.99, bn_epsilon: float = 1e-3,
               use_sync_batchnorm: bool = False, **kwargs):
    super().__init__(**kwargs)
    if query_key_channels % num_heads or value_channels % num_heads:
      raise ValueError(
          f'channels ({query_key_channels}, {value_channels}) must be divisible '
          f'by num_heads={num_heads}.')
    self.query_key_channels = query_key_channels
    self.value_channels = value_channels
    self.num_heads = num_heads
    self.max_span = max_span
    self.bn_momentum = bn_momentum
    self.bn_epsilon = bn_epsilon
    self.use_sync_batchnorm = use_sync_batchnorm
    bn = dict(momentum=bn_momentum, epsilon=bn_epsilon,
              synchronized=use_sync_batchnorm)
    self._key_depth = query_key_channels // num_heads
    self._value_depth = value_channels // num_heads
    self._batch_norm_qkv = normalization.make_batch_norm(
        name='_batch_norm_qkv', **bn)
    self._batch_norm_similarity = normalization.AxisBatchNormalization(
        param_shape=(3, 1, num_heads, 1, 1), name='_batch_norm_similarity', **bn)
    self._batch_norm_retrieved_output = normalization.AxisBatchNormalization(
        param_shape=(2, 1, num_heads, 1, self._value_depth),
        name='_batch_norm_retrieved_output', **bn)
    self._query_rpe = RelativePositionalEncoding(
        max_span=max_span, depth=self._key_depth, name='_query_rpe')
    self._key_rpe = RelativePositionalEncoding(
        max_span=max_span, depth=self._key_depth, name='_key_rpe')
    self._value_rpe = RelativePositionalEncoding(
        max_span=max_span, depth=self._value_depth, name='_value_rpe')

  def build(self, input_shape):
    in_channels = int(input_shape[-1])
    total = 2 * self.query_key_channels + self.value_channels
    self.qkv_kernel = self.add_weight(
        name='qkv_kernel', shape=(in_channels, total),
        initializer=keras.initializers.TruncatedNormal(stddev=in_channels**-0.5))
    self._batch_norm_qkv.build((None, None, total))
    self._batch_norm_similarity.build((3, None, self.num_heads, None, None))
    self._batch_norm_retrieved_output.build(
        (2, None, self.num_heads, None, self._value_depth))
    for rpe in (self._query_rpe, self._key_rpe, self._value_rpe):
      rpe.build()
    self.built = True

  def call(self, inputs, training=False):
    length = tf.shape(inputs)[1]
    qkv = tf.einsum('blc,cd->bld', inputs, self.qkv_kernel)
    qkv = self._batch_norm_qkv(qkv, training=training)
    query, key, value = tf.split(
        qkv, [self.query_key_channels, self.query_key_channels,
              self.value_channels], axis=-1)
    heads_shape = lambda x, d: tf.reshape(x, [-1, length, self.num_heads, d])
    query = heads_shape(query, self._key_depth)  # [B, L, heads, dk]
    key = heads_shape(key, self._key_depth)
    value = heads_shape(value, self._value_depth)  # [B, L, heads, dv]
    query_rpe = self._query_rpe(length)  # [L, L, dk]
    key_rpe = self._key_rpe(length)
    value_rpe = self._value_rpe(length)  # [L, L, dv]
    # Query l, key m; every table entry [l, m] embeds the offset m - l.
    content = tf.einsum('blhd,bmhd->bhlm', query, key)
    query_position = tf.einsum('blhd,lmd->bhlm', query, query_rpe)
    key_position = tf.einsum('bmhd,lmd->bhlm', key, key_rpe)
    similarity = tf.stack([content, query_position, key_position])  # [3, B, h, L, L]
    similarity = self._batch_norm_similarity(similarity, training=training)
    # Softmax in float32 under mixed precision, back to the compute dtype.
    logits = tf.cast(tf.reduce_sum(similarity, axis=0), tf.float32)
    attention = tf.cast(tf.nn.softmax(logits, axis=-1), similarity.dtype)
    retrieved_content = tf.einsum('bhlm,bmhd->bhld', attention, value)
    retrieved_position = tf.einsum('bhlm,lmd->bhld', attention, value_rpe)
    retrieved = tf.stack([retrieved_content, retrieved_position])  # [2, B, h, L, dv]
    retrieved = self._batch_norm_retrieved_output(retrieved, training=training)
    retrieved = tf.transpose(tf.reduce_sum(retrieved, axis=0), [0, 2, 1, 3])
    return tf.reshape(retrieved, [-1, length, self.value_channels])  # [B, L, Cv]

  def compute_output_shape(self, input_shape):
    return tuple(input_shape[:-1]) + (self.value_channels,)

  def get_config(self):
    config = super().get_config()
    config.update({
        'query_key_channels': self.query_key_channels,
        'value_channels': self.value_channels, 'num_heads': self.num_heads,
        'max_span': self.max_span, 'bn_momentum': self.bn_momentum,
        'bn_epsilon': self.bn_epsilon,
        'use_sync_batchnorm': self.use_sync_batchnorm,
    })
    return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class AxialAttention2D(keras.layers.Layer):
  """Height-axis then width-axis attention (`_height_axis`, `_width_axis`).

  Args:
    query_key_channels, value_channels, num_heads, max_span: per-axis attention
      options (see `AxialAttention1D`); the width axis maps value_channels to
      value_channels.
    strides: output stride; as DeepLab2's strided axial attention, each axis
      attends at full length and is then subsampled (`[::strides]`).
    bn_momentum, bn_epsilon, use_sync_batchnorm: BN options.

  Input [B, H, W, Cin]; output [B, ceil(H/s), ceil(W/s), value_channels].
  """

  def __init__(self, *, query_key_channels: int, value_channels: int,
               num_heads: int = 8, max_span: int = 255, strides: int = 1,
               bn_momentum: float = 0.99, bn_epsilon: float = 1e-3,
               use_sync_batchnorm: bool = False, **kwargs):
    super().__init__(**kwargs)
    if strides < 1:
      raise ValueError(f'strides must be >= 1, got {strides}.')
    self.query_key_channels = query_key_channels
    self.value_channels = value_channels
    self.num_heads = num_heads
    self.max_span = max_span
    self.strides = strides
    self.bn_momentum = bn_momentum
    self.bn_epsilon = bn_epsilon
    self.use_sync_batchnorm = use_sync_batchnorm
    common = dict(query_key_channels=query_key_channels,
                  value_channels=value_channels, num_heads=num_heads,
                  max_span=max_span, bn_momentum=bn_momentum,
                  bn_epsilon=bn_epsilon, use_sync_batchnorm=use_sync_batchnorm)
    self._height_axis = AxialAttention1D(name='_height_axis', **common)
    self._width_axis = AxialAttention1D(name='_width_axis', **common)

  def build(self, input_shape):
    self._height_axis.build((None, None, input_shape[-1]))
    self._width_axis.build((None, None, self.value_channels))
    self.built = True

  def call(self, inputs, training=False):
    shape = tf.shape(inputs)
    batch, height, width = shape[0], shape[1], shape[2]
    x = tf.transpose(inputs, [0, 2, 1, 3])  # [B, W, H, C]
    x = tf.reshape(x, [batch * width, height, -1])  # [B*W, H, C]
    x = self._height_axis(x, training=training)
    x = tf.reshape(x, [batch, width, height, self.value_channels])
    x = tf.transpose(x, [0, 2, 1, 3])  # [B, H, W, Cv]
    if self.strides > 1:
      x = x[:, ::self.strides]  # [B, ceil(H/s), W, Cv]
      height = tf.shape(x)[1]
    x = tf.reshape(x, [batch * height, width, self.value_channels])  # [B*H, W, Cv]
    x = self._width_axis(x, training=training)
    x = tf.reshape(x, [batch, height, width, self.value_channels])
    if self.strides > 1:
      x = x[:, :, ::self.strides]  # [B, ceil(H/s), ceil(W/s), Cv]
    return x

  def compute_output_shape(self, input_shape):
    spatial = [None if size is None else -(-size // self.strides)
               for size in input_shape[1:3]]
    return (input_shape[0], *spatial, self.value_channels)

  def get_config(self):
    config = super().get_config()
    config.update({
        'query_key_channels': self.query_key_channels,
        'value_channels': self.value_channels, 'num_heads': self.num_heads,
        'max_span': self.max_span, 'strides': self.strides,
        'bn_momentum': self.bn_momentum,
        'bn_epsilon': self.bn_epsilon,
        'use_sync_batchnorm': self.use_sync_batchnorm,
    })
    return config
