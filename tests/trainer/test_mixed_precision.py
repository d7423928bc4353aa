"""Mixed precision: dtype policies, loss scaling, NaN report, export.

`solver_options.mixed_precision` selects a Keras 3 dtype policy for the model:
`mixed_bfloat16` (no loss scaling) or `mixed_float16` (the optimisers become
`keras.optimizers.LossScaleOptimizer`s). What is asserted:
- the policy is applied only while the model is built (the global policy is
  restored); variables, BN statistics and model outputs are float32 while the
  convolutions compute in the mixed dtype;
- a tiny ClipKMaX trains on CPU under each mixed policy with finite losses, the
  total loss of the last step below the first step's on a fixed batch, and
  finite float32 weights;
- a NaN injected into the loss at step 3 is reported with that step
  (`WARNING: non-finite loss at step 3`), counted once and its update skipped
  (weights unchanged over that step);
- under mixed_float16 a gradient overflow from too large a loss scale is NOT a
  NaN report: it is counted in `loss_scale_overflow_steps`, the update is
  skipped and the scale halved;
- a run trained under mixed_bfloat16 exports (both the in-memory model of
  train_and_eval and `export_model.export_from_checkpoint`) a SavedModel with
  uint8 input and float32/int32 outputs that equal the Keras path's.
"""


import keras
import numpy as np
import pytest
import tensorflow as tf

from deeplab2_vkmax import common
from deeplab2_vkmax import config as config_lib
from deeplab2_vkmax import export_model
from deeplab2_vkmax import builder
from deeplab2_vkmax.model import clip_kmax
from deeplab2_vkmax.model import precision
from deeplab2_vkmax.model.loss import kmax_loss
from deeplab2_vkmax.protos import trainer_pb2
from deeplab2_vkmax.trainer import optimizer_builder
from deeplab2_vkmax.trainer import train_lib
from deeplab2_vkmax.trainer import trainer as trainer_lib
import tiny_runs

TINY = tiny_runs.TINY
_COMPUTE_DTYPE = {'mixed_bfloat16': 'bfloat16', 'mixed_float16': 'float16'}
_NAN_STEP = 3


def _tiny_model(policy):
  with precision.dtype_policy_scope(policy):
    model = clip_kmax.ClipKMaX(**clip_kmax.tiny_model_kwargs(num_classes=3))
    model(tf.zeros([1, 2, 33, 33, 3]), training=False)
  return model


def _all_layers(model):
  return model._flatten_layers(include_self=False, recursive=True)  # pylint: disable=protected-access


def test_policy_scope_restores_the_global_policy_and_rejects_unknown_names():
  before = keras.config.dtype_policy().name
  with precision.dtype_policy_scope('mixed_bfloat16'):
    assert keras.config.dtype_policy().name == 'mixed_bfloat16'
  assert keras.config.dtype_policy().name == before
  with pytest.raises(ValueError, match='mixed_float16, mixed_bfloat16; got "float16"'):
    with precision.dtype_policy_scope('float16'):
      pass
  with pytest.raises(RuntimeError):
    with precision.dtype_policy_scope('mixed_float16'):
      raise RuntimeError('inside')
  assert keras.config.dtype_policy().name == before


@pytest.mark.parametrize('policy', ['mixed_bfloat16', 'mixed_float16'])
def test_mixed_model_keeps_float32_variables_and_outputs(policy):
  model = _tiny_model(policy)
  assert keras.config.dtype_policy().name == 'float32'
  assert {v.dtype for v in model.variables} == {'float32'}
  convolutions = [l for l in _all_layers(model) if isinstance(l, keras.layers.Conv2D)]
  assert convolutions and all(l.compute_dtype == _COMPUTE_DTYPE[policy] for l in convolutions)
  assert all(l.variable_dtype == 'float32' for l in convolutions)
  outputs = model(tf.random.uniform([1, 2, 33, 33, 3], maxval=255.0), training=True)
  for tensor in tf.nest.flatten(outputs):
    assert tensor.dtype == tf.float32
    assert np.all(np.isfinite(tensor.numpy()))
  # A model built afterwards without any scope is float32 throughout: no leak.
  plain = clip_kmax.ClipKMaX(**clip_kmax.tiny_model_kwargs(num_classes=3))
  plain(tf.zeros([1, 2, 33, 33, 3]), training=False)
  assert all(l.compute_dtype == 'float32' for l in _all_layers(plain))


def test_config_rejects_an_unknown_policy_and_bad_image_summary_steps():
  text = TINY.read_text()
  solver = 'solver_options {'
  assert solver in text
  bad_policy = text.replace(solver, solver + '\n    mixed_precision: "float16"')
  with pytest.raises(config_lib.ConfigError,
                     match='mixed_precision: got "float16", expected one of float32, '
                     'mixed_float16, mixed_bfloat16'):
    config_lib.parse_experiment_config(bad_policy, 'tiny.textproto')
  config = config_lib.parse_experiment_config(
      text.replace(solver, solver + '\n    mixed_precision: "mixed_bfloat16"'))
  assert config.trainer_options.solver_options.mixed_precision == 'mixed_bfloat16'
  trainer = 'trainer_options {'
  for steps in (-100, 150):  # steps_per_loop is 100.
    with pytest.raises(config_lib.ConfigError, match='save_image_summaries_steps: must be 0'):
      config_lib.parse_experiment_config(
          text.replace(trainer, f'{trainer}\n  save_image_summaries_steps: {steps}'))


