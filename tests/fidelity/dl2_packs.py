"""DeepLab2 reference packs: seeded checkpoints, inputs and DeepLab2's own numbers.

`testdata/<pack>/` holds what running DeepLab2 produced (see each pack's README):
its checkpoint layout (`keys.txt`, `object_graph.pb`), the salt of the seeded
weights (`pack.json`), a fixed input and every output and intermediate endpoint
(`reference.npz`). This module writes the pack's checkpoint (values from the
documented seeding rule, so no DeepLab2 code is needed), builds our model from the
matching shipped config through the public builder, restores it with the public
restore API and returns our model's arrays under the pack's names.
"""

import json
import os
import zlib
from typing import Dict, Tuple

import numpy as np
import tensorflow as tf

from deeplab2_vkmax import common
from deeplab2_vkmax import config as config_lib
from deeplab2_vkmax.data import dataset as dataset_lib
from deeplab2_vkmax import builder
from deeplab2_vkmax.model import checkpoint_utils
from deeplab2_vkmax.model.layers import resize

TESTDATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'testdata')
_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pack -> our shipped config of the same DeepLab2 setting.
PACK_CONFIGS = {
    'cityscapes_r50': 'configs/cityscapes/kmax_r50.textproto',
    'coco_axial_r50': 'configs/coco/kmax_axial_r50.textproto',
    'coco_convnext_tiny': 'configs/coco/kmax_convnext_tiny.textproto',
}

# Measured tolerances of the packs' README (max|ours - ref| / max|ref|).
TOLERANCE_EARLY = 1e-5
TOLERANCE_LATE = 3e-4


def seeded_value(key: str, shape, salt: str) -> np.ndarray:
  """The pack's value of checkpoint `key` (the seeding rule of the packs' README)."""
  rng = np.random.RandomState(zlib.crc32(f'{salt}:{key}'.encode()) & 0x7FFFFFFF)
  shape = tuple(int(s) for s in shape)
  name = key.split('/.ATTRIBUTES')[0].rsplit('/', 1)[-1]
  if name in ('gamma', 'moving_variance', 'layer_scale'):
    value = rng.uniform(0.5, 1.5, shape)
  elif name in ('beta', 'moving_mean', 'bias'):
    value = rng.normal(0.0, 0.1, shape)
  elif name == 'depthwise_kernel':
    value = rng.normal(0.0, 1.0 / np.sqrt(max(1, int(np.prod(shape[:-2])))), shape)
  else:
    fan_in = int(np.prod(shape[:-1])) if len(shape) >= 2 else (shape[0] if shape else 1)
    value = rng.normal(0.0, 1.0 / np.sqrt(max(1, fan_in)), shape)
  return value.astype(np.float32)


def pack_facts(pack: str) -> dict:
  with open(os.path.join(TESTDATA, pack, 'pack.json')) as f:
    return json.load(f)


def write_checkpoint(pack: str, prefix: str) -> str:
  """Writes the pack's DeepLab2-layout checkpoint at `prefix`; returns it."""
  salt = pack_facts(pack)['salt']
  tensors = {}
  with open(os.path.join(TESTDATA, pack, 'keys.txt')) as f:
    for line in f:
      if line.strip():
        key, shape = line.rstrip('\n').split('\t')
        tensors[key] = seeded_value(key, json.loads(shape), salt)
  with open(os.path.join(TESTDATA, pack, 'object_graph.pb'), 'rb') as f:
    tensors['_CHECKPOINTABLE_OBJECT_GRAPH'] = f.read()
  names = sorted(tensors)
  tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names,
                    shape_and_slices=[''] * len(names),
                    tensors=[tf.constant(tensors[n]) for n in names])
  return prefix


def reference(pack: str) -> Dict[str, np.ndarray]:
  with np.load(os.path.join(TESTDATA, pack, 'reference.npz')) as arrays:
    return {key: arrays[key] for key in arrays.files}


