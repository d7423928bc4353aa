"""ImageNet initialisation of the pixel encoder from Keras Applications weights.

kMaX-DeepLab (Yu et al., ECCV 2022, Sec. 4) and Video-kMaX start from an ImageNet
ResNet-50 or ConvNeXt. A user who has the Keras Applications weights (the released
`resnet50_weights_tf_dim_ordering_tf_kernels[_notop].h5` or
`convnext_{tiny,small,base,large}[_notop].h5`, or a `.weights.h5` written by
`keras.applications.ResNet50(...)` / `ConvNeXtTiny(...)` `.save_weights`) loads
them here. The file is read by Keras itself into the application model built
with `weights=None`; its layers are then mapped onto our encoder by name
(`resnet50_name_map`, `convnext_name_map`), strictly: an encoder variable
without a Keras weight, a Keras weight left unused (other than the classifier,
the final LayerNorm and the input normalisation, which the encoder does not
have) or a shape mismatch raises a `ValueError` listing all of them.

ResNet-50. Keras's ResNet50 is ResNet v1: stem, 3x3/2 max pool, stride on the
first 1x1 conv of a downsampling block. DeepLab2's kMaX ResNet-50 (our
default `resnet50`, `ResNet(layout='deeplab2')`) has no max pool and strides
the 3x3 conv of the first block of every stage, stage 2 included. Both layouts
have the same variables, so the weights load into either; the backbone name
`resnet50_keras` (`ResNet(layout='keras')`) runs them in the layout they were
trained in (and then reproduces Keras's features, tested), `resnet50` runs
them in DeepLab2's layout, i.e. as an initialisation only (DeepLab2 starts
kMaX from ImageNet weights of its own layout; those come in through
`initial_checkpoint`).
- Every kernel, BN gamma/beta/moving_variance maps one to one with the same
  shape: stem `conv1_*` -> `_stem`; `conv{s}_block{b}_{1,2,3}_*` ->
  `_stage{s}/_block{b}/_conv1_bn_act`, `_conv2_bn_act`, `_conv3_bn`;
  `conv{s}_block1_0_*` (projection shortcut) -> `_stage{s}/_block1/_shortcut`.
- Keras's convs carry a bias followed by BN; ours have none. BN(conv + b) at
  inference equals BN'(conv) with `moving_mean' = moving_mean - b`, so the bias is
  folded into the moving mean (exact with moving statistics; with batch
  statistics the bias cancels anyway).
- Keras's BN epsilon is 1.001e-5, ours `bn_epsilon` (1e-3 by default). With
  equal epsilons and `layout='keras'`, the 'res1'..'res5' endpoints reproduce
  Keras's `conv1_relu` and `conv{2..5}_block{last}_out` (tested).

ConvNeXt-T/S/B/L. Every weight maps one to one (`convnext_name_map`): stem conv
and LayerNorm, the downsampling LayerNorm + 2x2 conv before stages 3..5, and per
block the 7x7 depthwise conv (a grouped-conv kernel [7, 7, 1, C] in Keras and in
DeepLab2's layout alike), LayerNorm, the two pointwise Dense layers and the layer
scale (Keras [C], DeepLab2's layout [1, 1, 1, C]). Built with
`zero_padding_for_downstream=False` (plain 'valid' convs, as Keras) and H, W
multiples of 32, `stage2`..`stage5` equal the outputs of Keras's last block of
each stage (tested) for the same normalised input; the kMaX default adds
DeepLab2's zero padding, which shifts the patch grid.

Input normalisation. Keras ConvNeXt normalises raw [0, 255] pixels inside the
model, z = (x / 255 - mean) / std with ImageNet mean (0.485, 0.456, 0.406) and
std (0.229, 0.224, 0.225); the encoder weights expect z. ClipKMaX feeds every
encoder u = x / 127.5 - 1, as DeepLab2's kMaX-DeepLab does for all its
backbones; per channel z = a * u + b with a = 1 / (2 std) = (2.18, 2.23, 2.22)
and b = (0.5 - mean) / std = (0.07, 0.20, 0.42). The weights are loaded as they
are (not folded into the stem): the features equal Keras's for the same z, and
fine-tuning absorbs the difference in input scale and offset. Keras ResNet50
likewise expects its own 'caffe' preprocessing (BGR, mean subtracted, no
scaling), which u differs from more; its BN statistics are those of that input.
"""

from typing import Callable, Dict, List, Sequence, Tuple

