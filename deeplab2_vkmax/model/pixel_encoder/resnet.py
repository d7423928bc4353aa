"""ResNet-50 pixel encoder as used by kMaX-DeepLab (Yu et al., ECCV 2022, Sec. 4).

Video-kMaX (Shin et al. 2024, Sec. 3.1) runs it per frame. Two layouts, the
same variables (checkpoint keys and shapes) in both:

- 'deeplab2' (default): DeepLab2's kMaX `resnet50` (`AxialResNet` with
  backbone_type 'resnet'): a 7x7 stride-2 conv + BN stem (`_stem`, OS2) and NO
  max pool; the first bottleneck block of every stage 2..5 strides by 2 on its
  3x3 conv, so stage 2 goes from OS2 to OS4.
- 'keras': the layout of Keras Applications' ResNet50 (ResNet v1, the one
  whose ImageNet weights `pretrained_weights.py` loads): stem, ReLU, then a
  zero-padded 3x3 stride-2 max pool (OS4); stage 2 does not stride and the
  first block of stages 3..5 strides on its first 1x1 conv. With Keras weights
  this layout reproduces Keras's features; the 'deeplab2' layout would run
  them on a network they were not trained in.

Both follow DeepLab2's activation order (`blocks.BottleneckBlock`,
`activate_input=True`): the stem and every block return features BEFORE the
ReLU, each block applies the ReLU to its input. Endpoints are DeepLab2's:
'stage1'..'stage5' are the pre-activation outputs of the stem and of stages
2..5 (what the kMaX pixel decoder LayerNorms, and the semantic head's ASPP
reads as 'stage5'), 'res1'..'res5' their ReLUs (the semantic decoder's
low-level 'res3', 'res2'). Strided convs pad symmetrically (DeepLab2's
Conv2DSame, `conv_bn_act.ConvBNAct`).

Drop path follows DeepLab2's `get_model` for resnet50 (schedule 'linear',
drop_path_beyond_stride 16): a block whose input stride in the original ResNet
is s >= 16 keeps its branch with probability 1 - (1 - p) (log2(s) - 1) / 4,
p = `drop_path_keep_prob`; blocks at smaller strides never drop. For
ResNet-50 that is stage 4 blocks 2..6 and stage 5 block 1 at 1 - 0.75 (1 - p),
stage 5 blocks 2..3 at p, every other block 1.0.
"""

from typing import Dict, List, Sequence

import keras
import tensorflow as tf

from deeplab2_vkmax.model.layers import blocks
from deeplab2_vkmax.model.layers import conv_bn_act

_STAGE_WIDTHS = (64, 128, 256, 512)
# Input stride (original ResNet, DeepLab2's `total_strides_list`) of stages 2..5.
_STAGE_INPUT_STRIDES = (2, 4, 8, 16)
LAYOUTS = ('deeplab2', 'keras')


def _scaled(channels: int, multiplier: float) -> int:
  return max(1, int(round(channels * multiplier)))


def drop_path_keep_probs(keep_prob: float, block_counts: Sequence[int]
                         ) -> List[List[float]]:
  """Per-block keep probabilities of stages 2..5 (see the module docstring).

  Args:
    keep_prob: p, the keep probability of the last stage.
    block_counts: blocks per stage 2..5.

  Returns:
    One list per stage, one keep probability per block.
  """
  rates = []
  for input_stride, count in zip(_STAGE_INPUT_STRIDES, block_counts):
    stage_rates = []
    for block in range(count):
      # The first block sees the stage's input stride; it strides by 2.
      stride = input_stride if block == 0 else 2 * input_stride
      if stride < 16:
        stage_rates.append(1.0)
      else:
        stage = stride.bit_length() - 2  # log2(stride) - 1
        stage_rates.append(1.0 - (1.0 - keep_prob) * stage / 4)
    rates.append(stage_rates)
  return rates


