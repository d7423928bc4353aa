"""kMaX-DeepLab prediction heads (Yu et al., ECCV 2022, Sec. 3.2; Video-kMaX Sec. 3.1).

Mask logits are the dot products between L2-normalised per-pixel embeddings and
per-cluster mask embeddings, followed by a 1-channel BN (gamma 0.1); class logits
come from a 1x1 conv over the cluster centres with `num_classes + 1` outputs (void
last) plus a constant void bias, so that P(void) = `void_prior_prob` at
initialisation. As DeepLab2's `add_bias_towards_void`, the constant is added in
every forward pass (the conv bias starts at 0 and is not the void prior), so a
DeepLab2 checkpoint's class head gives DeepLab2's logits. For a
clip, pixels of all T frames are stacked along height (`[B, T*h, w, D]`), so one
set of masks spans the clip (a tube).
"""

import math
from typing import Dict

import keras
import tensorflow as tf

from deeplab2_vkmax import common
from deeplab2_vkmax.model.layers import checkpoint_naming
from deeplab2_vkmax.model.layers import conv_bn_act
from deeplab2_vkmax.model.layers import normalization
from deeplab2_vkmax.model.layers import resize

_PACKAGE = 'deeplab2_vkmax'


def void_prior_logit(num_classes: int, void_prior_prob: float) -> float:
  """log(p * C / (1 - p)): with 0 for the C classes, softmax gives P(void) = p."""
  return math.log(void_prior_prob * num_classes / (1.0 - void_prior_prob))


