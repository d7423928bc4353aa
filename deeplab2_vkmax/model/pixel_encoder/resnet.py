"""ResNet-50 pixel encoder as used by kMaX-DeepLab (Yu et al., ECCV 2022, Sec. 4).

7x7 stride-2 stem conv + BN + ReLU (`_stem`, endpoint 'stage1', OS2), 3x3 stride-2
max pool, then bottleneck stages `_stage2`..`_stage5` (OS4..OS32, stride on the 3x3
conv). Video-kMaX (Shin et al. 2024, Sec. 3.1) runs it per frame. Endpoints
'stage1'..'stage5' with aliases 'res2'..'res5' for stage2..stage5.
"""

from typing import Dict, Sequence

import keras

from deeplab2_vkmax.model.layers import blocks
from deeplab2_vkmax.model.layers import conv_bn_act


def _scaled(channels: int, multiplier: float) -> int:
  return max(1, int(round(channels * multiplier)))


@keras.saving.register_keras_serializable(package='deeplab2_vkmax')
class ResNet(keras.layers.Layer):
  """ResNet-50 (kMaX variant) with a width multiplier for tiny variants.

  Args:
    width_multiplier: scales every width (stem 64, stage widths 64/128/256/512).
    block_counts: bottleneck blocks per stage 2..5.
    drop_path_keep_prob: keep probability of every block's drop path.
    bn_momentum, bn_epsilon, use_sync_batchnorm: BN options.

  Call on images [B, H, W, 3] (already normalised). Returns a dict:
    'stage1' [B, H/2, W/2, 64m], 'stage2'/'res2' [B, H/4, W/4, 256m],
    'stage3'/'res3' [.., H/8, .., 512m], 'stage4'/'res4' [.., H/16, .., 1024m],
    'stage5'/'res5' [.., H/32, .., 2048m] (sizes rounded up).
  """

  def __init__(self, *, width_multiplier: float = 1.0,
               block_counts: Sequence[int] = (3, 4, 6, 3),
               drop_path_keep_prob: float = 1.0, bn_momentum: float = 0.99,
               bn_epsilon: float = 1e-3, use_sync_batchnorm: bool = False,
               **kwargs):
    super().__init__(**kwargs)
    if len(block_counts) != 4:
      raise ValueError(f'block_counts needs 4 entries, got {block_counts}.')
    self.width_multiplier = width_multiplier
    self.block_counts = tuple(block_counts)
    self.drop_path_keep_prob = drop_path_keep_prob
    self.bn_momentum = bn_momentum
    self.bn_epsilon = bn_epsilon
    self.use_sync_batchnorm = use_sync_batchnorm
    bn = dict(bn_momentum=bn_momentum, bn_epsilon=bn_epsilon,
              use_sync_batchnorm=use_sync_batchnorm)
    self._stem = conv_bn_act.ConvBNAct(
        filters=_scaled(64, width_multiplier), kernel_size=7, strides=2,
        activation='relu', name='_stem', **bn)
    self._max_pool = keras.layers.MaxPooling2D(3, strides=2, padding='same',
                                               name='_max_pool')
    self._stages = []
    for index, (width, count) in enumerate(zip((64, 128, 256, 512),
                                               self.block_counts)):
      stage = blocks.BlockStage(
          block_type='bottleneck', num_blocks=count,
          filters=_scaled(width, width_multiplier),
          strides=1 if index == 0 else 2, activation='relu',
          drop_path_keep_prob=drop_path_keep_prob, name=f'_stage{index + 2}',
          **bn)
      setattr(self, f'_stage{index + 2}', stage)
      self._stages.append(stage)

  @property
  def output_channels(self) -> Dict[str, int]:
    """Channels of every endpoint."""
    channels = {'stage1': _scaled(64, self.width_multiplier)}
    for index, width in enumerate((64, 128, 256, 512)):
      channels[f'stage{index + 2}'] = 4 * _scaled(width, self.width_multiplier)
      channels[f'res{index + 2}'] = channels[f'stage{index + 2}']
    return channels

  def build(self, input_shape):
    self._stem.build(input_shape)
    shape = (None, None, None, _scaled(64, self.width_multiplier))
    for stage in self._stages:
      stage.build(shape)
      shape = stage.compute_output_shape(shape)
    self.built = True

  def call(self, inputs, training=False):
    endpoints = {}
    x = self._stem(inputs, training=training)
    endpoints['stage1'] = x
    x = self._max_pool(x)
    for index, stage in enumerate(self._stages):
      x = stage(x, training=training)
      endpoints[f'stage{index + 2}'] = x
      endpoints[f'res{index + 2}'] = x
    return endpoints

  def get_config(self):
    config = super().get_config()
    config.update({
        'width_multiplier': self.width_multiplier,
        'block_counts': list(self.block_counts),
        'drop_path_keep_prob': self.drop_path_keep_prob,
        'bn_momentum': self.bn_momentum, 'bn_epsilon': self.bn_epsilon,
        'use_sync_batchnorm': self.use_sync_batchnorm,
    })
    return config