import keras
import numpy as np
import tensorflow as tf

from deeplab2_vkmax.model import backbones
from deeplab2_vkmax.model import checkpoint_utils
from deeplab2_vkmax.model.pixel_encoder import convnext

_RESNET50_BLOCK_COUNTS = (3, 4, 6, 3)
_BN_WEIGHTS = ('gamma', 'beta', 'moving_mean', 'moving_variance')
# Our ConvBNAct sublayer of Keras's conv index within a bottleneck block.
_BLOCK_CONVS = {'1': '_conv1_bn_act', '2': '_conv2_bn_act', '3': '_conv3_bn',
                '0': '_shortcut'}


def _assign(ours: Dict[str, tf.Variable], values: Dict[str, np.ndarray]) -> int:
  """Assigns every matched value to its variable; returns how many."""
  for key, value in values.items():
    ours[key].assign(tf.constant(value, dtype=ours[key].dtype))
  return len(values)


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


def _keras_application(constructor: Callable[..., keras.Model], path: str,
                       description: str) -> keras.Model:
  """`constructor(weights=None)` with the weights file `path` loaded."""
  errors = []
  for include_top in (False, True):
    model = constructor(weights=None, include_top=include_top)
    try:
      model.load_weights(path)
      return model
    except ValueError as error:  # The file has (or lacks) the classifier.
      errors.append(f'include_top={include_top}: {error}')
  raise ValueError(f'"{path}" is not a Keras Applications {description} weights '
                   'file:\n' + '\n'.join(errors))


def _keras_resnet50(path: str) -> keras.Model:
  """keras.applications.ResNet50 with the weights file `path` loaded."""
  return _keras_application(keras.applications.ResNet50, path, 'ResNet50')


