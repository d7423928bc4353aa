"""Convolution + batch norm + activation building blocks (kMaX-DeepLab, Sec. 3).

Sublayer names follow DeepLab2 (`_conv`, `_batch_norm`, `_depthwise`,
`_pointwise`, `_conv1_bn_act`) so checkpoints map.
"""

import keras
import tensorflow as tf

from deeplab2_vkmax.model.layers import checkpoint_naming
from deeplab2_vkmax.model.layers import normalization

_PACKAGE = 'deeplab2_vkmax'

_ACTIVATIONS = {
    'none': lambda x: x,
    'relu': tf.nn.relu,
    'gelu': lambda x: tf.nn.gelu(x, approximate=False),
}


def get_activation(name: str):
  """Returns the activation function called `name`."""
  if name not in _ACTIVATIONS:
    raise ValueError(f'Unknown activation {name!r}; valid: {sorted(_ACTIVATIONS)}.')
  return _ACTIVATIONS[name]


def _bn_kwargs(layer):
  return dict(momentum=layer.bn_momentum, epsilon=layer.bn_epsilon,
              synchronized=layer.use_sync_batchnorm)


def _layer_bn_kwargs(layer):
  return dict(bn_momentum=layer.bn_momentum, bn_epsilon=layer.bn_epsilon,
              use_sync_batchnorm=layer.use_sync_batchnorm)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ConvBNAct(keras.layers.Layer):
  """Conv (1D or 2D) -> optional BN -> activation.

  Args:
    filters: output channels.
    kernel_size: kernel size.
    strides: stride (2D only); a strided conv pads symmetrically, (k - 1) // 2
      before (DeepLab2's Conv2DSame), not as Keras 'same'.
    dilation_rate: dilation (2D only).
    conv_type: '1d' on [B, L, C] or '2d' on [B, H, W, C].
    use_bias: conv bias (DeepLab2 uses it only without BN).
    use_bn: apply batch norm.
    activation: 'none', 'relu' or 'gelu'.
    bn_gamma_initializer: BN gamma init ('zeros' for residual branches).
    bias_initializer: conv bias init.
    kernel_initializer: conv kernel init.
    bn_momentum, bn_epsilon, use_sync_batchnorm: BN options.

  Input [B, H, W, Cin] ('2d') or [B, L, Cin] ('1d'); output same with `filters`.
  """

  def __init__(self, *, filters: int, kernel_size: int = 1, strides: int = 1,
               dilation_rate: int = 1, conv_type: str = '2d',
               use_bias: bool = False, use_bn: bool = True,
               activation: str = 'none', bn_gamma_initializer='ones',
               bias_initializer='zeros', kernel_initializer='he_normal',
               bn_momentum: float = 0.99, bn_epsilon: float = 1e-3,
               use_sync_batchnorm: bool = False, **kwargs):
    super().__init__(**kwargs)
    self.filters = filters
    self.kernel_size = kernel_size
    self.strides = strides
    self.dilation_rate = dilation_rate
    self.conv_type = conv_type
    self.use_bias = use_bias
    self.use_bn = use_bn
    self.activation = activation
    self.bn_gamma_initializer = bn_gamma_initializer
    self.bias_initializer = bias_initializer
    self.kernel_initializer = kernel_initializer
    self.bn_momentum = bn_momentum
    self.bn_epsilon = bn_epsilon
    self.use_sync_batchnorm = use_sync_batchnorm
    self._activation_fn = get_activation(activation)
    # DeepLab2's Conv2DSame: a strided conv pads (k_eff - 1) // 2 before and the
    # rest after, then runs 'valid'; Keras 'same' would pad less before on even
    # inputs (e.g. 2/3 instead of 3/3 for a 7x7 stride-2 conv).
    self._padding = None
    if conv_type == '2d' and strides != 1:
      total = (kernel_size - 1) * dilation_rate
      self._padding = (total // 2, total - total // 2)
    if conv_type == '2d':
      self._conv = checkpoint_naming.Conv2D(
          filters, kernel_size, strides=strides, dilation_rate=dilation_rate,
          padding='same' if self._padding is None else 'valid',
          use_bias=use_bias, kernel_initializer=kernel_initializer,
          bias_initializer=bias_initializer, name='_conv')
    elif conv_type == '1d':
      if strides != 1 or dilation_rate != 1:
        raise ValueError('1d ConvBNAct supports strides=1, dilation_rate=1 only, '
                         f'got {strides}, {dilation_rate}.')
      self._conv = checkpoint_naming.Conv1D(
          filters, kernel_size, padding='same', use_bias=use_bias,
          kernel_initializer=kernel_initializer,
          bias_initializer=bias_initializer, name='_conv')
    else:
      raise ValueError(f"conv_type must be '1d' or '2d', got {conv_type!r}.")
    if use_bn:
      self._batch_norm = normalization.make_batch_norm(
          name='_batch_norm', gamma_initializer=bn_gamma_initializer,
          **_bn_kwargs(self))

  def _padded_shape(self, input_shape):
    if self._padding is None:
      return input_shape
    pad = sum(self._padding)
    return (input_shape[0],
            *[None if size is None else size + pad for size in input_shape[1:3]],
            input_shape[3])

  def build(self, input_shape):
    self._conv.build(self._padded_shape(input_shape))
    if self.use_bn:
      self._batch_norm.build(self.compute_output_shape(input_shape))
    self.built = True

  def call(self, inputs, training=False):
    x = self._conv_without_padding_taps(inputs)
    if x is None:
      x = self._conv(inputs if self._padding is None else
                     tf.pad(inputs, [[0, 0], self._padding, self._padding, [0, 0]]))
    if self.use_bn:
      x = self._batch_norm(x, training=training)
    return self._activation_fn(x)

  def _conv_without_padding_taps(self, x):
    """The dilated 'same' conv without the kernel taps that only ever meet padding.

    Along a spatial axis no longer than the dilation rate r, the taps at offsets
    +-r, +-2r, ... fall on the zero padding for every output position, so only
    the centre row (column) of the kernel contributes. Dropping the others gives
    the same output with less work: DeepLab2's ASPP rates (6, 12, 18) on a
    small OS32 map (e.g. 3 x 5 for 65 x 129 crops) become 1x1 convs instead of
    padding every map to 18 x 18 blocks. Returns None when nothing can be
    dropped (or the spatial size is unknown at trace time); the checkpointed
    kernel is unchanged either way.
    """
    rate = self.dilation_rate
    if (self.conv_type != '2d' or self._padding is not None or rate == 1 or
        self.kernel_size % 2 == 0):  # An even kernel pads unevenly: no centre tap.
      return None
    height, width = x.shape[1], x.shape[2]
    rows_dropped = height is not None and height <= rate
    cols_dropped = width is not None and width <= rate
    if not (rows_dropped or cols_dropped):
      return None
    centre = (self.kernel_size - 1) // 2
    kernel = tf.convert_to_tensor(self._conv.kernel)  # [k, k, Cin, Cout]
    kernel = kernel[centre:centre + 1] if rows_dropped else kernel
    kernel = kernel[:, centre:centre + 1] if cols_dropped else kernel
    x = tf.nn.convolution(x, tf.cast(kernel, x.dtype), padding='SAME',
                          dilations=(1 if rows_dropped else rate,
                                     1 if cols_dropped else rate))
    if self.use_bias:
      x = tf.nn.bias_add(x, tf.cast(tf.convert_to_tensor(self._conv.bias), x.dtype))
    return x

  def compute_output_shape(self, input_shape):
    return self._conv.compute_output_shape(self._padded_shape(input_shape))

  def get_config(self):
    config = super().get_config()
    config.update({
        'filters': self.filters, 'kernel_size': self.kernel_size,
        'strides': self.strides, 'dilation_rate': self.dilation_rate,
        'conv_type': self.conv_type, 'use_bias': self.use_bias,
        'use_bn': self.use_bn, 'activation': self.activation,
        'bn_gamma_initializer': self.bn_gamma_initializer,
        'bias_initializer': self.bias_initializer,
        'kernel_initializer': self.kernel_initializer,
        'bn_momentum': self.bn_momentum, 'bn_epsilon': self.bn_epsilon,
        'use_sync_batchnorm': self.use_sync_batchnorm,
    })
    return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class DepthwiseConvBNAct(keras.layers.Layer):
  """Depthwise conv -> BN -> activation; sublayers `_depthwise_conv`, `_batch_norm`.

  Args:
    kernel_size: depthwise kernel size.
    activation: 'none', 'relu' or 'gelu'.
    bn_momentum, bn_epsilon, use_sync_batchnorm: BN options.
  """

  def __init__(self, *, kernel_size: int = 5, activation: str = 'none',
               bn_momentum: float = 0.99, bn_epsilon: float = 1e-3,
               use_sync_batchnorm: bool = False, **kwargs):
    super().__init__(**kwargs)
    self.kernel_size = kernel_size
    self.activation = activation
    self.bn_momentum = bn_momentum
    self.bn_epsilon = bn_epsilon
    self.use_sync_batchnorm = use_sync_batchnorm
    self._activation_fn = get_activation(activation)
    self._depthwise_conv = checkpoint_naming.DepthwiseConv2D(
        kernel_size, padding='same', use_bias=False,
        depthwise_initializer='he_normal', name='_depthwise_conv')
    self._batch_norm = normalization.make_batch_norm(
        name='_batch_norm', **_bn_kwargs(self))

  def build(self, input_shape):
    self._depthwise_conv.build(input_shape)
    self._batch_norm.build(input_shape)
    self.built = True

  def call(self, inputs, training=False):
    x = self._batch_norm(self._depthwise_conv(inputs), training=training)
    return self._activation_fn(x)

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self):
    config = super().get_config()
    config.update({
        'kernel_size': self.kernel_size, 'activation': self.activation,
        'bn_momentum': self.bn_momentum, 'bn_epsilon': self.bn_epsilon,
        'use_sync_batchnorm': self.use_sync_batchnorm,
    })
    return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class DepthwiseSeparableConvBNAct(keras.layers.Layer):
  """Depthwise (k x k) + BN + act, then pointwise 1x1 + BN + act.

  Sublayers `_depthwise` and `_pointwise` (DeepLab2 names).

  Args:
    filters: output channels of the pointwise conv.
    kernel_size: depthwise kernel size.
    activation: activation after both BNs.
    bn_momentum, bn_epsilon, use_sync_batchnorm: BN options.

  Input [B, H, W, Cin]; output [B, H, W, filters].
  """

  def __init__(self, *, filters: int, kernel_size: int = 5,
               activation: str = 'gelu', bn_momentum: float = 0.99,
               bn_epsilon: float = 1e-3, use_sync_batchnorm: bool = False,
               **kwargs):
    super().__init__(**kwargs)
    self.filters = filters
    self.kernel_size = kernel_size
    self.activation = activation
    self.bn_momentum = bn_momentum
    self.bn_epsilon = bn_epsilon
    self.use_sync_batchnorm = use_sync_batchnorm
    self._depthwise = DepthwiseConvBNAct(
        kernel_size=kernel_size, activation=activation, name='_depthwise',
        **_layer_bn_kwargs(self))
    self._pointwise = ConvBNAct(
        filters=filters, kernel_size=1, activation=activation,
        name='_pointwise', **_layer_bn_kwargs(self))

  def build(self, input_shape):
    self._depthwise.build(input_shape)
    self._pointwise.build(input_shape)
    self.built = True

  def call(self, inputs, training=False):
    return self._pointwise(self._depthwise(inputs, training=training),
                           training=training)

  def compute_output_shape(self, input_shape):
    return tuple(input_shape[:-1]) + (self.filters,)

  def get_config(self):
    config = super().get_config()
    config.update({
        'filters': self.filters, 'kernel_size': self.kernel_size,
        'activation': self.activation, 'bn_momentum': self.bn_momentum,
        'bn_epsilon': self.bn_epsilon,
        'use_sync_batchnorm': self.use_sync_batchnorm,
    })
    return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SeparableConvBlock(keras.layers.Layer):
  """One depthwise-separable conv held as `_conv1_bn_act` (DeepLab2's conv block).

  Used by the pixel-space head (`conv_block`), the semantic fusion convs and the
  semantic head.

  Args: as `DepthwiseSeparableConvBNAct`.
  """

  def __init__(self, *, filters: int, kernel_size: int = 5,
               activation: str = 'gelu', bn_momentum: float = 0.99,
               bn_epsilon: float = 1e-3, use_sync_batchnorm: bool = False,
               **kwargs):
    super().__init__(**kwargs)
    self.filters = filters
    self.kernel_size = kernel_size
    self.activation = activation
    self.bn_momentum = bn_momentum
    self.bn_epsilon = bn_epsilon
    self.use_sync_batchnorm = use_sync_batchnorm
    self._conv1_bn_act = DepthwiseSeparableConvBNAct(
        filters=filters, kernel_size=kernel_size, activation=activation,
        name='_conv1_bn_act', **_layer_bn_kwargs(self))

  def build(self, input_shape):
    self._conv1_bn_act.build(input_shape)
    self.built = True

  def call(self, inputs, training=False):
    return self._conv1_bn_act(inputs, training=training)

  def compute_output_shape(self, input_shape):
    return tuple(input_shape[:-1]) + (self.filters,)

  def get_config(self):
    config = super().get_config()
    config.update({
        'filters': self.filters, 'kernel_size': self.kernel_size,
        'activation': self.activation, 'bn_momentum': self.bn_momentum,
        'bn_epsilon': self.bn_epsilon,
        'use_sync_batchnorm': self.use_sync_batchnorm,
    })
    return config
