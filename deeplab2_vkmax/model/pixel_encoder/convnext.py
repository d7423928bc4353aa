"""ConvNeXt pixel encoder (Liu et al., CVPR 2022), a kMaX-DeepLab backbone option.

kMaX-DeepLab (Yu et al., ECCV 2022, Sec. 4) and Video-kMaX (Shin et al. 2024,
Sec. 4) report ConvNeXt-T/S/B/L next to ResNet-50. A 4x4 stride-4 "patchify"
stem conv + LayerNorm, then four stages of ConvNeXt blocks (7x7 depthwise conv ->
LayerNorm -> 1x1 expansion 4x -> GELU -> 1x1 projection -> layer scale -> drop
path -> residual); stages 3..5 start with LayerNorm + a 2x2 stride-2 conv.

Layout and endpoints are DeepLab2's (`model/pixel_encoder/convnext.py`), so its
kMaX ConvNeXt checkpoints restore key for key: `downsample_layers/0` (stem conv,
LayerNorm), `downsample_layers/1..3` (LayerNorm, conv), `stages/0..3`, each a
Keras-2-Sequential-named container (`layer_with_weights-i`); the depthwise conv
kernel is a grouped-conv [7, 7, 1, C] and the layer scale [1, 1, 1, C].
Endpoints: 'stage1' = the stem output (stride 4), 'stage2'..'stage5' = the
stage outputs (strides 4..32), 'res<k>' = GELU('stage<k>').

Padding (`zero_padding_for_downstream`, DeepLab2's kMaX setting, default on):
zeros 1 top/left and 2 bottom/right before the stem conv and 1 bottom/right
before each downsampling block (so the padded pixels reach that block's conv
as its LayerNorm's beta); every conv is 'valid'. With it off the convs are plain
'valid' as in Keras Applications, whose ImageNet weights then reproduce Keras's
features (`pretrained_weights.py`).
"""

from typing import Dict, Sequence, Tuple

import keras
import tensorflow as tf

from deeplab2_vkmax.model.layers import checkpoint_naming
from deeplab2_vkmax.model.layers import drop_path

# name -> (blocks per stage 2..5, widths per stage 2..5), Liu et al. Table 9.
VARIANTS: Dict[str, Tuple[Tuple[int, ...], Tuple[int, ...]]] = {
    'convnext_tiny': ((3, 3, 9, 3), (96, 192, 384, 768)),
    'convnext_small': ((3, 3, 27, 3), (96, 192, 384, 768)),
    'convnext_base': ((3, 3, 27, 3), (128, 256, 512, 1024)),
    'convnext_large': ((3, 3, 27, 3), (192, 384, 768, 1536)),
}
# DeepLab2's zero padding (top/left, bottom/right) before the stem and each
# downsampling block.
_STEM_PADDING = (1, 2)
_DOWNSAMPLE_PADDING = (0, 1)
_INIT = keras.initializers.TruncatedNormal(stddev=0.02)  # DeepLab2 / ConvNeXt init.


def _scaled(value: int, multiplier: float) -> int:
  return max(1, int(round(value * multiplier)))


def _pad(x, padding):
  before, after = padding
  return tf.pad(x, [[0, 0], [before, after], [before, after], [0, 0]])