def test_optimizer_is_loss_scaled_only_for_float16():
  layer = keras.layers.Dense(2)
  layer.build((None, 3))
  for policy, scaled in (('float32', False), ('mixed_bfloat16', False), ('mixed_float16', True)):
    solver = trainer_pb2.SolverOptions(mixed_precision=policy)
    optimizer = optimizer_builder.build_optimizer(solver, layer.trainable_variables)
    assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer) == scaled, policy


def _fixed_batch():
  """Two clips [2, 2, 33, 33]: two stuff bands and one thing tube."""
  rng = np.random.default_rng(0)
  images = rng.uniform(0, 255, [2, 2, 33, 33, 3]).astype(np.float32)
  labels = np.zeros([2, 2, 33, 33], np.int32)
  labels[:, :, :16] = 1000
  labels[:, :, 20:30, 5:15] = 2 * 1000 + 1
  images[labels == 1000] *= 0.3  # Stuff 1 darker, so the batch is learnable.
  return {common.IMAGE: images, common.PANOPTIC_LABEL: labels}


def _train(policy, num_steps, initial_scale=None, nan_step=None, split_backbone=False):
  """Trains a tiny model one step per loop.

  Returns:
    (logs of every loop, weights before and after every step, optimizers).
  """
  keras.utils.set_random_seed(0)
  strategy = tf.distribute.OneDeviceStrategy('/cpu:0')
  with strategy.scope():
    model = _tiny_model(policy)
    global_step = tf.Variable(0, dtype=tf.int64, trainable=False)
    groups = [model.trainable_variables]
    if split_backbone:  # As with backbone_learning_rate_multiplier != 1.
      backbone = {id(v) for v in model.checkpoint_items['encoder'].trainable_variables}
      groups = [[v for v in model.trainable_variables if id(v) not in backbone],
                [v for v in model.trainable_variables if id(v) in backbone]]
    optimizers = []
    for group in groups:
      # SGD without momentum: a zero gradient leaves the weights exactly as they are.
      optimizer = keras.optimizers.SGD(0.02)
      if policy == 'mixed_float16':
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer, initial_scale=initial_scale)
      optimizer.build(group)
      optimizers.append((optimizer, group))
  loss = kmax_loss.KMaXLoss(num_classes=3, ignore_label=255, label_divisor=1000,
                            thing_class_ids=[2], num_mask_slots=16,
                            instance_discrimination_sample_k=64)

  def loss_fn(inputs, outputs):
    losses = dict(loss(inputs, outputs))
    if nan_step is not None:
      # The trainer increments the step after the replica step, so the step
      # that reads `nan_step` here is the one reported with it.
      total = losses[common.TOTAL_LOSS]
      losses[common.TOTAL_LOSS] = tf.where(tf.equal(global_step, nan_step),
                                           tf.fill(tf.shape(total), np.nan), total)
    return losses

  dataset = tf.data.Dataset.from_tensors(_fixed_batch()).repeat()
  trainer = trainer_lib.ClipKMaXTrainer(
      strategy=strategy, model=model, loss_fn=loss_fn, optimizers=optimizers,
      train_dataset=strategy.experimental_distribute_dataset(dataset), global_batch_size=2,
      global_step=global_step, total_steps=num_steps, log_fn=lambda _: None)
  logs, weights = [], [[v.numpy().copy() for v in model.trainable_variables]]
  for _ in range(num_steps):
    logs.append(trainer.train(tf.constant(1)))
    weights.append([v.numpy().copy() for v in model.trainable_variables])
  assert {v.dtype for v in model.variables} == {'float32'}
  return logs, weights, [optimizer for optimizer, _ in optimizers]


def _changed(before, after):
  return any(not np.array_equal(a, b) for a, b in zip(before, after))