@keras.saving.register_keras_serializable(package='deeplab2_vkmax')
class ResNet(keras.layers.Layer):
  """ResNet-50 (kMaX variant) with a width multiplier for tiny variants.

  Args:
    width_multiplier: scales every width (stem 64, stage widths 64/128/256/512).
    block_counts: bottleneck blocks per stage 2..5.
    layout: 'deeplab2' (DeepLab2's kMaX ResNet-50) or 'keras' (Keras
      Applications' ResNet50 v1, for its ImageNet weights); see the module
      docstring.
    drop_path_keep_prob: keep probability p of the last blocks; DeepLab2's
      linear schedule from stride 16 on (module docstring).
    bn_momentum, bn_epsilon, use_sync_batchnorm: BN options.

  Call on images [B, H, W, 3] (already normalised). Returns a dict:
    'stage1'/'res1' [B, H/2, W/2, 64m], 'stage2'/'res2' [B, H/4, W/4, 256m],
    'stage3'/'res3' [.., H/8, .., 512m], 'stage4'/'res4' [.., H/16, .., 1024m],
    'stage5'/'res5' [.., H/32, .., 2048m] (sizes rounded up); 'stageN' before
    the ReLU, 'resN' after it.
  """

  def __init__(self, *, width_multiplier: float = 1.0,
               block_counts: Sequence[int] = (3, 4, 6, 3),
               layout: str = 'deeplab2',
               drop_path_keep_prob: float = 1.0, bn_momentum: float = 0.99,
               bn_epsilon: float = 1e-3, use_sync_batchnorm: bool = False,
               **kwargs):
    super().__init__(**kwargs)
    if len(block_counts) != 4:
      raise ValueError(f'block_counts needs 4 entries, got {block_counts}.')
    if layout not in LAYOUTS:
      raise ValueError(f'layout must be one of {LAYOUTS}, got {layout!r}.')
    self.width_multiplier = width_multiplier
    self.block_counts = tuple(block_counts)
    self.layout = layout
    self.drop_path_keep_prob = drop_path_keep_prob
    self.bn_momentum = bn_momentum
    self.bn_epsilon = bn_epsilon
    self.use_sync_batchnorm = use_sync_batchnorm
    bn = dict(bn_momentum=bn_momentum, bn_epsilon=bn_epsilon,
              use_sync_batchnorm=use_sync_batchnorm)
    self._stem = conv_bn_act.ConvBNAct(
        filters=_scaled(64, width_multiplier), kernel_size=7, strides=2,
        activation='none', name='_stem', **bn)
    keras_layout = layout == 'keras'
    self._max_pool = None
    if keras_layout:
      self._max_pool = keras.layers.MaxPooling2D(3, strides=2, padding='valid',
                                                 name='_max_pool')
    self._stages = []
    keep_probs = drop_path_keep_probs(drop_path_keep_prob, self.block_counts)
    for index, (width, count) in enumerate(zip(_STAGE_WIDTHS,
                                               self.block_counts)):
      stage = blocks.BlockStage(
          block_type='bottleneck', num_blocks=count,
          filters=_scaled(width, width_multiplier),
          strides=1 if (keras_layout and index == 0) else 2,
          stride_on_1x1=keras_layout, activation='relu', activate_input=True,
          drop_path_keep_probs=keep_probs[index], name=f'_stage{index + 2}',
          **bn)
      setattr(self, f'_stage{index + 2}', stage)
      self._stages.append(stage)

  @property
  def output_channels(self) -> Dict[str, int]:
    """Channels of every endpoint."""
    channels = {'stage1': _scaled(64, self.width_multiplier)}
    channels['res1'] = channels['stage1']
    for index, width in enumerate(_STAGE_WIDTHS):
      channels[f'stage{index + 2}'] = 4 * _scaled(width, self.width_multiplier)
      channels[f'res{index + 2}'] = channels[f'stage{index + 2}']
    return channels

  def _pool(self, x):
    # Keras ResNet50: ZeroPadding2D(1) then a 'valid' 3x3/2 max pool; after the
    # ReLU, zero padding never wins the max.
    return self._max_pool(tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]]))

  def build(self, input_shape):
    self._stem.build(input_shape)
    shape = self._stem.compute_output_shape(input_shape)
    if self._max_pool is not None:
      shape = (shape[0], *[None if s is None else (s - 1) // 2 + 1
                           for s in shape[1:3]], shape[3])
    for stage in self._stages:
      stage.build(shape)
      shape = stage.compute_output_shape(shape)
    self.built = True

  def call(self, inputs, training=False):
    x = self._stem(inputs, training=training)
    endpoints = {'stage1': x, 'res1': tf.nn.relu(x)}
    if self._max_pool is not None:
      x = self._pool(endpoints['res1'])
    for index, stage in enumerate(self._stages):
      x = stage(x, training=training)
      endpoints[f'stage{index + 2}'] = x
      endpoints[f'res{index + 2}'] = tf.nn.relu(x)
    return endpoints

  def get_config(self):
    config = super().get_config()
    config.update({
        'width_multiplier': self.width_multiplier,
        'block_counts': list(self.block_counts),
        'layout': self.layout,
        'drop_path_keep_prob': self.drop_path_keep_prob,
        'bn_momentum': self.bn_momentum, 'bn_epsilon': self.bn_epsilon,
        'use_sync_batchnorm': self.use_sync_batchnorm,
    })
    return config
