"""Auxiliary semantic decoder of kMaX-DeepLab (Yu et al., ECCV 2022, Sec. 4).

DeepLabv3+-style (Chen et al., ECCV 2018, Sec. 3): ASPP on the OS32 encoder
feature, then two fusions with projected low-level features (res3 at OS8, res2 at
OS4) through depthwise-separable 5x5 convs. Only used for the auxiliary semantic
loss. Names follow DeepLab2 (`_aspp`, `_aspp_conv{i}`, `_aspp_pool`,
`_proj_conv_bn_act`, `_low_level_conv{i}`, `_fusion_conv{i}`).
"""

from typing import Sequence, Tuple

import keras
import tensorflow as tf

from deeplab2_vkmax.model.layers import conv_bn_act
from deeplab2_vkmax.model.layers import resize

_PACKAGE = 'deeplab2_vkmax'


def _bn_kwargs(layer):
  return dict(bn_momentum=layer.bn_momentum, bn_epsilon=layer.bn_epsilon,
              use_sync_batchnorm=layer.use_sync_batchnorm)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ASPPConv(keras.layers.Layer):
  """Atrous 3x3 conv + BN + act held as `_conv_bn_act`.

  Args:
    filters: output channels.
    atrous_rate: dilation.
    activation: activation.
    bn_momentum, bn_epsilon, use_sync_batchnorm: BN options.
  """

  def __init__(self, *, filters: int, atrous_rate: int, activation: str = 'gelu',
               bn_momentum: float = 0.99, bn_epsilon: float = 1e-3,
               use_sync_batchnorm: bool = False, **kwargs):
    super().__init__(**kwargs)
    self.filters = filters
    self.atrous_rate = atrous_rate
    self.activation = activation
    self.bn_momentum = bn_momentum
    self.bn_epsilon = bn_epsilon
    self.use_sync_batchnorm = use_sync_batchnorm
    self._conv_bn_act = conv_bn_act.ConvBNAct(
        filters=filters, kernel_size=3, dilation_rate=atrous_rate,
        activation=activation, name='_conv_bn_act', **_bn_kwargs(self))

  def build(self, input_shape):
    self._conv_bn_act.build(input_shape)
    self.built = True

  def call(self, inputs, training=False):
    return self._conv_bn_act(inputs, training=training)

  def get_config(self):
    config = super().get_config()
    config.update({'filters': self.filters, 'atrous_rate': self.atrous_rate,
                   'activation': self.activation, **_bn_kwargs(self)})
    return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ASPPPool(keras.layers.Layer):
  """Image-level pooling branch: global mean -> 1x1 conv + BN + act -> broadcast.

  Args:
    filters: output channels.
    activation: activation.
    bn_momentum, bn_epsilon, use_sync_batchnorm: BN options.
  """

  def __init__(self, *, filters: int, activation: str = 'gelu',
               bn_momentum: float = 0.99, bn_epsilon: float = 1e-3,
               use_sync_batchnorm: bool = False, **kwargs):
    super().__init__(**kwargs)
    self.filters = filters
    self.activation = activation
    self.bn_momentum = bn_momentum
    self.bn_epsilon = bn_epsilon
    self.use_sync_batchnorm = use_sync_batchnorm
    self._conv_bn_act = conv_bn_act.ConvBNAct(
        filters=filters, kernel_size=1, activation=activation,
        name='_conv_bn_act', **_bn_kwargs(self))

  def build(self, input_shape):
    self._conv_bn_act.build(input_shape)
    self.built = True

  def call(self, inputs, training=False):
    pooled = tf.reduce_mean(inputs, axis=[1, 2], keepdims=True)  # [B, 1, 1, C]
    pooled = self._conv_bn_act(pooled, training=training)
    shape = tf.shape(inputs)
    return tf.broadcast_to(pooled, [shape[0], shape[1], shape[2], self.filters])

  def get_config(self):
    config = super().get_config()
    config.update({'filters': self.filters, 'activation': self.activation,
                   **_bn_kwargs(self)})
    return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ASPP(keras.layers.Layer):
  """Atrous spatial pyramid pooling (DeepLabv3, Chen et al. 2017, Sec. 3.3).

  Branches: 1x1 (`_conv_bn_act`), three atrous 3x3 (`_aspp_conv1..3`), image
  pooling (`_aspp_pool`); concatenated, projected (`_proj_conv_bn_act`) and,
  in training, dropped out (rate 0.1 in DeepLab2's ASPP).

  Args:
    filters: channels of every branch and of the output.
    atrous_rates: three dilation rates.
    activation: activation.
    dropout_rate: dropout after the projection (training only).
    bn_momentum, bn_epsilon, use_sync_batchnorm: BN options.

  Input [B, H, W, C]; output [B, H, W, filters].
  """

  def __init__(self, *, filters: int = 256,
               atrous_rates: Sequence[int] = (6, 12, 18),
               activation: str = 'gelu', dropout_rate: float = 0.1,
               bn_momentum: float = 0.99,
               bn_epsilon: float = 1e-3, use_sync_batchnorm: bool = False,
               **kwargs):
    super().__init__(**kwargs)
    if len(atrous_rates) != 3:
      raise ValueError(f'atrous_rates needs 3 entries, got {atrous_rates}.')
    if not 0.0 <= dropout_rate < 1.0:
      raise ValueError(f'dropout_rate must be in [0, 1), got {dropout_rate}.')
    self.dropout_rate = dropout_rate
    self.filters = filters
    self.atrous_rates = tuple(atrous_rates)
    self.activation = activation
    self.bn_momentum = bn_momentum
    self.bn_epsilon = bn_epsilon
    self.use_sync_batchnorm = use_sync_batchnorm
    bn = _bn_kwargs(self)
    self._conv_bn_act = conv_bn_act.ConvBNAct(
        filters=filters, kernel_size=1, activation=activation,
        name='_conv_bn_act', **bn)
    self._aspp_conv1 = ASPPConv(filters=filters, atrous_rate=atrous_rates[0],
                                activation=activation, name='_aspp_conv1', **bn)
    self._aspp_conv2 = ASPPConv(filters=filters, atrous_rate=atrous_rates[1],
                                activation=activation, name='_aspp_conv2', **bn)
    self._aspp_conv3 = ASPPConv(filters=filters, atrous_rate=atrous_rates[2],
                                activation=activation, name='_aspp_conv3', **bn)
    self._aspp_pool = ASPPPool(filters=filters, activation=activation,
                               name='_aspp_pool', **bn)
    self._proj_conv_bn_act = conv_bn_act.ConvBNAct(
        filters=filters, kernel_size=1, activation=activation,
        name='_proj_conv_bn_act', **bn)

  def build(self, input_shape):
    for layer in (self._conv_bn_act, self._aspp_conv1, self._aspp_conv2,
                  self._aspp_conv3, self._aspp_pool):
      layer.build(input_shape)
    self._proj_conv_bn_act.build(tuple(input_shape[:-1]) + (5 * self.filters,))
    self.built = True

  def call(self, inputs, training=False):
    branches = [layer(inputs, training=training) for layer in (
        self._conv_bn_act, self._aspp_conv1, self._aspp_conv2,
        self._aspp_conv3, self._aspp_pool)]
    x = self._proj_conv_bn_act(tf.concat(branches, axis=-1), training=training)
    if training and self.dropout_rate > 0.0:
      # tf.nn.dropout, not keras.layers.Dropout: no seed-state variable, so the
      # variables stay DeepLab2's.
      x = tf.nn.dropout(x, rate=self.dropout_rate)
    return x

  def get_config(self):
    config = super().get_config()
    config.update({'filters': self.filters,
                   'atrous_rates': list(self.atrous_rates),
                   'activation': self.activation,
                   'dropout_rate': self.dropout_rate, **_bn_kwargs(self)})
    return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class KMaXSemanticDecoder(keras.layers.Layer):
  """ASPP on `stage5` + fusion with projected low-level features.

  Args:
    aspp_channels: ASPP channels.
    atrous_rates: ASPP rates.
    aspp_dropout_rate: dropout after the ASPP projection (training only;
      DeepLab2: 0.1).
    low_level: ((endpoint, projection channels), ...) from coarse to fine,
      DeepLab2 default (('res3', 64), ('res2', 32)).
    decoder_channels: channels after each fusion conv.
    fusion_kernel_size: depthwise kernel of the fusion convs.
    activation: activation.
    bn_momentum, bn_epsilon, use_sync_batchnorm: BN options.

  Call on the encoder endpoint dict; returns [B, H_l, W_l, decoder_channels] at
  the resolution of the last low-level endpoint (OS4 for res2).
  """

  def __init__(self, *, aspp_channels: int = 256,
               atrous_rates: Sequence[int] = (6, 12, 18),
               aspp_dropout_rate: float = 0.1,
               low_level: Sequence[Tuple[str, int]] = (('res3', 64),
                                                       ('res2', 32)),
               decoder_channels: int = 256, fusion_kernel_size: int = 5,
               activation: str = 'gelu', bn_momentum: float = 0.99,
               bn_epsilon: float = 1e-3, use_sync_batchnorm: bool = False,
               **kwargs):
    super().__init__(**kwargs)
    if len(low_level) != 2:
      raise ValueError(f'low_level needs 2 (endpoint, channels) pairs, got '
                       f'{low_level}.')
    self.aspp_channels = aspp_channels
    self.atrous_rates = tuple(atrous_rates)
    self.aspp_dropout_rate = aspp_dropout_rate
    self.low_level = tuple((str(k), int(c)) for k, c in low_level)
    self.decoder_channels = decoder_channels
    self.fusion_kernel_size = fusion_kernel_size
    self.activation = activation
    self.bn_momentum = bn_momentum
    self.bn_epsilon = bn_epsilon
    self.use_sync_batchnorm = use_sync_batchnorm
    bn = _bn_kwargs(self)
    self._aspp = ASPP(filters=aspp_channels, atrous_rates=atrous_rates,
                      activation=activation, dropout_rate=aspp_dropout_rate,
                      name='_aspp', **bn)
    self._low_level_conv1 = conv_bn_act.ConvBNAct(
        filters=self.low_level[0][1], kernel_size=1, activation=activation,
        name='_low_level_conv1', **bn)
    self._fusion_conv1 = conv_bn_act.SeparableConvBlock(
        filters=decoder_channels, kernel_size=fusion_kernel_size,
        activation=activation, name='_fusion_conv1', **bn)
    self._low_level_conv2 = conv_bn_act.ConvBNAct(
        filters=self.low_level[1][1], kernel_size=1, activation=activation,
        name='_low_level_conv2', **bn)
    self._fusion_conv2 = conv_bn_act.SeparableConvBlock(
        filters=decoder_channels, kernel_size=fusion_kernel_size,
        activation=activation, name='_fusion_conv2', **bn)

  def build(self, input_shape):
    self._aspp.build(input_shape['stage5'])
    shape1 = input_shape[self.low_level[0][0]]
    shape2 = input_shape[self.low_level[1][0]]
    self._low_level_conv1.build(shape1)
    self._fusion_conv1.build(
        (None, None, None, self.aspp_channels + self.low_level[0][1]))
    self._low_level_conv2.build(shape2)
    self._fusion_conv2.build(
        (None, None, None, self.decoder_channels + self.low_level[1][1]))
    self.built = True

  def call(self, inputs, training=False):
    x = self._aspp(inputs['stage5'], training=training)
    for low_level_conv, fusion_conv, (key, _) in (
        (self._low_level_conv1, self._fusion_conv1, self.low_level[0]),
        (self._low_level_conv2, self._fusion_conv2, self.low_level[1])):
      low = low_level_conv(inputs[key], training=training)
      x = resize.resize_bilinear(x, tf.shape(low)[1:3])
      x = fusion_conv(tf.concat([x, low], axis=-1), training=training)
    return x

  def get_config(self):
    config = super().get_config()
    config.update({
        'aspp_channels': self.aspp_channels,
        'atrous_rates': list(self.atrous_rates),
        'aspp_dropout_rate': self.aspp_dropout_rate,
        'low_level': [list(pair) for pair in self.low_level],
        'decoder_channels': self.decoder_channels,
        'fusion_kernel_size': self.fusion_kernel_size,
        'activation': self.activation, **_bn_kwargs(self),
    })
    return config
