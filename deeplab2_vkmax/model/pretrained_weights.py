"""ImageNet initialisation of the pixel encoder from Keras Applications weights.

kMaX-DeepLab (Yu et al., ECCV 2022, Sec. 4) and Video-kMaX start from an ImageNet
ResNet-50. A user who has the Keras Applications ResNet50 weights (the released
`resnet50_weights_tf_dim_ordering_tf_kernels[_notop].h5`, or a `.weights.h5`
written by `keras.applications.ResNet50(...).save_weights`) loads them here. The
file is read by Keras itself into `keras.applications.ResNet50(weights=None)`;
its layers are then mapped onto our encoder by name (`resnet50_name_map`).

What maps, and what differs (`ResNet` is DeepLab2's kMaX variant, Keras's is the
original ResNet v1):
- Every kernel, BN gamma/beta/moving_variance maps one to one with the same
  shape: stem `conv1_*` -> `_stem`; `conv{s}_block{b}_{1,2,3}_*` ->
  `_stage{s}/_block{b}/_conv1_bn_act`, `_conv2_bn_act`, `_conv3_bn`;
  `conv{s}_block1_0_*` (projection shortcut) -> `_stage{s}/_block1/_shortcut`.
- Keras's convs carry a bias followed by BN; ours have none. BN(conv + b) at
  inference equals BN'(conv) with `moving_mean' = moving_mean - b`, so the bias is
  folded into the moving mean (exact with moving statistics; with batch
  statistics the bias cancels anyway).
- Keras strides the first 1x1 conv of a downsampling block, the kMaX variant the
  3x3 conv (ResNet "v1.5"): same shapes, slightly different function from
  stage 3 on, as when torchvision's v1.5 reuses v1 weights. Keras's BN epsilon
  is 1.001e-5, ours `bn_epsilon` (1e-3 by default). With equal epsilons, `stage1`
  and `stage2` reproduce Keras's `conv1_relu` and `conv2_block3_out` exactly
  (tested).
"""

from typing import Callable, Dict, List, Tuple

import keras
import numpy as np
import tensorflow as tf

from deeplab2_vkmax.model import checkpoint_utils

_RESNET50_BLOCK_COUNTS = (3, 4, 6, 3)
_BN_WEIGHTS = ('gamma', 'beta', 'moving_mean', 'moving_variance')
# Our ConvBNAct sublayer of Keras's conv index within a bottleneck block.
_BLOCK_CONVS = {'1': '_conv1_bn_act', '2': '_conv2_bn_act', '3': '_conv3_bn',
                '0': '_shortcut'}


def resnet50_name_map() -> Dict[str, Tuple[str, str]]:
  """Our encoder key -> (Keras ResNet50 layer, weight name); see module doc.

  Keys are relative to the encoder (e.g. '_stage3/_block1/_conv2_bn_act/_conv/kernel').
  """
  pairs = [('_stem', 'conv1')]
  for stage, count in enumerate(_RESNET50_BLOCK_COUNTS, start=2):
    for block in range(1, count + 1):
      for index, ours in _BLOCK_CONVS.items():
        if index == '0' and block != 1:
          continue
        pairs.append((f'_stage{stage}/_block{block}/{ours}',
                      f'conv{stage}_block{block}_{index}'))
  name_map = {}
  for ours, theirs in pairs:
    name_map[f'{ours}/_conv/kernel'] = (f'{theirs}_conv', 'kernel')
    for weight in _BN_WEIGHTS:
      name_map[f'{ours}/_batch_norm/{weight}'] = (f'{theirs}_bn', weight)
  return name_map


def _keras_resnet50(path: str) -> keras.Model:
  """keras.applications.ResNet50 with the weights file `path` loaded."""
  errors = []
  for include_top in (False, True):
    model = keras.applications.ResNet50(weights=None, include_top=include_top)
    try:
      model.load_weights(path)
      return model
    except ValueError as error:  # The file has (or lacks) the classifier.
      errors.append(f'include_top={include_top}: {error}')
  raise ValueError(f'"{path}" is not a Keras Applications ResNet50 weights file:\n'
                   + '\n'.join(errors))


def load_keras_resnet50_weights(encoder: keras.layers.Layer, path: str) -> int:
  """Assigns a Keras Applications ResNet50 weights file to a built `ResNet`.

  Args:
    encoder: a built `resnet.ResNet` with width multiplier 1 and block counts
      (3, 4, 6, 3).
    path: the weights file (`.h5` or `.weights.h5`, with or without the top).

  Returns:
    The number of encoder variables assigned (all of them).

  Raises:
    ValueError: the encoder is not a built ResNet-50, or a shape differs; the
      message lists every offending variable.
  """
  ours = checkpoint_utils.checkpoint_variables({'encoder': encoder})
  ours = {key.split('/', 1)[1]: variable for key, variable in ours.items()}
  name_map = resnet50_name_map()
  keras_model = _keras_resnet50(path)
  unmapped = sorted(set(ours) - set(name_map))
  absent = sorted(set(name_map) - set(ours))
  mismatched: List[str] = []
  values = {}
  for key, (layer_name, weight_name) in name_map.items():
    if key not in ours:
      continue
    layer = keras_model.get_layer(layer_name)
    value = np.asarray(getattr(layer, weight_name).numpy())
    if weight_name == 'moving_mean':
      conv = keras_model.get_layer(layer_name[:-len('_bn')] + '_conv')
      value = value - np.asarray(conv.bias.numpy())
    if tuple(value.shape) != tuple(ours[key].shape):
      mismatched.append(f'{key}: ours {tuple(ours[key].shape)}, Keras '
                        f'{layer_name}.{weight_name} {value.shape}')
    values[key] = value
  if unmapped or absent or mismatched:
    raise ValueError(
        'the encoder is not a ResNet-50 that Keras ResNet50 weights fit '
        '(width_multiplier 1.0, block_counts (3, 4, 6, 3)):\n'
        f'encoder variables with no Keras weight: {unmapped}\n'
        f'mapped names the encoder lacks: {absent}\n'
        f'shape mismatches: {mismatched}')
  for key, value in values.items():
    ours[key].assign(tf.constant(value, dtype=ours[key].dtype))
  return len(values)


# BackboneOptions.name -> loader of its `pretrained_weights` file.
_LOADERS: Dict[str, Callable[[keras.layers.Layer, str], int]] = {
    'resnet50': load_keras_resnet50_weights,
}


def load_pretrained_backbone(model: keras.Model, backbone_name: str,
                             path: str) -> int:
  """Loads `path` into `model.checkpoint_items['encoder']` (a built model).

  Args:
    model: a built `ClipKMaX`.
    backbone_name: `BackboneOptions.name`.
    path: the ImageNet weights file.

  Returns:
    The number of encoder variables assigned.

  Raises:
    ValueError: no loader for `backbone_name` (lists the valid names) or the
      file does not fit the encoder.
  """
  if backbone_name not in _LOADERS:
    raise ValueError(f'pretrained_weights: no loader for backbone "{backbone_name}"; '
                     f'valid backbones: {sorted(_LOADERS)}')
  return _LOADERS[backbone_name](model.checkpoint_items['encoder'], path)