def load_config(pack: str):
  """Our shipped config of the pack's setting, at the pack's input size."""
  config = config_lib.load_experiment_config(os.path.join(_REPO, PACK_CONFIGS[pack]))
  size = pack_facts(pack)['input_size']
  for options in (config.train_dataset_options, config.eval_dataset_options):
    del options.crop_size[:]
    options.crop_size.extend(size)
  return config


def restored_model(pack: str, workdir: str):
  """(config, descriptor, model) with the pack's checkpoint restored strictly."""
  config = load_config(pack)
  descriptor = dataset_lib.get_dataset_descriptor(
      config.train_dataset_options.dataset)
  model = builder.build_model(config, descriptor)
  height, width = pack_facts(pack)['input_size']
  model.build((None, 1, height, width, 3))
  prefix = write_checkpoint(pack, os.path.join(workdir, pack))
  if pack_facts(pack)['ignore_label'] == 0:
    # DeepLab2's COCO ids are ours + 1: its semantic head has a channel for the
    # ignore label 0 that ours has not. Everything else restores as is.
    checkpoint_utils.restore_checkpoint(model, prefix, skip=('semantic_last_layer',))
    reader = tf.train.load_checkpoint(prefix)
    layer = model.checkpoint_items['semantic_last_layer']
    suffix = '/.ATTRIBUTES/VARIABLE_VALUE'
    layer.kernel.assign(reader.get_tensor('semantic_last_layer/kernel' + suffix)[..., 1:])
    layer.bias.assign(reader.get_tensor('semantic_last_layer/bias' + suffix)[1:])
  else:
    checkpoint_utils.restore_checkpoint(model, prefix)
  return config, descriptor, model


def _per_frame(tensor):
  """[B, T, h, w, C] -> [B*T, h, w, C] (T = 1 here)."""
  shape = tf.shape(tensor)
  return tf.reshape(tensor, tf.concat([[-1], shape[2:]], axis=0))


def our_arrays(model, image: np.ndarray) -> Dict[str, np.ndarray]:
  """Our model's arrays under the pack's names, T = 1, inference.

  The final outputs come from `model(...)`; the endpoints from running its
  sub-layers on the same input, as `ClipKMaX.call` chains them.
  """
  clips = tf.constant(image[:, np.newaxis], tf.float32)  # [1, 1, H, W, 3]
  arrays = {}
  outputs = model(clips, training=False, auxiliary_outputs=True)
  for key in (common.PRED_PIXEL_SPACE_MASK_LOGITS,
              common.PRED_PIXEL_SPACE_NORMALIZED_FEATURE,
              common.PRED_SEMANTIC_LOGITS):
    if key in outputs:
      arrays[key] = _per_frame(outputs[key]).numpy()
  arrays['transformer_class_logits'] = outputs[
      common.PRED_TRANSFORMER_CLASS_LOGITS].numpy()

  frames = tf.constant(image, tf.float32) / 127.5 - 1.0
  endpoints = model._encoder(frames, training=False)  # pylint: disable=protected-access
  for name, value in endpoints.items():
    arrays[f'encoder/{name}'] = value.numpy()
  decoded = model._pixel_decoder(endpoints, training=False)  # pylint: disable=protected-access
  for name, value in decoded.items():
    arrays[f'pixel_decoder/{name}'] = value.numpy()

  transformer = model._transformer_decoder  # pylint: disable=protected-access
  centers = tf.convert_to_tensor(transformer.cluster_centers)
  arrays['transformer_decoder/cluster_centers_init'] = centers.numpy()
  inputs = [decoded[k] for k in ('decoder_stage1', 'decoder_stage2', 'decoder_stage3')]
  for index, feature_index in enumerate(transformer._feature_index):  # pylint: disable=protected-access
    centers, aux = transformer._kmax_decoder[index](  # pylint: disable=protected-access
        {'pixel_feature': inputs[feature_index], 'centers': centers}, training=False)
    arrays[f'transformer_decoder/block{index}/cluster_centers'] = centers.numpy()
    for key, value in aux.items():
      arrays[f'transformer_decoder/aux{index}/{key}'] = value.numpy()
  class_feature = transformer._class_embedding_projection(centers, training=False)  # pylint: disable=protected-access
  mask_feature = transformer._mask_embedding_projection(centers, training=False)  # pylint: disable=protected-access
  arrays['transformer_decoder/transformer_class_feature'] = class_feature.numpy()
  arrays['transformer_decoder/transformer_mask_feature'] = mask_feature.numpy()
  head = model._prediction_head  # pylint: disable=protected-access
  arrays['heads/pixel_space_feature'] = head._pixel_space_head(  # pylint: disable=protected-access
      decoded['decoder_output'], training=False).numpy()
  arrays['heads/transformer_mask_kernel'] = head._transformer_mask_head(  # pylint: disable=protected-access
      mask_feature, training=False).numpy()
  if getattr(model, '_semantic_decoder', None) is not None:
    arrays['heads/semantic_decoder_feature'] = model._semantic_decoder(  # pylint: disable=protected-access
        endpoints, training=False).numpy()
  return arrays


