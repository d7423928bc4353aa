"""ConvNeXt pixel encoder (Liu et al., CVPR 2022), a kMaX-DeepLab backbone option.

kMaX-DeepLab (Yu et al., ECCV 2022, Sec. 4) and Video-kMaX (Shin et al. 2024,
Sec. 4) report ConvNeXt-T/S/B/L next to ResNet-50. A 4x4 stride-4 "patchify"
stem conv + LayerNorm, then four stages of ConvNeXt blocks (7x7 depthwise conv ->
LayerNorm -> 1x1 expansion 4x -> GELU -> 1x1 projection -> layer scale -> drop
path -> residual); stages 3..5 start with LayerNorm + a 2x2 stride-2 conv.
Endpoints 'stage2'..'stage5' (OS4..OS32) with aliases 'res2'..'res5'. ConvNeXt
has no OS2 feature, so there is no 'stage1' (an OS2 pixel decoder needs ResNet).
The final LayerNorm and classifier of the ImageNet model are not part of the
encoder (kMaX's pixel decoder normalises each endpoint itself).
"""

from typing import Dict, Sequence, Tuple

import keras

from deeplab2_vkmax.model.layers import checkpoint_naming
from deeplab2_vkmax.model.layers import drop_path

# name -> (blocks per stage 2..5, widths per stage 2..5), Liu et al. Table 9.
VARIANTS: Dict[str, Tuple[Tuple[int, ...], Tuple[int, ...]]] = {
    'convnext_tiny': ((3, 3, 9, 3), (96, 192, 384, 768)),
    'convnext_small': ((3, 3, 27, 3), (96, 192, 384, 768)),
    'convnext_base': ((3, 3, 27, 3), (128, 256, 512, 1024)),
    'convnext_large': ((3, 3, 27, 3), (192, 384, 768, 1536)),
}


def _scaled(value: int, multiplier: float) -> int:
  return max(1, int(round(value * multiplier)))


@keras.saving.register_keras_serializable(package='deeplab2_vkmax')
class ConvNeXtBlock(keras.layers.Layer):
  """One ConvNeXt block; output shape = input shape.

  Args:
    filters: channels C (input and output).
    drop_path_keep_prob: keep probability of the residual branch.
    layer_scale_init: initial value of the per-channel layer scale.
    layer_norm_epsilon: LayerNorm epsilon.
  """

  def __init__(self, *, filters: int, drop_path_keep_prob: float = 1.0,
               layer_scale_init: float = 1e-6, layer_norm_epsilon: float = 1e-6,
               **kwargs):
    super().__init__(**kwargs)
    self.filters = filters
    self.drop_path_keep_prob = drop_path_keep_prob
    self.layer_scale_init = layer_scale_init
    self.layer_norm_epsilon = layer_norm_epsilon
    self._depthwise_conv = checkpoint_naming.DepthwiseConv2D(
        7, padding='same', use_bias=True, name='_depthwise_conv')
    self._layer_norm = keras.layers.LayerNormalization(
        epsilon=layer_norm_epsilon, name='_layer_norm')
    self._pointwise_conv1 = keras.layers.Dense(4 * filters, name='_pointwise_conv1')
    self._pointwise_conv2 = keras.layers.Dense(filters, name='_pointwise_conv2')
    self._drop_path = drop_path.DropPath(keep_prob=drop_path_keep_prob,
                                         name='_drop_path')

  def build(self, input_shape):
    self._depthwise_conv.build(input_shape)
    self._layer_norm.build(input_shape)
    self._pointwise_conv1.build(input_shape)
    self._pointwise_conv2.build(tuple(input_shape[:-1]) + (4 * self.filters,))
    self.layer_scale = self.add_weight(
        name='layer_scale', shape=(self.filters,),
        initializer=keras.initializers.Constant(self.layer_scale_init))
    self.built = True

  def call(self, inputs, training=False):
    x = self._depthwise_conv(inputs)
    x = self._layer_norm(x)
    x = keras.activations.gelu(self._pointwise_conv1(x), approximate=False)
    x = self._pointwise_conv2(x) * self.layer_scale
    return inputs + self._drop_path(x, training=training)

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self):
    config = super().get_config()
    config.update({'filters': self.filters,
                   'drop_path_keep_prob': self.drop_path_keep_prob,
                   'layer_scale_init': self.layer_scale_init,
                   'layer_norm_epsilon': self.layer_norm_epsilon})
    return config


