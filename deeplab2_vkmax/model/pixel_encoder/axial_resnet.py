"""Axial-ResNet-50 pixel encoder (Axial-DeepLab, Wang et al., ECCV 2020, Sec. 3-4).

Video-kMaX (Shin et al. 2024, Sec. 4.1 and Tab. 1-3) compares with TubeFormer on
an "Axial-ResNet50-B1" backbone (ref. [40], Axial-DeepLab). This module builds
what DeepLab2 (the code base Video-kMaX is built on) offers kMaX-DeepLab under
the name `axial_resnet50` (`model/pixel_encoder/axial_resnet.py`): "the same
backbone as MaX-S" (MaX-DeepLab-S without its dual-path transformer), i.e.

- an Inception stem: 3x3 stride-2 conv (64) -> 3x3 conv (64) -> 3x3 conv (128),
  each with BN; endpoint 'stage1' (OS2, 128 channels);
- ResNet-50 stages 2..5 with (3, 4, 6, 3) blocks of widths 64/128/256/512
  (output 4x). There is no max pool: the first block of every stage strides
  by 2 (on its 3x3 conv or its attention), so the encoder reaches OS32;
- axial-attention blocks (`blocks.AxialBlock`: 1x1 conv to 2w -> height then
  width position-sensitive axial attention with w query/key and 2w value
  channels over 8 heads -> 1x1 conv to 4w) wherever a block's input stride in
  the original ResNet is >= 16: stage 4 blocks 2..6 and all of stage 5 (its
  first block strides its attention: each axis attends at full length and is
  then subsampled); every other block is a bottleneck;
- GELU activations throughout;
- drop path only in blocks whose input stride is >= 16, with DeepLab2's
  'linear' schedule keep = 1 - (1 - p) * (log2(stride) - 1) / 4: stage 4
  blocks 2..6 and stage 5 block 1 keep 1 - 0.75 (1 - p), stage 5 blocks 2..3
  keep p (= `drop_path_keep_prob`).

41,343,424 trainable parameters, DeepLab2's pinned count for both
`axial_resnet50` and `max_deeplab_s_backbone`.

Assumption (the naming is not defined in the Video-kMaX paper): "B1" is read
as the MaX-DeepLab-S / TubeFormer base configuration whose decoder stages use
one block each (DeepLab2's `*_blocks_per_stage = 1`); those decoder blocks are
not part of the encoder, and clip-kMaX replaces them with its own pixel
decoder, so the encoder is exactly DeepLab2's `axial_resnet50`.

Relative positional encodings (`max_span`, default 255 = DeepLab2's MAX_SPAN,
a table of 509 offsets per axis): attention is global along each axis, and
offsets beyond +-254 share the end embeddings. Axial attention runs at OS16
and OS32 only; a 385x1249 KITTI-STEP frame gives axes of 25x79 (OS16) and
13x40 (OS32), so offsets reach at most 78 and nothing is clipped. Clipping
would start with frames longer than 16 * 255 = 4080 pixels.
"""

from typing import Dict, Sequence

import keras

from deeplab2_vkmax.model.layers import blocks
from deeplab2_vkmax.model.layers import conv_bn_act

_PACKAGE = 'deeplab2_vkmax'
# Bottleneck widths of stages 2..5 and their input stride in the original ResNet.
_STAGE_WIDTHS = (64, 128, 256, 512)
_STAGE_INPUT_STRIDES = (2, 4, 8, 16)
_VALID_AXIAL_BEYOND_STRIDES = (0, 2, 4, 8, 16, 32)


def _scaled(channels: int, multiplier: float) -> int:
  return max(1, int(round(channels * multiplier)))


def _drop_path_keep_prob(keep_prob_last: float, stride: int) -> float:
  """DeepLab2's 'linear' schedule, applied from stride 16 on (see module doc)."""
  if stride < 16:
    return 1.0
  stage = stride.bit_length() - 2  # log2(stride) - 1
  return 1.0 - (1.0 - keep_prob_last) * stage / 4