def relative_error(ours: np.ndarray, ref: np.ndarray) -> float:
  """max|ours - ref| / max|ref|, the packs' measure."""
  ours = np.asarray(ours, np.float64)
  ref = np.asarray(ref, np.float64)
  if ours.shape != ref.shape:
    raise AssertionError(f'shape {ours.shape} != reference {ref.shape}')
  return float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-30))


def tolerance(key: str) -> float:
  """The README's measured tolerance of array `key`."""
  late = ('block3', 'block4', 'block5', 'aux3', 'aux4', 'aux5',
          'transformer_class_feature', 'transformer_mask_feature',
          'transformer_mask_kernel')
  if any(part in key for part in late) or key in (
      'transformer_class_logits', 'pixel_space_mask_logits'):
    return TOLERANCE_LATE
  if key == 'semantic_scores':
    return 1e-5
  return TOLERANCE_EARLY


def argmax_agreement(ours: np.ndarray, ref: np.ndarray) -> float:
  return float(np.mean(np.argmax(ours, -1) == np.argmax(ref, -1)))


def compare(ours: Dict[str, np.ndarray], ref: Dict[str, np.ndarray],
            keys) -> Dict[str, Tuple[float, float]]:
  """key -> (relative error, tolerance) for the float arrays in `keys`."""
  return {key: (relative_error(ours[key], ref[key]), tolerance(key)) for key in keys}


def our_panoptic(config, descriptor, model_outputs, pack: str) -> np.ndarray:
  """Our post-processed panoptic map [1, H, W] in the pack's (DeepLab2's) encoding."""
  post_processor = builder.build_post_processor(config, descriptor)
  facts = pack_facts(pack)
  panoptic = post_processor(model_outputs, facts['input_size'])[common.PANOPTIC_PRED]
  panoptic = panoptic.numpy()[:, 0]  # T = 1.
  if facts['ignore_label'] == 0:
    # DeepLab2's COCO: ids are ours + 1, divisor 256, void = 0.
    semantic = panoptic // descriptor.panoptic_label_divisor
    instance = panoptic % descriptor.panoptic_label_divisor
    void = semantic == descriptor.ignore_label
    panoptic = np.where(void, 0, (semantic + 1) * facts['panoptic_label_divisor'] + instance)
  return panoptic


# ---------------------------------------------------------------------------
# The loss pack (testdata/loss_cityscapes_r50).

LOSS_PACK = 'loss_cityscapes_r50'
LOSS_SIZE = (33, 65)  # The loss resolution of the Cityscapes OS2 model.


def loss_pack():
  """(gt arrays, loss.json)."""
  with np.load(os.path.join(TESTDATA, LOSS_PACK, 'gt.npz')) as arrays:
    gt = {key: arrays[key] for key in arrays.files}
  with open(os.path.join(TESTDATA, LOSS_PACK, 'loss.json')) as f:
    values = json.load(f)
  return gt, values


def _unit_normalised(rng, shape):
  value = rng.normal(0.0, 1.0, shape)
  return value / np.linalg.norm(value, axis=-1, keepdims=True)