def load_keras_resnet50_weights(encoder: keras.layers.Layer, path: str) -> int:
  """Assigns a Keras Applications ResNet50 weights file to a built `ResNet`.

  Args:
    encoder: a built `resnet.ResNet` with width multiplier 1 and block counts
      (3, 4, 6, 3), either layout (see the module docstring).
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
  return _assign(ours, values)


# BackboneOptions.name -> Keras Applications ConvNeXt constructor name.
_KERAS_CONVNEXT = {name: b.keras_application for name, b in backbones.BACKBONES.items()
                   if b.family == 'convnext'}
def convnext_name_map(keras_name: str, block_counts: Sequence[int]
                      ) -> Dict[str, Tuple[str, str]]:
  """Our ConvNeXt key -> (Keras layer, weight name); see module doc.

  Args:
    keras_name: the Keras model name, e.g. 'convnext_tiny' (layer prefix).
    block_counts: blocks per stage 2..5.

  Keys are relative to the encoder, in DeepLab2's layout (e.g.
  'stages/1/layer_with_weights-0/depthwise_conv/kernel').
  """
  name_map = {}
  def add(ours, theirs, weights):
    for weight in weights:
      name_map[f'{ours}/{weight}'] = (theirs, weight)
  conv, norm = ('kernel', 'bias'), ('gamma', 'beta')
  add('downsample_layers/0/layer_with_weights-0', f'{keras_name}_stem_conv', conv)
  add('downsample_layers/0/layer_with_weights-1', f'{keras_name}_stem_layernorm', norm)
  for stage, count in enumerate(block_counts):
    if stage > 0:
      add(f'downsample_layers/{stage}/layer_with_weights-0',
          f'{keras_name}_downsampling_layernorm_{stage - 1}', norm)
      add(f'downsample_layers/{stage}/layer_with_weights-1',
          f'{keras_name}_downsampling_conv_{stage - 1}', conv)
    for block in range(count):
      ours = f'stages/{stage}/layer_with_weights-{block}'
      theirs = f'{keras_name}_stage_{stage}_block_{block}'
      add(f'{ours}/depthwise_conv', f'{theirs}_depthwise_conv', conv)
      add(f'{ours}/norm', f'{theirs}_layernorm', norm)
      for index in (1, 2):
        add(f'{ours}/pointwise_conv{index}', f'{theirs}_pointwise_conv_{index}', conv)
      name_map[f'{ours}/layer_scale'] = (f'{theirs}_layer_scale', 'gamma')
  return name_map


def _leaf_layers(model: keras.Model) -> Dict[str, keras.layers.Layer]:
  """Name -> layer of every layer holding no layers (nested Sequentials opened)."""
  found = {}
  stack = list(model.layers)
  while stack:
    layer = stack.pop()
    if getattr(layer, 'layers', None):
      stack.extend(layer.layers)
    else:
      found[layer.name] = layer
  return found


def load_keras_convnext_weights(encoder: keras.layers.Layer, path: str,
                                backbone_name: str) -> int:
  """Assigns a Keras Applications ConvNeXt weights file to a built `ConvNeXt`.

  Args:
    encoder: a built `convnext.ConvNeXt` of the variant `backbone_name` (width
      and depth multipliers 1).
    path: the weights file (`.h5` or `.weights.h5`, with or without the top).
    backbone_name: 'convnext_tiny', 'convnext_small', 'convnext_base' or
      'convnext_large'.

  Returns:
    The number of encoder variables assigned (all of them).

  Raises:
    ValueError: an unknown variant, a file that is not that variant's weights,
      or an encoder that does not fit them; the message lists every encoder
      variable without a Keras weight, every Keras weight left unused and
      every shape mismatch.
  """
  if backbone_name not in _KERAS_CONVNEXT:
    raise ValueError(f'backbone_name must be one of {sorted(_KERAS_CONVNEXT)}, '
                     f'got "{backbone_name}".')
  if not isinstance(encoder, convnext.ConvNeXt):
    raise ValueError(f'{backbone_name} weights need a convnext.ConvNeXt encoder, '
                     f'got {type(encoder).__name__}.')
  constructor = getattr(keras.applications, _KERAS_CONVNEXT[backbone_name])
  keras_model = _keras_application(constructor, path,
                                   _KERAS_CONVNEXT[backbone_name])
  layers = _leaf_layers(keras_model)
  # Not part of the encoder: the classifier head, the final LayerNorm (the
  # unnamed last layer without the top) and the input normalisation.
  ignored = {f'{keras_model.name}_head_layernorm', f'{keras_model.name}_head_dense',
             f'{keras_model.name}_prestem_normalization'}
  if isinstance(keras_model.layers[-1], keras.layers.LayerNormalization):
    ignored.add(keras_model.layers[-1].name)
  ours = checkpoint_utils.checkpoint_variables({'encoder': encoder})
  ours = {key.split('/', 1)[1]: variable for key, variable in ours.items()}
  name_map = convnext_name_map(keras_model.name, encoder.stage_block_counts)
  unmapped = sorted(set(ours) - set(name_map))
  absent, mismatched, values, used = [], [], {}, set()
  for key, (layer_name, weight_name) in name_map.items():
    layer = layers.get(layer_name)
    if key not in ours or layer is None:
      absent.append(key if key not in ours else f'{key} (Keras has no {layer_name})')
      continue
    weight = getattr(layer, weight_name)
    used.add(id(weight))
    value = np.asarray(weight.numpy())
    if key.endswith('layer_scale'):
      value = value.reshape((1, 1, 1, -1))  # Keras [C] -> DeepLab2's [1, 1, 1, C].
    if tuple(value.shape) != tuple(ours[key].shape):
      mismatched.append(f'{key}: ours {tuple(ours[key].shape)}, Keras '
                        f'{layer_name}.{weight_name} {value.shape}')
    values[key] = value
  unused = sorted(weight.path for name, layer in layers.items()
                  if name not in ignored for weight in layer.weights
                  if id(weight) not in used)
  if unmapped or absent or unused or mismatched:
    raise ValueError(
        f'the encoder is not a {backbone_name} that Keras '
        f'{_KERAS_CONVNEXT[backbone_name]} weights fit (width and depth '
        'multipliers 1.0, its own block counts):\n'
        f'encoder variables with no Keras weight: {unmapped}\n'
        f'mapped names the encoder or the Keras model lacks: {sorted(absent)}\n'
        f'Keras weights left unused: {unused}\n'
        f'shape mismatches: {mismatched}')
  return _assign(ours, values)


def _convnext_loader(backbone_name: str) -> Callable[[keras.layers.Layer, str], int]:
  def load(encoder, path):
    return load_keras_convnext_weights(encoder, path, backbone_name)
  return load


# BackboneOptions.name -> loader of its `pretrained_weights` file.
_LOADERS: Dict[str, Callable[[keras.layers.Layer, str], int]] = {
    **{name: load_keras_resnet50_weights for name, b in backbones.BACKBONES.items()
       if b.keras_application == 'ResNet50'},
    **{name: _convnext_loader(name) for name in _KERAS_CONVNEXT},
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