@keras.saving.register_keras_serializable(package=_PACKAGE)
class InceptionStem(keras.layers.Layer):
  """Three 3x3 conv + BN: stride 2 (c), 1 (c), 1 (2c); activation after the first two.

  Sublayers `_conv1_bn_act`, `_conv2_bn_act`, `_conv3_bn` (DeepLab2 names).
  The output is `_conv3_bn`'s, before any activation: the first block of
  stage 2 activates its input (DeepLab2's order).

  Args:
    filters: c, the width of the first two convs.
    activation: activation name.
    bn_momentum, bn_epsilon, use_sync_batchnorm: BN options.

  Input [B, H, W, Cin]; output [B, ceil(H/2), ceil(W/2), 2c].
  """

  def __init__(self, *, filters: int = 64, activation: str = 'gelu',
               bn_momentum: float = 0.99, bn_epsilon: float = 1e-3,
               use_sync_batchnorm: bool = False, **kwargs):
    super().__init__(**kwargs)
    self.filters = filters
    self.activation = activation
    self.bn_momentum = bn_momentum
    self.bn_epsilon = bn_epsilon
    self.use_sync_batchnorm = use_sync_batchnorm
    bn = dict(bn_momentum=bn_momentum, bn_epsilon=bn_epsilon,
              use_sync_batchnorm=use_sync_batchnorm)
    self._conv1_bn_act = conv_bn_act.ConvBNAct(
        filters=filters, kernel_size=3, strides=2, activation=activation,
        name='_conv1_bn_act', **bn)
    self._conv2_bn_act = conv_bn_act.ConvBNAct(
        filters=filters, kernel_size=3, activation=activation,
        name='_conv2_bn_act', **bn)
    self._conv3_bn = conv_bn_act.ConvBNAct(
        filters=2 * filters, kernel_size=3, name='_conv3_bn', **bn)

  def build(self, input_shape):
    self._conv1_bn_act.build(input_shape)
    shape = self._conv1_bn_act.compute_output_shape(input_shape)
    self._conv2_bn_act.build(shape)
    self._conv3_bn.build(shape)
    self.built = True

  def call(self, inputs, training=False):
    x = self._conv1_bn_act(inputs, training=training)
    x = self._conv2_bn_act(x, training=training)
    # Pre-activation output (DeepLab2): the first block activates its input.
    return self._conv3_bn(x, training=training)

  def compute_output_shape(self, input_shape):
    shape = self._conv1_bn_act.compute_output_shape(input_shape)
    return tuple(shape[:-1]) + (2 * self.filters,)

  def get_config(self):
    config = super().get_config()
    config.update({
        'filters': self.filters, 'activation': self.activation,
        'bn_momentum': self.bn_momentum, 'bn_epsilon': self.bn_epsilon,
        'use_sync_batchnorm': self.use_sync_batchnorm,
    })
    return config