@keras.saving.register_keras_serializable(package='deeplab2_vkmax')
class ConvNeXtBlock(keras.layers.Layer):
  """One ConvNeXt block; output shape = input shape.

  Sublayers (DeepLab2 names): `depthwise_conv`, `norm`, `pointwise_conv1`,
  `pointwise_conv2`, weight `layer_scale` [1, 1, 1, C].

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
    self.depthwise_conv = checkpoint_naming.GroupedDepthwiseConv2D(
        7, kernel_initializer=_INIT, name='depthwise_conv')
    self.norm = keras.layers.LayerNormalization(epsilon=layer_norm_epsilon, name='norm')
    self.pointwise_conv1 = checkpoint_naming.Dense(
        4 * filters, kernel_initializer=_INIT, name='pointwise_conv1')
    self.pointwise_conv2 = checkpoint_naming.Dense(
        filters, kernel_initializer=_INIT, name='pointwise_conv2')
    self._drop_path = drop_path.DropPath(keep_prob=drop_path_keep_prob,
                                         name='_drop_path')

  def build(self, input_shape):
    self.depthwise_conv.build(input_shape)
    self.norm.build(input_shape)
    self.pointwise_conv1.build(input_shape)
    self.pointwise_conv2.build(tuple(input_shape[:-1]) + (4 * self.filters,))
    self.layer_scale = self.add_weight(
        name='layer_scale', shape=(1, 1, 1, self.filters),
        initializer=keras.initializers.Constant(self.layer_scale_init))
    self.built = True

  def call(self, inputs, training=False):
    x = self.depthwise_conv(inputs)
    x = self.norm(x)
    x = keras.activations.gelu(self.pointwise_conv1(x), approximate=False)
    x = self.pointwise_conv2(x) * tf.cast(self.layer_scale, x.dtype)
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
    zero_padding_for_downstream: DeepLab2's kMaX padding (module docstring).

  Call on images [B, H, W, 3] (already normalised). Returns a dict:
    'stage1'/'res1' [B, h1, w1, w0] (stem), 'stage2'/'res2' [B, h1, w1, w0],
    'stage3'/'res3' [.., h1/2, .., w1], 'stage4'/'res4' [.., h1/4, .., w2],
    'stage5'/'res5' [.., h1/8, .., w3]; h1 = floor((H + 3 - 4) / 4) + 1 with
    the padding (ceil(H / 4) for H = 32k + 1), floor(H / 4) without; each
    downsampling halves rounding up with the padding, down without.
  """

  def __init__(self, *, block_counts: Sequence[int] = (3, 3, 9, 3),
               widths: Sequence[int] = (96, 192, 384, 768),
               width_multiplier: float = 1.0, depth_multiplier: float = 1.0,
               drop_path_keep_prob: float = 1.0, layer_scale_init: float = 1e-6,
               layer_norm_epsilon: float = 1e-6,
               zero_padding_for_downstream: bool = True, **kwargs):
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
    self.zero_padding_for_downstream = zero_padding_for_downstream
    self._scaled_widths = tuple(_scaled(w, width_multiplier) for w in widths)
    counts = tuple(_scaled(c, depth_multiplier) for c in block_counts)
    total = sum(counts)

    def norm(name):
      return keras.layers.LayerNormalization(epsilon=layer_norm_epsilon, name=name)

    def conv(filters, size, name):
      return checkpoint_naming.Conv2D(filters, size, strides=size, padding='valid',
                                      use_bias=True, kernel_initializer=_INIT,
                                      name=name)

    downsample = [checkpoint_naming.SequentialSlots(
        [conv(self._scaled_widths[0], 4, 'stem_conv'), norm('stem_norm')],
        name='stem')]
    for index, width in enumerate(self._scaled_widths[1:]):
      downsample.append(checkpoint_naming.SequentialSlots(
          [norm('downsample_norm'), conv(width, 2, 'downsample_conv')],
          name=f'downsampling_block_{index}'))
    self.downsample_layers = checkpoint_naming.LayerList(
        downsample, name='downsample_layers')
    stages, index = [], 0
    for stage, (width, count) in enumerate(zip(self._scaled_widths, counts)):
      blocks = []
      for block in range(count):
        # Linear stochastic-depth schedule over all blocks of the encoder.
        keep = 1.0 - (1.0 - drop_path_keep_prob) * index / max(total - 1, 1)
        blocks.append(ConvNeXtBlock(
            filters=width, drop_path_keep_prob=keep,
            layer_scale_init=layer_scale_init,
            layer_norm_epsilon=layer_norm_epsilon,
            name=f'convnext_block_{stage}_{block}'))
        index += 1
      stages.append(checkpoint_naming.SequentialSlots(
          blocks, name=f'convnext_stage_{stage}'))
    self.stages = checkpoint_naming.LayerList(stages, name='stages')

  @property
  def stage_block_counts(self) -> Tuple[int, ...]:
    """Blocks per stage 2..5 after `depth_multiplier`."""
    return tuple(len(stage) for stage in self.stages)

  @property
  def output_channels(self) -> Dict[str, int]:
    """Channels of every endpoint."""
    channels = {'stage1': self._scaled_widths[0], 'res1': self._scaled_widths[0]}
    for stage, width in enumerate(self._scaled_widths, start=2):
      channels[f'stage{stage}'] = channels[f'res{stage}'] = width
    return channels

  def build(self, input_shape):
    stem_conv, stem_norm = self.downsample_layers[0]
    stem_conv.build(input_shape)
    stem_norm.build((None, None, None, self._scaled_widths[0]))
    previous = self._scaled_widths[0]
    for index, width in enumerate(self._scaled_widths):
      if index > 0:
        layer_norm, conv = self.downsample_layers[index]
        layer_norm.build((None, None, None, previous))
        conv.build((None, None, None, previous))
      for block in self.stages[index]:
        block.build((None, None, None, width))
      previous = width
    self.built = True

  def call(self, inputs, training=False):
    endpoints = {}
    padded = self.zero_padding_for_downstream
    stem_conv, stem_norm = self.downsample_layers[0]
    x = stem_norm(stem_conv(_pad(inputs, _STEM_PADDING) if padded else inputs))
    endpoints['stage1'] = x
    for index in range(4):
      if index > 0:
        layer_norm, conv = self.downsample_layers[index]
        x = conv(layer_norm(_pad(x, _DOWNSAMPLE_PADDING) if padded else x))
      for block in self.stages[index]:
        x = block(x, training=training)
      endpoints[f'stage{index + 2}'] = x
    for stage in range(1, 6):
      endpoints[f'res{stage}'] = keras.activations.gelu(
          endpoints[f'stage{stage}'], approximate=False)
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
        'zero_padding_for_downstream': self.zero_padding_for_downstream,
    })
    return config
