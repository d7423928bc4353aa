"""kMaX-DeepLab pixel decoder (Yu et al., ECCV 2022, Sec. 3.3, Fig. 4).

Starting from the OS32 encoder endpoint, each stage fuses the upsampled output of
the previous stage with the next (LayerNorm-ed) encoder endpoint ("resized fuse":
GELU, 1x1 conv + BN on both, bilinear upsampling of the coarse one, sum), then
runs its residual blocks: axial blocks at OS32/OS16, bottleneck blocks at
OS8/OS4 (block counts 1, 5, 1, 1), their 3x3 convs dilated by 2 as in DeepLab2.
An optional fifth stage reaches OS2.
Video-kMaX (Shin et al. 2024, Sec. 3.1) runs it per frame.

As DeepLab2 (`model/pixel_decoder/kmax.py`, `layers/resized_fuse.py`,
`layers/axial_block_groups.py`), features between stages are NOT activated:
every block applies GELU to its input (`blocks.BottleneckBlock`,
`activate_input=True`) and returns its sum before the activation, so the
'decoder_stage*' and 'decoder_output' endpoints are pre-activation (the kMaX
transformer decoder applies GELU to its pixel inputs, the pixel-space head
takes 'decoder_output' as is). The encoder endpoints it reads ('stage5' ..
'stage1') are pre-activation too (see `resnet.py`).
"""

from typing import Dict, Sequence

import keras
import tensorflow as tf

from deeplab2_vkmax.model.layers import blocks
from deeplab2_vkmax.model.layers import checkpoint_naming
from deeplab2_vkmax.model.layers import conv_bn_act
from deeplab2_vkmax.model.layers import resize