@pytest.mark.slow
@pytest.mark.parametrize('policy', ['mixed_bfloat16', 'mixed_float16'])
def test_mixed_training_is_finite_learns_and_reports_an_injected_nan(policy, capfd):
  num_steps = 6
  logs, weights, (optimizer,) = _train(policy, num_steps, initial_scale=2.0 ** 10,
                                       nan_step=_NAN_STEP)
  output = ''.join(capfd.readouterr())
  assert f'WARNING: non-finite loss at step {_NAN_STEP} (update skipped)' in output
  assert output.count('WARNING: non-finite loss') == 1
  assert logs[-1]['nonfinite_loss_steps'] == 1
  finite_steps = [s for s in range(num_steps) if s != _NAN_STEP]
  totals = [logs[s]['losses/train_total_loss'] for s in finite_steps]
  assert all(np.isfinite(t) and t > 0 for t in totals), totals
  # A fixed batch: plain SGD lowers the loss (tiny ClipKMaX, 5 updates).
  assert totals[-1] < totals[0], totals
  for step in range(num_steps):
    assert _changed(weights[step], weights[step + 1]) == (step != _NAN_STEP), step
    assert all(np.all(np.isfinite(w)) for w in weights[step + 1])
  if policy == 'mixed_float16':
    assert logs[-1]['loss_scale_overflow_steps'] == 0
    assert float(optimizer.dynamic_scale.numpy()) == 2.0 ** 10
  else:
    assert 'loss_scale' not in logs[-1]


@pytest.mark.slow
def test_float16_overflow_is_skipped_and_not_reported_as_nan(capfd):
  # 2**40 times any gradient of order 1e-5 is past float16's 65504. Two loss
  # scalers (backbone split): both skip and halve together.
  logs, weights, optimizers = _train('mixed_float16', 2, initial_scale=2.0 ** 40,
                                     split_backbone=True)
  output = ''.join(capfd.readouterr())
  assert 'non-finite' not in output
  assert logs[-1]['nonfinite_loss_steps'] == 0
  assert logs[-1]['loss_scale_overflow_steps'] == 2
  assert logs[-1]['loss_scale'] == 2.0 ** 38  # Halved at each overflow.
  assert [float(o.dynamic_scale.numpy()) for o in optimizers] == [2.0 ** 38] * 2
  assert not _changed(weights[0], weights[-1])


def _tiny_config(tmp_path, policy, steps):
  config = tiny_runs.tiny_config(tmp_path, steps=steps, steps_per_loop=steps)
  config.trainer_options.solver_options.mixed_precision = policy
  config.evaluator_options.max_num_sequences = 1
  config_lib.validate_experiment_config(config)
  return config


@pytest.mark.slow
def test_bfloat16_run_exports_float32_outputs_equal_to_the_keras_path(tmp_path):
  keras.utils.set_random_seed(0)
  config = _tiny_config(tmp_path, 'mixed_bfloat16', steps=2)
  model_dir = tmp_path / 'runs'
  result = train_lib.run_experiment('train_and_eval', config, str(model_dir),
                                    log_fn=lambda _: None)
  assert np.isfinite(result['evaluation/step/STQ'])
  assert keras.config.dtype_policy().name == 'float32'
  run_dir = model_dir / config.experiment_name
  checkpoint = str(run_dir / 'ckpt-2')
  from_checkpoint = export_model.export_from_checkpoint(config, checkpoint,
                                                        str(tmp_path / 'exported'))

  # The Keras path: the mixed model restored from the checkpoint, post-processed.
  experiment = train_lib.build_experiment(config, str(tmp_path / 'keras'))
  tf.train.Checkpoint(**experiment.model.checkpoint_items).read(checkpoint).expect_partial()
  post_processor = builder.build_post_processor(config, experiment.descriptor)
  frames = np.random.default_rng(1).integers(0, 256, [2, 65, 129, 3]).astype(np.uint8)
  outputs = experiment.model(tf.cast(frames, tf.float32)[tf.newaxis], training=False)
  expected = post_processor(outputs, tf.constant([65, 129]))

  for export_dir in (run_dir / 'export', from_checkpoint):
    loaded = tf.saved_model.load(str(export_dir))
    signature = loaded.signatures['serving_default']
    assert signature.structured_input_signature[1][common.EXPORT_INPUT_NAME].dtype == tf.uint8
    served = signature(**{common.EXPORT_INPUT_NAME: tf.constant(frames)})
    for key in (common.SEGMENT_SCORES, common.PRED_QUERY_EMBEDDINGS, common.SEGMENT_BOXES):
      assert served[key].dtype == tf.float32, key
    for key in (common.PANOPTIC_PRED, common.SEMANTIC_PRED, common.SEGMENT_IDS,
                common.SEGMENT_CLASSES):
      assert served[key].dtype == tf.int32, key
    # The same bfloat16 graph on the same CPU: scores and embeddings within 1e-3,
    # and the maps equal but for near-ties of the pixel-wise argmax over slots,
    # which bfloat16 rounding can flip where op fusion differs (0.3 % of the
    # pixels measured after 2 steps).
    same = np.mean(served[common.PANOPTIC_PRED].numpy() ==
                   expected[common.PANOPTIC_PRED][0].numpy())
    assert same > 0.99, same
    np.testing.assert_allclose(served[common.SEGMENT_SCORES].numpy(),
                               expected[common.SEGMENT_SCORES][0].numpy(), atol=1e-3)
    np.testing.assert_allclose(served[common.PRED_QUERY_EMBEDDINGS].numpy(),
                               expected[common.PRED_QUERY_EMBEDDINGS][0].numpy(), atol=1e-3)