@keras.saving.register_keras_serializable(package=_PACKAGE)
class PixelSpaceHead(keras.layers.Layer):
  """Depthwise-separable 5x5 conv (`conv_block`) then 1x1 conv (`final_conv`).

  DeepLab2's PanopticDeepLabSingleHead: no activation on its input,
  `final_conv` with bias, kernel initialised truncated normal (std 0.01).

  Args:
    head_channels: channels of the separable conv.
    output_channels: embedding depth D.
    kernel_size: depthwise kernel size.
    activation: activation of the separable conv.
    bn_momentum, bn_epsilon, use_sync_batchnorm: BN options.

  Input [B, H, W, C]; output [B, H, W, output_channels].
  """

  def __init__(self, *, head_channels: int = 256, output_channels: int = 128,
               kernel_size: int = 5, activation: str = 'gelu',
               bn_momentum: float = 0.99, bn_epsilon: float = 1e-3,
               use_sync_batchnorm: bool = False, **kwargs):
    super().__init__(**kwargs)
    self.head_channels = head_channels
    self.output_channels = output_channels
    self.kernel_size = kernel_size
    self.activation = activation
    self.bn_momentum = bn_momentum
    self.bn_epsilon = bn_epsilon
    self.use_sync_batchnorm = use_sync_batchnorm
    self.conv_block = conv_bn_act.SeparableConvBlock(
        filters=head_channels, kernel_size=kernel_size, activation=activation,
        bn_momentum=bn_momentum, bn_epsilon=bn_epsilon,
        use_sync_batchnorm=use_sync_batchnorm, name='conv_block')
    self.final_conv = checkpoint_naming.Conv2D(
        output_channels, 1, use_bias=True,
        kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.01),
        name='final_conv')

  def build(self, input_shape):
    self.conv_block.build(input_shape)
    self.final_conv.build(tuple(input_shape[:-1]) + (self.head_channels,))
    self.built = True

  def call(self, inputs, training=False):
    return self.final_conv(self.conv_block(inputs, training=training))

  def compute_output_shape(self, input_shape):
    return tuple(input_shape[:-1]) + (self.output_channels,)

  def get_config(self):
    config = super().get_config()
    config.update({
        'head_channels': self.head_channels,
        'output_channels': self.output_channels,
        'kernel_size': self.kernel_size, 'activation': self.activation,
        'bn_momentum': self.bn_momentum, 'bn_epsilon': self.bn_epsilon,
        'use_sync_batchnorm': self.use_sync_batchnorm,
    })
    return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class TransformerClassHead(keras.layers.Layer):
  """1x1 Conv1D (`_conv`, with bias) over cluster centres + void bias -> logits.

  logits = conv(x) + [0, ..., 0, void_prior_logit(C, p)]: the constant is not a
  variable (DeepLab2's `add_bias_towards_void`).

  Args:
    num_classes: number of real classes C; outputs C + 1 logits (void last).
    void_prior_prob: initial softmax probability of void.

  Input [B, N, E]; output [B, N, num_classes + 1].
  """

  def __init__(self, *, num_classes: int, void_prior_prob: float = 0.9,
               **kwargs):
    super().__init__(**kwargs)
    self.num_classes = num_classes
    self.void_prior_prob = void_prior_prob
    if not 0.0 < void_prior_prob < 1.0:
      raise ValueError(f'void_prior_prob must be in (0, 1), got {void_prior_prob}.')
    # A small kernel keeps the initial logits near the void-prior bias.
    self._conv = checkpoint_naming.Conv1D(
        num_classes + 1, 1, use_bias=True,
        kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.01),
        bias_initializer='zeros', name='_conv')
    self._void_bias = [0.0] * num_classes + [
        void_prior_logit(num_classes, void_prior_prob)]

  def build(self, input_shape):
    self._conv.build(input_shape)
    self.built = True

  def call(self, inputs, training=False):
    logits = self._conv(inputs)
    return logits + tf.constant(self._void_bias, dtype=logits.dtype)

  def compute_output_shape(self, input_shape):
    return tuple(input_shape[:-1]) + (self.num_classes + 1,)

  def get_config(self):
    config = super().get_config()
    config.update({'num_classes': self.num_classes,
                   'void_prior_prob': self.void_prior_prob})
    return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class KMaXPredictionHead(keras.layers.Layer):
  """Mask and class prediction from pixel features and cluster embeddings.

  Sublayers (DeepLab2 names): `_pixel_space_head`, `_pixel_space_feature_batch_norm`,
  `_transformer_mask_head`, `_transformer_class_head`, `_pixel_space_mask_batch_norm`.
  Used as each kMaX layer's auxiliary clustering predictor and, through
  `ClipKMaX.checkpoint_items`, as the final heads.

  Args:
    num_classes: real classes C (class logits have C + 1, void last).
    pixel_space_head_channels: pixel-space head conv channels.
    pixel_space_output_channels: embedding depth D.
    void_prior_prob: initial P(void).
    mask_bn_gamma_init: gamma init of the mask-logit BN.
    kernel_size, activation: pixel-space head conv options.
    bn_momentum, bn_epsilon, use_sync_batchnorm: BN options.

  Call on a dict {'pixel_feature': [B*T, h, w, Cp] per frame,
  'class_embedding': [B, N, E], 'mask_embedding': [B, N, E]} with
  `num_frames` = T. Returns a dict:
    PRED_PIXEL_SPACE_MASK_LOGITS [B, T*h, w, N] (frames stacked along height),
    PRED_TRANSFORMER_CLASS_LOGITS [B, N, C + 1],
    PRED_PIXEL_SPACE_NORMALIZED_FEATURE [B*T, h, w, D].
  """

  def __init__(self, *, num_classes: int, pixel_space_head_channels: int = 256,
               pixel_space_output_channels: int = 128,
               void_prior_prob: float = 0.9, mask_bn_gamma_init: float = 0.1,
               kernel_size: int = 5, activation: str = 'gelu',
               bn_momentum: float = 0.99, bn_epsilon: float = 1e-3,
               use_sync_batchnorm: bool = False, **kwargs):
    super().__init__(**kwargs)
    self.num_classes = num_classes
    self.pixel_space_head_channels = pixel_space_head_channels
    self.pixel_space_output_channels = pixel_space_output_channels
    self.void_prior_prob = void_prior_prob
    self.mask_bn_gamma_init = mask_bn_gamma_init
    self.kernel_size = kernel_size
    self.activation = activation
    self.bn_momentum = bn_momentum
    self.bn_epsilon = bn_epsilon
    self.use_sync_batchnorm = use_sync_batchnorm
    bn = dict(bn_momentum=bn_momentum, bn_epsilon=bn_epsilon,
              use_sync_batchnorm=use_sync_batchnorm)
    bn_plain = dict(momentum=bn_momentum, epsilon=bn_epsilon,
                    synchronized=use_sync_batchnorm)
    self._pixel_space_head = PixelSpaceHead(
        head_channels=pixel_space_head_channels,
        output_channels=pixel_space_output_channels, kernel_size=kernel_size,
        activation=activation, name='_pixel_space_head', **bn)
    self._pixel_space_feature_batch_norm = normalization.make_batch_norm(
        name='_pixel_space_feature_batch_norm', **bn_plain)
    self._transformer_mask_head = conv_bn_act.ConvBNAct(
        filters=pixel_space_output_channels, kernel_size=1, conv_type='1d',
        name='_transformer_mask_head', **bn)
    self._transformer_class_head = TransformerClassHead(
        num_classes=num_classes, void_prior_prob=void_prior_prob,
        name='_transformer_class_head')
    self._pixel_space_mask_batch_norm = normalization.make_batch_norm(
        name='_pixel_space_mask_batch_norm',
        gamma_initializer=keras.initializers.Constant(mask_bn_gamma_init),
        **bn_plain)

  def build(self, input_shape):
    pixel_shape = input_shape['pixel_feature']
    self._pixel_space_head.build(pixel_shape)
    self._pixel_space_feature_batch_norm.build(
        tuple(pixel_shape[:-1]) + (self.pixel_space_output_channels,))
    self._transformer_mask_head.build(input_shape['mask_embedding'])
    self._transformer_class_head.build(input_shape['class_embedding'])
    self._pixel_space_mask_batch_norm.build((None, None, None, None, 1))
    self.built = True

  def call(self, inputs, num_frames=1, training=False) -> Dict[str, tf.Tensor]:
    feature = self._pixel_space_head(inputs['pixel_feature'], training=training)
    feature = self._pixel_space_feature_batch_norm(feature, training=training)
    normalized = tf.math.l2_normalize(feature, axis=-1)  # [B*T, h, w, D]
    stacked = resize.stack_frames(normalized, num_frames)  # [B, T*h, w, D]
    mask_embedding = self._transformer_mask_head(inputs['mask_embedding'],
                                                 training=training)  # [B, N, D]
    mask_logits = tf.einsum('bhwd,bnd->bhwn', stacked, mask_embedding)
    mask_logits = self._pixel_space_mask_batch_norm(
        mask_logits[..., None], training=training)[..., 0]  # [B, T*h, w, N]
    class_logits = self._transformer_class_head(inputs['class_embedding'])
    return {
        common.PRED_PIXEL_SPACE_MASK_LOGITS: mask_logits,
        common.PRED_TRANSFORMER_CLASS_LOGITS: class_logits,
        common.PRED_PIXEL_SPACE_NORMALIZED_FEATURE: normalized,
    }

  def get_config(self):
    config = super().get_config()
    config.update({
        'num_classes': self.num_classes,
        'pixel_space_head_channels': self.pixel_space_head_channels,
        'pixel_space_output_channels': self.pixel_space_output_channels,
        'void_prior_prob': self.void_prior_prob,
        'mask_bn_gamma_init': self.mask_bn_gamma_init,
        'kernel_size': self.kernel_size, 'activation': self.activation,
        'bn_momentum': self.bn_momentum, 'bn_epsilon': self.bn_epsilon,
        'use_sync_batchnorm': self.use_sync_batchnorm,
    })
    return config