_PACKAGE = 'deeplab2_vkmax'
# Encoder endpoints consumed from OS32 upward.
_ENDPOINTS = ('stage5', 'stage4', 'stage3', 'stage2', 'stage1')
# DeepLab2 builds the decoder's bottleneck stages as block groups with output
# stride 16 against an input stride of 32, so every 3x3 conv in them is dilated
# by 2 at every resolution (measured: tests/fidelity, decoder_stage3 onwards).
_BOTTLENECK_DILATION = 2


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ResizedFuse(keras.layers.Layer):
  """Fuses a low-resolution feature into a higher-resolution skip feature.

  out = resize(BN(conv1x1(act(low)))) + BN(conv1x1(act(skip))), not activated
  (DeepLab2's ResizedFuse), sublayers `_resized_conv_bn1` (low) and
  `_resized_conv_bn2` (skip). (DeepLab2 skips the conv of an input that already
  has `filters` channels; the kMaX decoder widths never do.)

  Args:
    filters: output channels.
    activation: activation applied to both inputs before their convs.
    bn_momentum, bn_epsilon, use_sync_batchnorm: BN options.

  Call on (low [B, h, w, C1], skip [B, H, W, C2]); returns [B, H, W, filters].
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
    self._activation_fn = conv_bn_act.get_activation(activation)
    bn = dict(bn_momentum=bn_momentum, bn_epsilon=bn_epsilon,
              use_sync_batchnorm=use_sync_batchnorm)
    self._resized_conv_bn1 = conv_bn_act.ConvBNAct(
        filters=filters, kernel_size=1, name='_resized_conv_bn1', **bn)
    self._resized_conv_bn2 = conv_bn_act.ConvBNAct(
        filters=filters, kernel_size=1, name='_resized_conv_bn2', **bn)

  def build(self, input_shape):
    low_shape, skip_shape = input_shape
    self._resized_conv_bn1.build(low_shape)
    self._resized_conv_bn2.build(skip_shape)
    self.built = True

  def call(self, inputs, training=False):
    low, skip = inputs
    low = self._resized_conv_bn1(self._activation_fn(low), training=training)
    low = resize.resize_bilinear(low, tf.shape(skip)[1:3])
    skip = self._resized_conv_bn2(self._activation_fn(skip), training=training)
    return low + skip

  def compute_output_shape(self, input_shape):
    return tuple(input_shape[1][:-1]) + (self.filters,)

  def get_config(self):
    config = super().get_config()
    config.update({
        'filters': self.filters, 'activation': self.activation,
        'bn_momentum': self.bn_momentum, 'bn_epsilon': self.bn_epsilon,
        'use_sync_batchnorm': self.use_sync_batchnorm,
    })
    return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class KMaXPixelDecoder(keras.layers.Layer):
  """The kMaX pixel decoder.

  Args:
    widths: per-stage block width from OS32 upward (stage output 4*width).
      4 entries end at OS4, 5 at OS2.
    block_counts: blocks per stage.
    block_types: 'axial' or 'bottleneck' per stage.
    num_heads: axial-attention heads.
    max_span: axial relative positional encoding span (2*max_span-1 entries).
    activation: activation of blocks and fusions.
    drop_path_keep_prob: keep probability of every block's drop path.
    layer_norm_epsilon: epsilon of the LayerNorms on encoder endpoints.
    bn_momentum, bn_epsilon, use_sync_batchnorm: BN options.

  Call on the encoder endpoint dict ('stage5'..'stage2', plus 'stage1' for OS2).
  Returns a dict: 'decoder_stage1' [B, H/32, W/32, 4*widths[0]],
  'decoder_stage2' (OS16), 'decoder_stage3' (OS8), 'decoder_stage4' (OS4),
  ['decoder_stage5' (OS2)], and 'decoder_output' = the last stage; all
  before the activation (module docstring).
  """

  def __init__(self, *, widths: Sequence[int] = (512, 256, 128, 64),
               block_counts: Sequence[int] = (1, 5, 1, 1),
               block_types: Sequence[str] = ('axial', 'axial', 'bottleneck',
                                             'bottleneck'),
               num_heads: int = 8, max_span: int = 255,
               activation: str = 'gelu', drop_path_keep_prob: float = 1.0,
               layer_norm_epsilon: float = 1e-6, bn_momentum: float = 0.99,
               bn_epsilon: float = 1e-3, use_sync_batchnorm: bool = False,
               **kwargs):
    super().__init__(**kwargs)
    num_stages = len(widths)
    if num_stages not in (4, 5) or len(block_counts) != num_stages or len(
        block_types) != num_stages:
      raise ValueError(
          'widths, block_counts and block_types need 4 (OS4) or 5 (OS2) equal-'
          f'length entries, got {widths}, {block_counts}, {block_types}.')
    self.widths = tuple(widths)
    self.block_counts = tuple(block_counts)
    self.block_types = tuple(block_types)
    self.num_heads = num_heads
    self.max_span = max_span
    self.activation = activation
    self.drop_path_keep_prob = drop_path_keep_prob
    self.layer_norm_epsilon = layer_norm_epsilon
    self.bn_momentum = bn_momentum
    self.bn_epsilon = bn_epsilon
    self.use_sync_batchnorm = use_sync_batchnorm
    bn = dict(bn_momentum=bn_momentum, bn_epsilon=bn_epsilon,
              use_sync_batchnorm=use_sync_batchnorm)
    self._endpoint_names = _ENDPOINTS[:num_stages]
    self._backbone_norms = checkpoint_naming.LayerList(
        [keras.layers.LayerNormalization(epsilon=layer_norm_epsilon,
                                         name=f'_backbone_norm{i}')
         for i in range(num_stages)], name='_backbone_norms')
    self._skip_connections = checkpoint_naming.LayerList(
        [ResizedFuse(filters=widths[i], activation=activation,
                     name=f'_skip_connection{i}', **bn)
         for i in range(1, num_stages)], name='_skip_connections')
    self._stages = checkpoint_naming.LayerList(
        [blocks.BlockStage(
            block_type=block_types[i], num_blocks=block_counts[i],
            filters=widths[i], activation=activation,
            drop_path_keep_prob=drop_path_keep_prob, num_heads=num_heads,
            max_span=max_span, activate_input=True,
            dilation_rate=_BOTTLENECK_DILATION if block_types[i] == 'bottleneck' else 1,
            name=f'_stage{i}', **bn)
         for i in range(num_stages)], name='_stages')

  @property
  def output_channels(self) -> Dict[str, int]:
    channels = {f'decoder_stage{i + 1}': 4 * w for i, w in enumerate(self.widths)}
    channels['decoder_output'] = 4 * self.widths[-1]
    return channels

  def build(self, input_shape):
    shape = None
    for index, name in enumerate(self._endpoint_names):
      endpoint_shape = input_shape[name]
      self._backbone_norms[index].build(endpoint_shape)
      if index == 0:
        stage_input = endpoint_shape
      else:
        self._skip_connections[index - 1].build((shape, endpoint_shape))
        stage_input = tuple(endpoint_shape[:-1]) + (self.widths[index],)
      self._stages[index].build(stage_input)
      shape = self._stages[index].compute_output_shape(stage_input)
    self._backbone_norms.build()
    self._skip_connections.build()
    self._stages.build()
    self.built = True

  def call(self, inputs, training=False):
    outputs = {}
    x = None
    for index, name in enumerate(self._endpoint_names):
      endpoint = self._backbone_norms[index](inputs[name])
      if index == 0:
        x = endpoint
      else:
        x = self._skip_connections[index - 1]((x, endpoint), training=training)
      x = self._stages[index](x, training=training)
      outputs[f'decoder_stage{index + 1}'] = x
    outputs['decoder_output'] = x
    return outputs

  def get_config(self):
    config = super().get_config()
    config.update({
        'widths': list(self.widths), 'block_counts': list(self.block_counts),
        'block_types': list(self.block_types), 'num_heads': self.num_heads,
        'max_span': self.max_span, 'activation': self.activation,
        'drop_path_keep_prob': self.drop_path_keep_prob,
        'layer_norm_epsilon': self.layer_norm_epsilon,
        'bn_momentum': self.bn_momentum, 'bn_epsilon': self.bn_epsilon,
        'use_sync_batchnorm': self.use_sync_batchnorm,
    })
    return config