def synthetic_predictions(num_aux: int = 6):
  """The pack's `synthetic_predictions`, regenerated from its documented recipe."""
  rng = np.random.RandomState(2024)
  height, width = LOSS_SIZE
  outputs = []
  for _ in range(num_aux + 1):
    outputs.append({
        common.PRED_PIXEL_SPACE_MASK_LOGITS: rng.normal(0, 3, [1, height, width, 256]),
        common.PRED_TRANSFORMER_CLASS_LOGITS: rng.normal(0, 3, [1, 256, 20]),
        common.PRED_PIXEL_SPACE_NORMALIZED_FEATURE: _unit_normalised(
            rng, [1, height, width, 128]),
    })
  semantic = rng.normal(0, 3, [1, 3, 5, 19])
  return _as_y_pred(outputs, semantic)


def model_output_predictions():
  """The pack's `model_outputs`: the cityscapes_r50 arrays, aux resized (aligned)."""
  ref = reference('cityscapes_r50')
  outputs = [{key: ref[key] for key in (
      common.PRED_PIXEL_SPACE_MASK_LOGITS, common.PRED_TRANSFORMER_CLASS_LOGITS,
      common.PRED_PIXEL_SPACE_NORMALIZED_FEATURE)}]
  for index in range(6):
    aux = {}
    for key in (common.PRED_PIXEL_SPACE_MASK_LOGITS, common.PRED_TRANSFORMER_CLASS_LOGITS,
                common.PRED_PIXEL_SPACE_NORMALIZED_FEATURE):
      value = ref[f'transformer_decoder/aux{index}/{key}']
      if value.ndim == 4:
        value = resize.resize_bilinear(tf.constant(value), LOSS_SIZE).numpy()
      aux[key] = value
    outputs.append(aux)
  return _as_y_pred(outputs, ref['semantic_logits'])


def _as_y_pred(outputs, semantic):
  """Per-image arrays -> our y_pred (T = 1 tubes, float32 tensors)."""
  def tube(value):
    value = np.asarray(value, np.float32)
    return tf.constant(value[:, np.newaxis] if value.ndim == 4 else value)
  y_pred = {key: tube(value) for key, value in outputs[0].items()}
  y_pred[common.PRED_AUX_OUTPUTS] = tuple(
      {key: tube(value) for key, value in aux.items()} for aux in outputs[1:])
  y_pred[common.PRED_SEMANTIC_LOGITS] = tube(semantic)
  return y_pred


def deeplab2_assignment(loss, gt, case: str) -> tf.Tensor:
  """DeepLab2's stored matching of `case` as our [1, M, N] assignment.

  DeepLab2 numbers its ground-truth masks differently (thing ids, then stuff
  classes); each of its masks is mapped to ours through their shared pixels.
  """
  label = tf.constant(gt['gt/panoptic'][np.newaxis, np.newaxis])
  our_ids = loss.build_targets(label)['pixel_mask_id'].numpy().reshape(LOSS_SIZE)
  theirs = gt['loss_res/pixel_gt_mask_index']
  assignment = np.zeros((1, loss.num_mask_slots, loss.num_mask_slots), np.float32)
  for index, slot in zip(gt[f'{case}/match/gt_mask_index'], gt[f'{case}/match/slot']):
    ours = np.unique(our_ids[theirs == index])
    assert len(ours) == 1 and ours[0] >= 0, (index, ours)
    assignment[0, ours[0], slot] = 1.0
  return tf.constant(assignment)


def loss_terms(result) -> Dict[str, float]:
  """Our loss dict -> DeepLab2's term names (`<term>`, `aux_<i><term>`), floats."""
  terms = {}
  for key, value in result.items():
    output, _, term = key.partition('/')
    if term:  # 'main/<term>' -> '<term>', 'aux_<i>/<term>' -> 'aux_<i><term>'.
      terms[('' if output == 'main' else output) + term] = float(value.numpy()[0])
  terms[common.SEMANTIC_LOSS] = float(result[common.SEMANTIC_LOSS].numpy()[0])
  terms[common.TOTAL_LOSS] = float(result[common.TOTAL_LOSS].numpy()[0])
  return terms
