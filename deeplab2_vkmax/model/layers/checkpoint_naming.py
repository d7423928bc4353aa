"""Keras 3 layers whose TF checkpoint keys follow DeepLab2's names.

Keras 3 stores a convolution kernel in the attribute `_kernel` (for LoRA), so a
`tf.train.Checkpoint` records it as `.../_conv/_kernel`, and a depthwise kernel as
`kernel`; DeepLab2 (Keras 2) checkpoints have `_conv/kernel` and
`_depthwise_conv/depthwise_kernel`. Keras 3 also wraps a Python list of layers in a
tracker that `tf.train.Checkpoint` does not follow, so its variables would be silently
left out of checkpoints. The classes here fix both, so that
`tf.train.Checkpoint(**model.checkpoint_items)` yields the keys listed in
`tests/model/testdata/deeplab2_kmax_r50_checkpoint_keys.txt`.
"""

from typing import Sequence

import keras
import tensorflow as tf

_PACKAGE = 'deeplab2_vkmax'


def _rename_children(children, renames):
  children = dict(children)
  for old, new in renames.items():
    if old in children:
      children[new] = children.pop(old)
  return children


class _KernelNamedKernel:
  """Mixin: Keras 3 keeps the kernel as `_kernel`; checkpoint it as `kernel`."""

  def _trackable_children(self, save_type='checkpoint', **kwargs):
    return _rename_children(
        super()._trackable_children(save_type, **kwargs), {'_kernel': 'kernel'})


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Conv1D(_KernelNamedKernel, keras.layers.Conv1D):
  """`keras.layers.Conv1D` whose kernel is checkpointed as `kernel`."""


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Conv2D(_KernelNamedKernel, keras.layers.Conv2D):
  """`keras.layers.Conv2D` whose kernel is checkpointed as `kernel`."""


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Dense(_KernelNamedKernel, keras.layers.Dense):
  """`keras.layers.Dense` whose kernel is checkpointed as `kernel`."""


@keras.saving.register_keras_serializable(package=_PACKAGE)
class DepthwiseConv2D(keras.layers.DepthwiseConv2D):
  """`keras.layers.DepthwiseConv2D` checkpointed as `depthwise_kernel`."""

  def _trackable_children(self, save_type='checkpoint', **kwargs):
    return _rename_children(
        super()._trackable_children(save_type, **kwargs),
        {'kernel': 'depthwise_kernel', '_kernel': 'depthwise_kernel'})


class LayerList(keras.layers.Layer):
  """An indexable list of layers checkpointed as `<name>/0`, `<name>/1`, ...

  Internal container: it is rebuilt from its owner's config, so it has no
  `get_config` of its own.
  """

  # Checkpoint (attribute) name of the layer at an index.
  _KEY_FORMAT = '{}'

  def __init__(self, layers: Sequence[keras.layers.Layer], **kwargs):
    super().__init__(**kwargs)
    self._length = len(layers)
    for index, layer in enumerate(layers):
      setattr(self, self._KEY_FORMAT.format(index), layer)

  def __getitem__(self, index: int) -> keras.layers.Layer:
    if index < 0:
      index += self._length
    if not 0 <= index < self._length:
      raise IndexError(f'index {index} out of range for {self._length} layers')
    return getattr(self, self._KEY_FORMAT.format(index))

  def __len__(self) -> int:
    return self._length

  def __iter__(self):
    return (self[i] for i in range(self._length))

  def build(self, input_shape=None):
    self.built = True

  def call(self, inputs):
    raise NotImplementedError(f'{type(self).__name__} is a container; index it.')


@keras.saving.register_keras_serializable(package=_PACKAGE)
class GroupedDepthwiseConv2D(keras.layers.Layer):
  """Depthwise conv stored as a grouped `Conv2D(groups=C)`: kernel [k, k, 1, C].

  Keras 2 (DeepLab2's ConvNeXt) and Keras Applications' ConvNeXt keep the 7x7
  depthwise conv as a grouped Conv2D, checkpointed as `kernel` [k, k, 1, C] and
  `bias`. The same numbers run here through `tf.nn.depthwise_conv2d` (the
  kernel reshaped to [k, k, C, 1], the same memory order), which every TF CPU
  kernel supports, unlike grouped convolution. Stride 1, 'same' padding.

  Args:
    kernel_size: k.
    kernel_initializer: initialiser of the [k, k, 1, C] kernel.
  """

  def __init__(self, kernel_size: int, kernel_initializer='glorot_uniform', **kwargs):
    super().__init__(**kwargs)
    self.kernel_size = kernel_size
    self.kernel_initializer = keras.initializers.get(kernel_initializer)

  def build(self, input_shape):
    channels = int(input_shape[-1])
    self.kernel = self.add_weight(
        name='kernel', shape=(self.kernel_size, self.kernel_size, 1, channels),
        initializer=self.kernel_initializer)
    self.bias = self.add_weight(name='bias', shape=(channels,), initializer='zeros')
    self.built = True

  def call(self, inputs):
    kernel = tf.cast(self.kernel, inputs.dtype)
    kernel = tf.reshape(kernel, [self.kernel_size, self.kernel_size, -1, 1])
    outputs = tf.nn.depthwise_conv2d(inputs, kernel, strides=[1, 1, 1, 1],
                                     padding='SAME')
    return outputs + tf.cast(self.bias, inputs.dtype)

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self):
    config = super().get_config()
    config.update({'kernel_size': self.kernel_size,
                   'kernel_initializer': keras.initializers.serialize(
                       self.kernel_initializer)})
    return config


class SequentialSlots(LayerList):
  """Layers checkpointed as a Keras 2 `Sequential` names them.

  A Keras 2 Sequential tracks its sub-layers that own weights as
  `layer_with_weights-0`, `layer_with_weights-1`, ... (DeepLab2's ConvNeXt stem,
  downsampling blocks and stages). Internal container, indexed like a list.
  """

  _KEY_FORMAT = 'layer_with_weights-{}'
