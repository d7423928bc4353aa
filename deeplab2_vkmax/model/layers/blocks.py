"""Residual blocks: bottleneck (ResNet, He et al. 2016) and axial (Axial-DeepLab).

kMaX-DeepLab (Yu et al., ECCV 2022, Sec. 3.3 and Fig. 4) uses bottleneck blocks in
its ResNet-50 encoder and in the OS8/OS4 pixel-decoder stages, and axial blocks in
the OS32/OS16 pixel-decoder stages. Names (`_conv1_bn_act`, `_conv2_bn_act`,
`_conv3_bn`, `_shortcut`, `_attention`, `_block{i}`) follow DeepLab2.
"""

from typing import Optional, Sequence

import keras

from deeplab2_vkmax.model.layers import axial_attention
from deeplab2_vkmax.model.layers import conv_bn_act
from deeplab2_vkmax.model.layers import drop_path

_PACKAGE = 'deeplab2_vkmax'


def _bn_kwargs(layer):
  return dict(bn_momentum=layer.bn_momentum, bn_epsilon=layer.bn_epsilon,
              use_sync_batchnorm=layer.use_sync_batchnorm)


class _ResidualBlock(keras.layers.Layer):
  """Shared shortcut / drop-path / config logic of the two block types."""

  def __init__(self, *, filters: int, strides: int = 1, activation: str,
               drop_path_keep_prob: float = 1.0,
               last_bn_gamma_initializer: str = 'zeros',
               activate_input: bool = False,
               bn_momentum: float = 0.99, bn_epsilon: float = 1e-3,
               use_sync_batchnorm: bool = False, **kwargs):
    super().__init__(**kwargs)
    self.filters = filters
    self.strides = strides
    self.activation = activation
    self.activate_input = activate_input
    self.drop_path_keep_prob = drop_path_keep_prob
    self.last_bn_gamma_initializer = last_bn_gamma_initializer
    self.bn_momentum = bn_momentum
    self.bn_epsilon = bn_epsilon
    self.use_sync_batchnorm = use_sync_batchnorm
    self._activation_fn = conv_bn_act.get_activation(activation)
    self._output_channels = 4 * filters
    self._shortcut = None
    self._drop_path = drop_path.DropPath(keep_prob=drop_path_keep_prob,
                                         name='_drop_path')

  def _build_shortcut(self, input_shape):
    # A projection shortcut only where the residual cannot be added as is.
    if int(input_shape[-1]) != self._output_channels or self.strides != 1:
      self._shortcut = conv_bn_act.ConvBNAct(
          filters=self._output_channels, kernel_size=1, strides=self.strides,
          name='_shortcut', **_bn_kwargs(self))
      self._shortcut.build(input_shape)

  def _block_input(self, inputs):
    # DeepLab2's order: blocks take and return features before the activation.
    return self._activation_fn(inputs) if self.activate_input else inputs

  def _merge(self, inputs, residual, training):
    shortcut = inputs
    if self._shortcut is not None:
      shortcut = self._shortcut(inputs, training=training)
    output = shortcut + self._drop_path(residual, training=training)
    return output if self.activate_input else self._activation_fn(output)

  def compute_output_shape(self, input_shape):
    spatial = []
    for size in input_shape[1:3]:
      spatial.append(None if size is None else -(-size // self.strides))
    return (input_shape[0], *spatial, self._output_channels)

  def get_config(self):
    config = super().get_config()
    config.update({
        'filters': self.filters, 'strides': self.strides,
        'activation': self.activation,
        'drop_path_keep_prob': self.drop_path_keep_prob,
        'last_bn_gamma_initializer': self.last_bn_gamma_initializer,
        'activate_input': self.activate_input,
        **_bn_kwargs(self),
    })
    return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class BottleneckBlock(_ResidualBlock):
  """1x1 (filters) -> 3x3 (filters, stride) -> 1x1 (4*filters) + shortcut.

  The stride sits on the 3x3 conv (ResNet v1.5, DeepLab2's `AxialBlock`), or on
  the first 1x1 conv with `stride_on_1x1` (ResNet v1, Keras Applications).

  Args:
    filters: bottleneck width; output has 4 * filters channels.
    strides: spatial stride.
    stride_on_1x1: put the stride on the first 1x1 conv instead of the 3x3.
    activation: 'relu' (encoder) or 'gelu' (pixel decoder).
    dilation_rate: dilation of the 3x3 conv (DeepLab2's kMaX pixel decoder: 2
      in every bottleneck block, at every resolution).
    drop_path_keep_prob: drop-path keep probability of the residual branch.
    last_bn_gamma_initializer: gamma init of the last BN ('zeros' starts the
      block as identity).
    activate_input: False: the input is already activated and the output is
      act(shortcut + residual). True (DeepLab2's convention, used by the kMaX
      ResNet-50 and pixel decoder): the block applies the activation to its
      input first (so the shortcut sees act(x)) and returns shortcut + residual
      before the activation, which the next block applies. Same function along
      a chain of blocks; only the stage outputs differ (pre-activation).
    bn_momentum, bn_epsilon, use_sync_batchnorm: BN options.

  Input [B, H, W, Cin]; output [B, ceil(H/s), ceil(W/s), 4*filters].
  """

  def __init__(self, *, filters: int, strides: int = 1,
               activation: str = 'relu', stride_on_1x1: bool = False,
               dilation_rate: int = 1, **kwargs):
    super().__init__(filters=filters, strides=strides, activation=activation,
                     **kwargs)
    self.stride_on_1x1 = stride_on_1x1
    self.dilation_rate = dilation_rate
    bn = _bn_kwargs(self)
    self._conv1_bn_act = conv_bn_act.ConvBNAct(
        filters=filters, kernel_size=1,
        strides=strides if stride_on_1x1 else 1, activation=activation,
        name='_conv1_bn_act', **bn)
    self._conv2_bn_act = conv_bn_act.ConvBNAct(
        filters=filters, kernel_size=3,
        strides=1 if stride_on_1x1 else strides, dilation_rate=dilation_rate,
        activation=activation, name='_conv2_bn_act', **bn)
    self._conv3_bn = conv_bn_act.ConvBNAct(
        filters=self._output_channels, kernel_size=1,
        bn_gamma_initializer=self.last_bn_gamma_initializer, name='_conv3_bn',
        **bn)

  def build(self, input_shape):
    self._build_shortcut(input_shape)
    self._conv1_bn_act.build(input_shape)
    shape = self._conv1_bn_act.compute_output_shape(input_shape)
    self._conv2_bn_act.build(shape)
    self._conv3_bn.build(self._conv2_bn_act.compute_output_shape(shape))
    self.built = True

  def call(self, inputs, training=False):
    inputs = self._block_input(inputs)
    x = self._conv1_bn_act(inputs, training=training)
    x = self._conv2_bn_act(x, training=training)
    x = self._conv3_bn(x, training=training)
    return self._merge(inputs, x, training)

  def get_config(self):
    config = super().get_config()
    config.update({'stride_on_1x1': self.stride_on_1x1,
                   'dilation_rate': self.dilation_rate})
    return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class AxialBlock(_ResidualBlock):
  """1x1 (2*filters) -> axial attention (H then W) -> 1x1 (4*filters) + shortcut.

  The attention uses `filters` query/key channels and 2*filters value channels
  over `num_heads` heads (DeepLab2's kMaX pixel decoder: filters 512 gives
  qkv_kernel [1024, 2048]).

  Args:
    filters: base width; output has 4 * filters channels.
    num_heads: attention heads.
    max_span: relative positional encoding span (table 2*max_span-1 long).
    activation: activation (kMaX: 'gelu').
    strides: spatial stride, applied by the attention (each axis attends at
      full length, then is subsampled) and the projection shortcut, as in
      DeepLab2's Axial-ResNet (first block of its last stage).
    drop_path_keep_prob, last_bn_gamma_initializer, bn_*: as BottleneckBlock.

  Input [B, H, W, Cin]; output [B, ceil(H/s), ceil(W/s), 4*filters].
  """

  def __init__(self, *, filters: int, num_heads: int = 8, max_span: int = 255,
               activation: str = 'gelu', strides: int = 1, **kwargs):
    super().__init__(filters=filters, strides=strides, activation=activation,
                     **kwargs)
    self.num_heads = num_heads
    self.max_span = max_span
    bn = _bn_kwargs(self)
    self._conv1_bn_act = conv_bn_act.ConvBNAct(
        filters=2 * filters, kernel_size=1, activation=activation,
        name='_conv1_bn_act', **bn)
    self._attention = axial_attention.AxialAttention2D(
        query_key_channels=filters, value_channels=2 * filters,
        num_heads=num_heads, max_span=max_span, strides=strides,
        name='_attention', **bn)
    self._conv3_bn = conv_bn_act.ConvBNAct(
        filters=self._output_channels, kernel_size=1,
        bn_gamma_initializer=self.last_bn_gamma_initializer, name='_conv3_bn',
        **bn)

  def build(self, input_shape):
    self._build_shortcut(input_shape)
    self._conv1_bn_act.build(input_shape)
    shape = tuple(input_shape[:-1]) + (2 * self.filters,)
    self._attention.build(shape)
    self._conv3_bn.build(shape)
    self.built = True

  def call(self, inputs, training=False):
    inputs = self._block_input(inputs)
    x = self._conv1_bn_act(inputs, training=training)
    x = self._activation_fn(self._attention(x, training=training))
    x = self._conv3_bn(x, training=training)
    return self._merge(inputs, x, training)

  def get_config(self):
    config = super().get_config()
    config.update({'num_heads': self.num_heads, 'max_span': self.max_span})
    return config


_BLOCK_TYPES = {'bottleneck': BottleneckBlock, 'axial': AxialBlock}


class BlockSequence(keras.layers.Layer):
  """Base of stages: runs the blocks in `self._blocks` (set by subclasses) in order."""

  def build(self, input_shape):
    shape = input_shape
    for block in self._blocks:
      block.build(shape)
      shape = block.compute_output_shape(shape)
    self.built = True

  def call(self, inputs, training=False):
    x = inputs
    for block in self._blocks:
      x = block(x, training=training)
    return x

  def compute_output_shape(self, input_shape):
    shape = input_shape
    for block in self._blocks:
      shape = block.compute_output_shape(shape)
    return shape


@keras.saving.register_keras_serializable(package=_PACKAGE)
class BlockStage(BlockSequence):
  """`num_blocks` residual blocks held as `_block1`, `_block2`, ...

  Args:
    block_type: 'bottleneck' or 'axial'.
    num_blocks: number of blocks.
    filters: block width (output 4*filters).
    strides: stride of the first block (bottleneck only).
    activation: block activation.
    drop_path_keep_prob: keep probability of every block's drop path.
    drop_path_keep_probs: per-block keep probabilities (num_blocks entries);
      overrides drop_path_keep_prob (DeepLab2's schedules vary within a stage).
    num_heads, max_span: axial-attention options (axial only).
    last_bn_gamma_initializer, activate_input, stride_on_1x1, dilation_rate
      (the last two bottleneck only), bn_momentum, bn_epsilon, use_sync_batchnorm: block options (see
      `BottleneckBlock`).

  Input [B, H, W, Cin]; output [B, ceil(H/s), ceil(W/s), 4*filters].
  """

  def __init__(self, *, block_type: str, num_blocks: int, filters: int,
               strides: int = 1, activation: str = 'relu',
               drop_path_keep_prob: float = 1.0,
               drop_path_keep_probs: Optional[Sequence[float]] = None,
               num_heads: int = 8,
               max_span: int = 255, last_bn_gamma_initializer: str = 'zeros',
               activate_input: bool = False, stride_on_1x1: bool = False,
               dilation_rate: int = 1,
               bn_momentum: float = 0.99, bn_epsilon: float = 1e-3,
               use_sync_batchnorm: bool = False, **kwargs):
    super().__init__(**kwargs)
    if drop_path_keep_probs is not None and len(drop_path_keep_probs) != num_blocks:
      raise ValueError(f'drop_path_keep_probs needs num_blocks={num_blocks} '
                       f'entries, got {list(drop_path_keep_probs)}.')
    if block_type not in _BLOCK_TYPES:
      raise ValueError(f'Unknown block_type {block_type!r}; valid: '
                       f'{sorted(_BLOCK_TYPES)}.')
    if block_type == 'axial' and strides != 1:
      raise ValueError(f'axial blocks do not stride, got strides={strides}.')
    if num_blocks < 1:
      raise ValueError(f'num_blocks must be >= 1, got {num_blocks}.')
    self.block_type = block_type
    self.num_blocks = num_blocks
    self.filters = filters
    self.strides = strides
    self.activation = activation
    self.drop_path_keep_prob = drop_path_keep_prob
    self.drop_path_keep_probs = (None if drop_path_keep_probs is None else
                                 tuple(float(p) for p in drop_path_keep_probs))
    self.num_heads = num_heads
    self.max_span = max_span
    self.last_bn_gamma_initializer = last_bn_gamma_initializer
    self.activate_input = activate_input
    self.stride_on_1x1 = stride_on_1x1
    self.dilation_rate = dilation_rate
    self.bn_momentum = bn_momentum
    self.bn_epsilon = bn_epsilon
    self.use_sync_batchnorm = use_sync_batchnorm
    common = dict(filters=filters, activation=activation,
                  last_bn_gamma_initializer=last_bn_gamma_initializer,
                  activate_input=activate_input, **_bn_kwargs(self))
    if block_type == 'axial':
      common.update(num_heads=num_heads, max_span=max_span)
    self._blocks = []
    for index in range(num_blocks):
      extra = {'drop_path_keep_prob': (
          drop_path_keep_prob if self.drop_path_keep_probs is None
          else self.drop_path_keep_probs[index])}
      if block_type == 'bottleneck':
        extra['strides'] = strides if index == 0 else 1
        extra['stride_on_1x1'] = stride_on_1x1
        extra['dilation_rate'] = dilation_rate
      block = _BLOCK_TYPES[block_type](name=f'_block{index + 1}', **common,
                                       **extra)
      setattr(self, f'_block{index + 1}', block)
      self._blocks.append(block)

  def get_config(self):
    config = super().get_config()
    config.update({
        'block_type': self.block_type, 'num_blocks': self.num_blocks,
        'filters': self.filters, 'strides': self.strides,
        'activation': self.activation,
        'drop_path_keep_prob': self.drop_path_keep_prob,
        'drop_path_keep_probs': (None if self.drop_path_keep_probs is None
                                 else list(self.drop_path_keep_probs)),
        'num_heads': self.num_heads, 'max_span': self.max_span,
        'last_bn_gamma_initializer': self.last_bn_gamma_initializer,
        'activate_input': self.activate_input,
        'stride_on_1x1': self.stride_on_1x1,
        'dilation_rate': self.dilation_rate,
        **_bn_kwargs(self),
    })
    return config