@keras.saving.register_keras_serializable(package='deeplab2_vkmax')
class ConvNeXt(keras.layers.Layer):
  """ConvNeXt encoder with width/depth multipliers for tiny variants.

  Args:
    block_counts: blocks per stage 2..5 (before `depth_multiplier`).
    widths: channels per stage 2..5 (before `width_multiplier`).
    width_multiplier: scales every width.
    depth_multiplier: scales every block count (at least 1 block).
    drop_path_keep_prob: keep probability of the last block; earlier blocks
      rise linearly to 1.0 for the first (ConvNeXt's stochastic depth rule,
      drop rate = 1 - keep_prob).
    layer_scale_init: initial layer scale (ConvNeXt: 1e-6).
    layer_norm_epsilon: LayerNorm epsilon.

  Call on images [B, H, W, 3] (already normalised). Returns a dict:
    'stage2'/'res2' [B, H/4, W/4, w0], 'stage3'/'res3' [.., H/8, .., w1],
    'stage4'/'res4' [.., H/16, .., w2], 'stage5'/'res5' [.., H/32, .., w3]
    (sizes rounded up).
  """

  def __init__(self, *, block_counts: Sequence[int] = (3, 3, 9, 3),
               widths: Sequence[int] = (96, 192, 384, 768),
               width_multiplier: float = 1.0, depth_multiplier: float = 1.0,
               drop_path_keep_prob: float = 1.0, layer_scale_init: float = 1e-6,
               layer_norm_epsilon: float = 1e-6, **kwargs):
    super().__init__(**kwargs)
    if len(block_counts) != 4 or len(widths) != 4:
      raise ValueError(f'block_counts and widths need 4 entries (stages 2..5), got '
                       f'{block_counts} and {widths}.')
    self.block_counts = tuple(block_counts)
    self.widths = tuple(widths)
    self.width_multiplier = width_multiplier
    self.depth_multiplier = depth_multiplier
    self.drop_path_keep_prob = drop_path_keep_prob
    self.layer_scale_init = layer_scale_init
    self.layer_norm_epsilon = layer_norm_epsilon
    self._scaled_widths = tuple(_scaled(w, width_multiplier) for w in widths)
    counts = tuple(_scaled(c, depth_multiplier) for c in block_counts)
    total = sum(counts)
    norm = dict(epsilon=layer_norm_epsilon)
    self._stem_conv = checkpoint_naming.Conv2D(
        self._scaled_widths[0], 4, strides=4, padding='same', use_bias=True,
        name='_stem_conv')
    self._stem_layer_norm = keras.layers.LayerNormalization(
        name='_stem_layer_norm', **norm)
    index = 0
    for stage, (width, count) in enumerate(zip(self._scaled_widths, counts), start=2):
      layers = {}
      if stage > 2:
        layers['downsample_layer_norm'] = keras.layers.LayerNormalization(
            name=f'_stage{stage}_downsample_layer_norm', **norm)
        layers['downsample_conv'] = checkpoint_naming.Conv2D(
            width, 2, strides=2, padding='same', use_bias=True,
            name=f'_stage{stage}_downsample_conv')
      blocks = []
      for block in range(1, count + 1):
        # Linear stochastic-depth schedule over all blocks of the encoder.
        keep = 1.0 - (1.0 - drop_path_keep_prob) * index / max(total - 1, 1)
        blocks.append(ConvNeXtBlock(
            filters=width, drop_path_keep_prob=keep,
            layer_scale_init=layer_scale_init,
            layer_norm_epsilon=layer_norm_epsilon,
            name=f'_stage{stage}_block{block}'))
        index += 1
      layers['blocks'] = checkpoint_naming.LayerList(blocks, name=f'_stage{stage}')
      for name, layer in layers.items():
        setattr(self, f'_stage{stage}_{name}', layer)

  def _stage_layers(self, stage: int):
    """(downsample LayerNorm or None, downsample conv or None, blocks)."""
    return (getattr(self, f'_stage{stage}_downsample_layer_norm', None),
            getattr(self, f'_stage{stage}_downsample_conv', None),
            getattr(self, f'_stage{stage}_blocks'))

  @property
  def stage_block_counts(self) -> Tuple[int, ...]:
    """Blocks per stage 2..5 after `depth_multiplier`."""
    return tuple(len(self._stage_layers(stage)[2]) for stage in range(2, 6))

  @property
  def output_channels(self) -> Dict[str, int]:
    """Channels of every endpoint."""
    channels = {}
    for stage, width in enumerate(self._scaled_widths, start=2):
      channels[f'stage{stage}'] = channels[f'res{stage}'] = width
    return channels

  def build(self, input_shape):
    self._stem_conv.build(input_shape)
    self._stem_layer_norm.build((None, None, None, self._scaled_widths[0]))
    previous = self._scaled_widths[0]
    for stage, width in enumerate(self._scaled_widths, start=2):
      norm, conv, blocks = self._stage_layers(stage)
      if conv is not None:
        norm.build((None, None, None, previous))
        conv.build((None, None, None, previous))
      for block in blocks:
        block.build((None, None, None, width))
      previous = width
    self.built = True

  def call(self, inputs, training=False):
    endpoints = {}
    x = self._stem_layer_norm(self._stem_conv(inputs))
    for stage in range(2, 6):
      norm, conv, blocks = self._stage_layers(stage)
      if conv is not None:
        x = conv(norm(x))
      for block in blocks:
        x = block(x, training=training)
      endpoints[f'stage{stage}'] = x
      endpoints[f'res{stage}'] = x
    return endpoints

  def get_config(self):
    config = super().get_config()
    config.update({
        'block_counts': list(self.block_counts), 'widths': list(self.widths),
        'width_multiplier': self.width_multiplier,
        'depth_multiplier': self.depth_multiplier,
        'drop_path_keep_prob': self.drop_path_keep_prob,
        'layer_scale_init': self.layer_scale_init,
        'layer_norm_epsilon': self.layer_norm_epsilon,
    })
    return config
