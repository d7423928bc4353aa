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

_PACKAGE = 'deeplab2_vkmax'


def _rename_children(children, renames):
  children = dict(children)
  for old, new in renames.items():
    if old in children:
      children[new] = children.pop(old)
  return children


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Conv1D(keras.layers.Conv1D):
  """`keras.layers.Conv1D` whose kernel is checkpointed as `kernel`."""

  def _trackable_children(self, save_type='checkpoint', **kwargs):
    return _rename_children(
        super()._trackable_children(save_type, **kwargs), {'_kernel': 'kernel'})


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Conv2D(keras.layers.Conv2D):
  """`keras.layers.Conv2D` whose kernel is checkpointed as `kernel`."""

  def _trackable_children(self, save_type='checkpoint', **kwargs):
    return _rename_children(
        super()._trackable_children(save_type, **kwargs), {'_kernel': 'kernel'})


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

  def __init__(self, layers: Sequence[keras.layers.Layer], **kwargs):
    super().__init__(**kwargs)
    self._length = len(layers)
    for index, layer in enumerate(layers):
      setattr(self, str(index), layer)

  def __getitem__(self, index: int) -> keras.layers.Layer:
    if index < 0:
      index += self._length
    if not 0 <= index < self._length:
      raise IndexError(f'index {index} out of range for {self._length} layers')
    return getattr(self, str(index))

  def __len__(self) -> int:
    return self._length

  def __iter__(self):
    return (self[i] for i in range(self._length))

  def build(self, input_shape=None):
    self.built = True

  def call(self, inputs):
    raise NotImplementedError('LayerList is a container; index it.')
