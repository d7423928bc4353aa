"""Tests for deeplab2_vkmax.model.checkpoint_utils."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from deeplab2_vkmax import builder
from deeplab2_vkmax.model import checkpoint_utils
from deeplab2_vkmax.model import clip_kmax
from deeplab2_vkmax.protos import config_pb2

_SUFFIX = '/.ATTRIBUTES/VARIABLE_VALUE'
_CLIP = tf.zeros([1, 1, 33, 65, 3])


def _write_deeplab2_style_checkpoint(directory, keys, seed=0):
  """Writes random values under `keys` with a tree of plain tf.Modules.

  No model code is involved: the attribute path of each tf.Variable is its key,
  which is how DeepLab2's Keras 2 layers end up in a checkpoint.

  Returns:
    (checkpoint prefix, {key without suffix: the stored numpy value}).
  """
  rng = np.random.default_rng(seed)
  roots = {}
  values = {}
  for key, shape in keys.items():
    if key.startswith(('global_step/', 'save_counter/')):
      continue
    parts = key[:-len(_SUFFIX)].split('/')
    parent = roots.setdefault(parts[0], tf.Module())
    for part in parts[1:-1]:
      if part not in vars(parent):
        setattr(parent, part, tf.Module())
      parent = getattr(parent, part)
    value = rng.standard_normal(shape).astype(np.float32)
    setattr(parent, parts[-1], tf.Variable(value))
    values[key[:-len(_SUFFIX)]] = value
  checkpoint = tf.train.Checkpoint(
      global_step=tf.Variable(123, dtype=tf.int64), **roots)
  return checkpoint.save(str(directory / 'ckpt')), values


def _values(model, skip=()):
  items = {k: v for k, v in model.checkpoint_items.items() if k not in skip}
  return {key: variable.numpy() for key, variable in
          checkpoint_utils.checkpoint_variables(items).items()}


@pytest.fixture(name='tiny_checkpoint', scope='module')
def tiny_checkpoint_fixture(tmp_path_factory):
  """(model with 3 classes, its checkpoint prefix)."""
  model = clip_kmax.ClipKMaX(**clip_kmax.tiny_model_kwargs(num_classes=3))
  model(_CLIP)
  for variable in model.variables:
    variable.assign(tf.random.normal(variable.shape, seed=7))
  checkpoint = tf.train.Checkpoint(
      global_step=tf.Variable(5, dtype=tf.int64), **model.checkpoint_items)
  return model, checkpoint.save(str(tmp_path_factory.mktemp('tiny') / 'ckpt'))


def _tiny(num_classes=3, **overrides):
  model = clip_kmax.ClipKMaX(**dict(clip_kmax.tiny_model_kwargs(num_classes),
                                    **overrides))
  model(_CLIP)
  return model


@pytest.mark.slow  # Slow tier: full-size build or a subprocess.
def test_r50_restores_every_variable_of_a_deeplab2_checkpoint(tmp_path, deeplab2_r50_keys):
  keys = deeplab2_r50_keys
  path, written = _write_deeplab2_style_checkpoint(tmp_path, keys)
  # The fake writer produced exactly DeepLab2's keys and shapes.
  written_keys = {name: shape for name, shape in tf.train.list_variables(path)
                  if name != '_CHECKPOINTABLE_OBJECT_GRAPH'}
  assert written_keys == keys

  model = clip_kmax.ClipKMaX(num_classes=19)
  model(tf.zeros([1, 1, 65, 129, 3]))
  before = {id(v): v.numpy() for v in model.variables}
  assert checkpoint_utils.restore_checkpoint(model, str(tmp_path)) == path

  # Every model variable changed, and re-saving the model (TensorFlow's own
  # naming, not checkpoint_utils') gives back every written value.
  unchanged = [v.path for v in model.variables
               if np.array_equal(v.numpy(), before[id(v)])]
  assert not unchanged
  resaved = tf.train.Checkpoint(**model.checkpoint_items).write(
      str(tmp_path / 'resaved'))
  reader = tf.train.load_checkpoint(resaved)
  resaved_keys = {name[:-len(_SUFFIX)] for name, _ in tf.train.list_variables(resaved)
                  if name.endswith(_SUFFIX)}
  assert resaved_keys == set(written)
  for key, value in written.items():
    np.testing.assert_array_equal(reader.get_tensor(key + _SUFFIX), value,
                                  err_msg=key)
  assert len(model.variables) == len(written)


def test_missing_and_unused_keys_are_listed(tmp_path):
  model = _tiny()
  variables = checkpoint_utils.checkpoint_variables(model.checkpoint_items)
  keys = {key + _SUFFIX: list(v.shape) for key, v in variables.items()}
  dropped = 'encoder/_stem/_conv/kernel'
  del keys[dropped + _SUFFIX]
  keys['encoder/_stem/_conv/bias' + _SUFFIX] = [3]
  keys['backbone/extra' + _SUFFIX] = [2]
  _write_deeplab2_style_checkpoint(tmp_path, keys)
  with pytest.raises(ValueError) as error:
    checkpoint_utils.restore_checkpoint(model, str(tmp_path))
  message = str(error.value)
  assert 'model variables without a stored value (1):\n  ' + dropped in message
  assert 'stored keys no model variable uses (2)' in message
  assert 'encoder/_stem/_conv/bias' in message and 'backbone/extra' in message
  # Nothing was restored: the check runs before any value is read.
  np.testing.assert_array_equal(variables['encoder/_stem/_batch_norm/gamma'].numpy(),
                                np.ones(variables['encoder/_stem/_batch_norm/gamma'].shape))


def test_own_checkpoint_round_trip(tiny_checkpoint):
  source, path = tiny_checkpoint
  model = _tiny()
  checkpoint_utils.restore_checkpoint(model, path)
  expected = _values(source)
  for key, value in _values(model).items():
    np.testing.assert_array_equal(value, expected[key], err_msg=key)


def test_other_class_count_needs_skipping_the_class_layers(tiny_checkpoint):
  source, path = tiny_checkpoint
  model = _tiny(num_classes=5)
  # The final class head, the semantic last layer and the class heads of the
  # three kMaX layers' auxiliary predictors: 5 layers, 10 variables.
  with pytest.raises(ValueError, match=r'shape mismatches \(10\)') as error:
    checkpoint_utils.restore_checkpoint(model, path)
  assert 'transformer_class_head/_conv/kernel: model (1, 64, 6), checkpoint (1, 64, 4)' \
      in str(error.value)
  skip = checkpoint_utils.class_dependent_prefixes(model)
  assert skip[0] == 'transformer_class_head' and skip[-1] == 'semantic_last_layer'
  assert len(skip) == 5
  before = _values(model)
  checkpoint_utils.restore_checkpoint(model, path, skip=skip)
  after, expected = _values(model), _values(source)
  for key, value in after.items():
    reference = before if any(key.startswith(p + '/') for p in skip) else expected
    np.testing.assert_array_equal(value, reference[key], err_msg=key)
  assert checkpoint_utils.class_dependent_prefixes(
      model, class_heads=False) == ('semantic_last_layer',)


def test_partial_restore_of_the_encoder_only(tiny_checkpoint, tmp_path):
  source, path = tiny_checkpoint
  model = _tiny()
  others = tuple(name for name in model.checkpoint_items if name != 'encoder')
  before = _values(model)
  checkpoint_utils.restore_checkpoint(model, path, skip=others)
  after, expected = _values(model), _values(source)
  for key in after:
    if key.startswith('encoder/'):
      np.testing.assert_array_equal(after[key], expected[key], err_msg=key)
    else:
      np.testing.assert_array_equal(after[key], before[key], err_msg=key)
  # A checkpoint holding only the encoder: strict unless the rest is skipped.
  encoder_only = tf.train.Checkpoint(
      encoder=source.checkpoint_items['encoder']).write(str(tmp_path / 'encoder'))
  with pytest.raises(ValueError, match='pixel_decoder/'):
    checkpoint_utils.restore_checkpoint(_tiny(), encoder_only)
  checkpoint_utils.restore_checkpoint(_tiny(), encoder_only, skip=others)


def test_checkpoint_with_semantic_decoder_into_model_without(tiny_checkpoint):
  _, path = tiny_checkpoint
  model = _tiny(use_auxiliary_semantic_decoder=False)
  with pytest.raises(ValueError, match='semantic_decoder/'):
    checkpoint_utils.restore_checkpoint(model, path, skip=('semantic_head_without_last_layer',
                                                           'semantic_last_layer'))
  checkpoint_utils.restore_checkpoint(
      model, path, skip=('semantic_head_without_last_layer', 'semantic_last_layer'),
      ignore_stored_items=('semantic_decoder',))


def test_bad_arguments_raise(tmp_path):
  model = _tiny()
  with pytest.raises(ValueError, match=r"skip entries \['classifier'\].*valid items"):
    checkpoint_utils.restore_checkpoint(model, str(tmp_path), skip=('classifier',))
  with pytest.raises(ValueError, match='no checkpoint found in directory'):
    checkpoint_utils.restore_checkpoint(model, str(tmp_path))
  unbuilt = clip_kmax.ClipKMaX(**clip_kmax.tiny_model_kwargs(num_classes=3))
  with pytest.raises(ValueError, match='build it'):
    checkpoint_utils.restore_checkpoint(unbuilt, str(tmp_path))


def test_builder_initial_checkpoint_follows_the_restore_flags(tiny_checkpoint):
  source, path = tiny_checkpoint
  config = config_pb2.ExperimentOptions()
  config.model_options.initial_checkpoint = path
  model = _tiny(num_classes=5)
  with pytest.raises(ValueError, match='shape mismatches'):
    builder.initialise_model_weights(config, model)
  config.model_options.restore_class_last_layer_from_initial_checkpoint = False
  config.model_options.restore_semantic_last_layer_from_initial_checkpoint = False
  (message,) = builder.initialise_model_weights(config, model)
  assert "initial_checkpoint" in message and "'semantic_last_layer'" in message
  np.testing.assert_array_equal(_values(model)['encoder/_stem/_conv/kernel'],
                                _values(source)['encoder/_stem/_conv/kernel'])
  assert builder.initialise_model_weights(config_pb2.ExperimentOptions(), model) == []


def test_trainer_checkpoint_with_optimizer(tiny_checkpoint, tmp_path):
  # With an optimizer in the checkpoint, trainable weights are stored under
  # their shortest path 'optimizer/_trainable_variables/<i>'; paths must still
  # resolve through the object graph.
  source, _ = tiny_checkpoint
  optimizer = keras.optimizers.Adam()
  optimizer.build(source.trainable_variables)
  path = tf.train.Checkpoint(global_step=tf.Variable(1, dtype=tf.int64),
                             optimizer=optimizer, **source.checkpoint_items).save(
                                 str(tmp_path / 'ckpt'))
  stored = [name for name, _ in tf.train.list_variables(path)]
  assert 'encoder/_stem/_conv/kernel/.ATTRIBUTES/VARIABLE_VALUE' not in stored
  model = _tiny()
  checkpoint_utils.restore_checkpoint(model, path)
  expected = _values(source)
  for key, value in _values(model).items():
    np.testing.assert_array_equal(value, expected[key], err_msg=key)
  other = _tiny(num_classes=5)
  checkpoint_utils.restore_checkpoint(
      other, path, skip=checkpoint_utils.class_dependent_prefixes(other))
  with pytest.raises(ValueError, match='stored keys no model variable uses'):
    checkpoint_utils.restore_checkpoint(
        _tiny(use_auxiliary_semantic_decoder=False), path,
        skip=('semantic_head_without_last_layer', 'semantic_last_layer'))