class _Stage(blocks.BlockSequence):
  """Given residual blocks (of mixed types) held as `_block1`, `_block2`, ...

  Internal container: rebuilt from `AxialResNet`'s config, so no `get_config`.
  """

  def __init__(self, block_layers: Sequence[keras.layers.Layer], **kwargs):
    super().__init__(**kwargs)
    self._blocks = list(block_layers)
    for index, block in enumerate(self._blocks, start=1):
      setattr(self, f'_block{index}', block)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class AxialResNet(keras.layers.Layer):
  """Axial-ResNet-50 (DeepLab2's `axial_resnet50`); see the module docstring.

  Args:
    width_multiplier: scales every width (stem 64/128, stages 64..512).
    block_counts: blocks per stage 2..5.
    axial_beyond_stride: a block whose input stride (in the original ResNet)
      is >= this uses axial attention instead of its 3x3 conv; 16 (DeepLab2),
      2 (fully axial, Axial-ResNet-L) or 0 (none: a ResNet-50 with Inception
      stem). One of 0, 2, 4, 8, 16, 32.
    num_heads: axial-attention heads (DeepLab2: 8).
    max_span: relative positional encoding span (table 2*max_span-1 long).
    activation: 'gelu' (DeepLab2's `axial_resnet50`) or 'relu'.
    drop_path_keep_prob: keep probability p of the last stage; see the module
      docstring for the schedule.
    bn_momentum, bn_epsilon, use_sync_batchnorm: BN options.

  Endpoints follow DeepLab2's activation order (as `resnet.py`): 'stage1'..
  'stage5' are the pre-activation outputs of the stem and stages 2..5 (every
  block activates its input, `activate_input=True`), 'res1'..'res5' their
  activations.

  Call on images [B, H, W, 3] (already normalised). Returns a dict:
    'stage1' [B, H/2, W/2, 128m], 'stage2'/'res2' [B, H/4, W/4, 256m],
    'stage3'/'res3' [.., H/8, .., 512m], 'stage4'/'res4' [.., H/16, .., 1024m],
    'stage5'/'res5' [.., H/32, .., 2048m] (sizes rounded up).

  Raises:
    ValueError: wrong number of block counts, unknown axial_beyond_stride, or
      axial widths not divisible by num_heads.
  """

  def __init__(self, *, width_multiplier: float = 1.0,
               block_counts: Sequence[int] = (3, 4, 6, 3),
               axial_beyond_stride: int = 16, num_heads: int = 8,
               max_span: int = 255, activation: str = 'gelu',
               drop_path_keep_prob: float = 1.0, bn_momentum: float = 0.99,
               bn_epsilon: float = 1e-3, use_sync_batchnorm: bool = False,
               **kwargs):
    super().__init__(**kwargs)
    if len(block_counts) != 4 or min(block_counts) < 1:
      raise ValueError(f'block_counts needs 4 entries >= 1 (stages 2..5), got '
                       f'{tuple(block_counts)}.')
    if axial_beyond_stride not in _VALID_AXIAL_BEYOND_STRIDES:
      raise ValueError(f'axial_beyond_stride must be one of '
                       f'{_VALID_AXIAL_BEYOND_STRIDES}, got {axial_beyond_stride}.')
    self.width_multiplier = width_multiplier
    self.block_counts = tuple(block_counts)
    self.axial_beyond_stride = axial_beyond_stride
    self.num_heads = num_heads
    self.max_span = max_span
    self.activation = activation
    self.drop_path_keep_prob = drop_path_keep_prob
    self.bn_momentum = bn_momentum
    self.bn_epsilon = bn_epsilon
    self.use_sync_batchnorm = use_sync_batchnorm
    bn = dict(bn_momentum=bn_momentum, bn_epsilon=bn_epsilon,
              use_sync_batchnorm=use_sync_batchnorm)
    self._activation_fn = conv_bn_act.get_activation(activation)
    self._stem = InceptionStem(filters=_scaled(64, width_multiplier),
                               activation=activation, name='_stem', **bn)
    self._stages = []
    for index, (width, count, input_stride) in enumerate(zip(
        _STAGE_WIDTHS, self.block_counts, _STAGE_INPUT_STRIDES)):
      filters = _scaled(width, width_multiplier)
      stage_blocks = []
      for block in range(count):
        # The first block sees the stage's input stride and strides by 2.
        stride = input_stride if block == 0 else 2 * input_stride
        common = dict(filters=filters, activation=activation,
                      strides=2 if block == 0 else 1, activate_input=True,
                      drop_path_keep_prob=_drop_path_keep_prob(
                          drop_path_keep_prob, stride),
                      name=f'_block{block + 1}', **bn)
        if stride >= axial_beyond_stride > 0:
          if filters % num_heads:
            raise ValueError(
                f'axial stage {index + 2} width {filters} (width_multiplier '
                f'{width_multiplier}) is not divisible by num_heads={num_heads}.')
          stage_blocks.append(blocks.AxialBlock(
              num_heads=num_heads, max_span=max_span, **common))
        else:
          stage_blocks.append(blocks.BottleneckBlock(**common))
      stage = _Stage(stage_blocks, name=f'_stage{index + 2}')
      setattr(self, f'_stage{index + 2}', stage)
      self._stages.append(stage)

  @property
  def output_channels(self) -> Dict[str, int]:
    """Channels of every endpoint."""
    channels = {'stage1': 2 * _scaled(64, self.width_multiplier)}
    channels['res1'] = channels['stage1']
    for index, width in enumerate(_STAGE_WIDTHS):
      channels[f'stage{index + 2}'] = 4 * _scaled(width, self.width_multiplier)
      channels[f'res{index + 2}'] = channels[f'stage{index + 2}']
    return channels

  def build(self, input_shape):
    self._stem.build(input_shape)
    shape = self._stem.compute_output_shape(input_shape)
    for stage in self._stages:
      stage.build(shape)
      shape = stage.compute_output_shape(shape)
    self.built = True

  def call(self, inputs, training=False):
    x = self._stem(inputs, training=training)
    endpoints = {'stage1': x, 'res1': self._activation_fn(x)}
    for index, stage in enumerate(self._stages):
      x = stage(x, training=training)
      endpoints[f'stage{index + 2}'] = x
      endpoints[f'res{index + 2}'] = self._activation_fn(x)
    return endpoints

  def get_config(self):
    config = super().get_config()
    config.update({
        'width_multiplier': self.width_multiplier,
        'block_counts': list(self.block_counts),
        'axial_beyond_stride': self.axial_beyond_stride,
        'num_heads': self.num_heads, 'max_span': self.max_span,
        'activation': self.activation,
        'drop_path_keep_prob': self.drop_path_keep_prob,
        'bn_momentum': self.bn_momentum, 'bn_epsilon': self.bn_epsilon,
        'use_sync_batchnorm': self.use_sync_batchnorm,
    })
    return config
