"""Every shipped config: its mode is consistent, and its model builds (tiny widths)."""

import copy
import pathlib

import numpy as np
import pytest
import tensorflow as tf

from deeplab2_vkmax import common
from deeplab2_vkmax import config as config_lib
from deeplab2_vkmax.data import dataset as dataset_lib
from deeplab2_vkmax import builder
from deeplab2_vkmax.model import clip_kmax

REPO = pathlib.Path(__file__).resolve().parents[2]
SHIPPED = sorted(p.relative_to(REPO / 'configs').as_posix()
                 for p in (REPO / 'configs').rglob('*.textproto'))
# The paper's rows (docs/model_zoo.md): data set -> backbones x modes that must ship.
_VIDEO_ROWS = {
    'kitti_step': ('online', 'near_online'), 'vipseg': ('online', 'near_online'),
    'vspw': ('online',)}
_BACKBONES = ('r50', 'axial_r50_b1', 'convnext_large')


def _load(name):
  return config_lib.load_experiment_config(str(REPO / 'configs' / name))


def test_every_paper_row_ships():
  for dataset, modes in _VIDEO_ROWS.items():
    for mode in modes:
      for backbone in _BACKBONES:
        suffix = '_online' if mode == 'online' else ''
        assert f'{dataset}/clip_kmax_{backbone}{suffix}.textproto' in SHIPPED
  for option in ('standard', 'latent_memory', 'kmeans'):
    assert f'kitti_step/table4_{option}.textproto' in SHIPPED
  for backbone in ('r50', 'axial_r50', 'convnext_large'):
    assert f'coco/kmax_{backbone}.textproto' in SHIPPED
    assert f'cityscapes/kmax_{backbone}.textproto' in SHIPPED
  assert 'model_zoo.md' in {p.name for p in (REPO / 'docs').iterdir()}
  zoo = (REPO / 'docs' / 'model_zoo.md').read_text()
  missing = [name for name in SHIPPED if f'configs/{name}' not in zoo]
  assert not missing


@pytest.mark.parametrize('name', SHIPPED)
def test_mode_and_association_follow_the_clip_length(name):
  config = _load(name)
  train, evaluation = config.train_dataset_options, config.eval_dataset_options
  association = config.evaluator_options.association
  descriptor = dataset_lib.get_dataset_descriptor(evaluation.dataset)
  assert train.clip_length == evaluation.clip_length  # Trained as evaluated.
  online = evaluation.clip_length == 1
  if descriptor.is_video_dataset and not descriptor.thing_class_ids:
    assert association.memory_type == 'none'  # Video semantic: nothing to track.
  if descriptor.is_video_dataset:
    assert association.use_stitching == (not online), name  # Paper Sec. 3.3.
  if name.endswith('_online.textproto'):
    assert online
  mode_words = {'online': 'online,', 'near_online': 'near-online,'}
  header = (REPO / 'configs' / name).read_text().split('\n\n')[0]
  if name.startswith(tuple(_VIDEO_ROWS)) and 'table4' not in name:
    assert mode_words['online' if online else 'near_online'] in header


def _tiny_widths(config):
  """The config with small widths; every option that shapes the model is kept."""
  config = copy.deepcopy(config)
  config.model_options.backbone.width_multiplier = 0.125
  del config.model_options.backbone.block_counts[:]
  config.model_options.backbone.block_counts.extend([1, 1, 1, 1])
  kmax = config.model_options.clip_kmax
  del kmax.pixel_decoder_block_counts[:]
  kmax.pixel_decoder_block_counts.extend([1, 1, 1, 1])
  del kmax.transformer_decoder_block_counts[:]
  kmax.transformer_decoder_block_counts.extend([1, 1, 1])
  kmax.transformer_channels, kmax.transformer_num_heads = 32, 2
  kmax.transformer_ffn_channels = 64
  kmax.pixel_space_head.head_channels, kmax.pixel_space_head.output_channels = 32, 16
  kmax.auxiliary_semantic_head.head_channels = 16
  kmax.auxiliary_semantic_head.aspp_channels = 16
  kmax.auxiliary_semantic_head.decoder_channels = 16
  kmax.pixel_decoder_os2_width = 8
  for low_level in kmax.auxiliary_low_level:
    low_level.channels_project = 8
  return config


def _distinct_models():
  """One shipped config per distinct (model options, data set, T): configs that
  differ only in data paths, schedules, association, the files they start from
  or drop-path rates (inactive at inference) build the same model."""
  seen = {}
  for name in SHIPPED:
    model = _load(name).model_options
    model.ClearField('initial_checkpoint')
    model.backbone.ClearField('pretrained_weights')
    model.backbone.ClearField('drop_path_keep_prob')
    model.clip_kmax.ClearField('pixel_decoder_drop_path_keep_prob')
    model.clip_kmax.ClearField('transformer_decoder_drop_path_keep_prob')
    config = _load(name)
    key = (model.SerializeToString(deterministic=True),
           config.train_dataset_options.dataset, config.train_dataset_options.clip_length)
    seen.setdefault(key, name)
  return sorted(seen.values())


def _tiered(names):
  """The first config of each (backbone, cross-attention) in the fast tier, the
  other distinct models (about 2 s each) in the slow tier."""
  first = {}
  for name in names:
    model = _load(name).model_options
    first.setdefault((model.backbone.name, model.clip_kmax.transformer_cross_attention), name)
  return [name if name in first.values() else pytest.param(name, marks=pytest.mark.slow)
          for name in names]


@pytest.mark.parametrize('name', _tiered(_distinct_models()))
def test_config_builds_its_model_at_a_tiny_input(name):
  config = _load(name)
  descriptor = dataset_lib.get_dataset_descriptor(config.train_dataset_options.dataset)
  model = builder.build_model(_tiny_widths(config), descriptor)
  frames = config.train_dataset_options.clip_length
  outputs = model(tf.zeros([1, frames, 33, 33, 3]), training=False)
  kmax = config.model_options.clip_kmax
  stride = kmax.decoder_output_stride
  assert outputs[common.PRED_PIXEL_SPACE_MASK_LOGITS].shape == (
      1, frames, 32 // stride + 1, 32 // stride + 1, kmax.num_mask_slots)
  assert outputs[common.PRED_TRANSFORMER_CLASS_LOGITS].shape == (
      1, kmax.num_mask_slots, descriptor.num_classes + 1)
  assert model.backbone_name == config.model_options.backbone.name
  assert model.transformer_cross_attention == kmax.transformer_cross_attention


@pytest.mark.slow  # A full-size ConvNeXt-L encoder (196 M parameters).
def test_convnext_large_encoder_has_the_published_size():
  import keras  # pylint: disable=g-import-not-at-top
  encoder = clip_kmax.ENCODERS['convnext_large'](
      1.0, None, 1.0, dict(bn_momentum=0.99, bn_epsilon=1e-3, use_sync_batchnorm=False))
  encoder(tf.zeros([1, 65, 65, 3]))
  ours = sum(int(np.prod(v.shape)) for v in encoder.weights)
  reference = keras.applications.ConvNeXtLarge(
      include_top=False, weights=None, input_shape=(64, 64, 3), include_preprocessing=False)
  # Keras's ConvNeXt-L ends with a LayerNorm over its 1536 channels (gamma, beta)
  # that DeepLab2's kMaX encoder does not have.
  assert ours == reference.count_params() - 2 * 1536
