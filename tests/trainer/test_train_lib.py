"""End-to-end tests of the main job (trainer/train.py, train_lib): train, eval, export."""

import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from deeplab2_vkmax import common
from deeplab2_vkmax import config as config_lib
from deeplab2_vkmax import builder
from deeplab2_vkmax.trainer import data_lib
from deeplab2_vkmax.trainer import train_lib
import tiny_runs

REPO = tiny_runs.REPO
TINY = tiny_runs.TINY
R50 = REPO / 'configs' / 'kitti_step' / 'clip_kmax_r50.textproto'


def _tiny_config(tmp_path, steps):
  return tiny_runs.tiny_config(tmp_path, steps=steps, steps_per_loop=100, batch_size=None)


def test_train_py_rejects_a_misspelled_field_in_one_line(tmp_path):
  bad = tmp_path / 'bad.textproto'
  bad.write_text(TINY.read_text().replace('transformer_num_heads: 4', 'transformer_num_head: 4'))
  run = subprocess.run([sys.executable, 'trainer/train.py', f'--config_file={bad}',
                        f'--model_dir={tmp_path}'], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
  assert run.returncode != 0
  lines = run.stderr.strip().splitlines()
  assert len(lines) == 1, run.stderr
  assert str(bad) in lines[0] and 'transformer_num_head' in lines[0]
  assert 'Traceback' not in run.stderr


@pytest.mark.slow  # Slow tier: full-size build or a subprocess.
def test_shipped_r50_config_builds_the_real_model():
  config = config_lib.load_experiment_config(str(R50))
  descriptor = data_lib.dataset_descriptor(config.train_dataset_options)
  model = builder.build_model(config, descriptor)
  outputs = model(tf.zeros([1, 2, 65, 129, 3]), training=False, auxiliary_outputs=True)
  assert outputs[common.PRED_PIXEL_SPACE_MASK_LOGITS].shape == (1, 2, 17, 33, 128)
  assert outputs[common.PRED_TRANSFORMER_CLASS_LOGITS].shape == (1, 128, 20)
  assert len(outputs[common.PRED_AUX_OUTPUTS]) == 6
  num_parameters = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
  assert num_parameters == 72_202_221


def _first_val_clip(config):
  """uint8 [T, H, W, 3]: the first evaluation clip."""
  options = config.eval_dataset_options
  _, images, _ = next(data_lib.eval_sequences(options, data_lib.dataset_descriptor(options)))
  return images[:options.clip_length]


def _padded_by_hand(images):
  """float32 [T, H', W', 3]: the export's mean-pixel padding to the next 32k + 1 size."""
  height, width = images.shape[1:3]
  grid = lambda n: (n + 30) // 32 * 32 + 1
  padded = np.full((len(images), grid(height), grid(width), 3), common.PAD_PIXEL_VALUE,
                   np.float32)
  padded[:, :height, :width] = images
  return padded


@pytest.mark.slow
def test_train_and_eval_learns_checkpoints_exports_and_resumes(tmp_path):
  steps = 300
  keras.utils.set_random_seed(0)
  config = _tiny_config(tmp_path, steps)
  model_dir = str(tmp_path / 'runs')

  # The untrained model, evaluated exactly as training will evaluate it.
  untrained = train_lib.build_experiment(config, str(tmp_path / 'untrained'))
  untrained_stq = train_lib.build_evaluator(untrained, log_fn=lambda _: None).evaluate(-1)[
      'evaluation/step/STQ']

  lines = []
  result = train_lib.run_experiment('train_and_eval', config, model_dir, log_fn=lines.append)
  trained_stq = result['evaluation/step/STQ']
  assert 0.0 <= result['evaluation/step/VPQ'] <= 1.0
  assert trained_stq > untrained_stq + 0.05, (untrained_stq, trained_stq)
  assert any(line.startswith(f'step {steps}/{steps} | loss') for line in lines)

  run_dir = pathlib.Path(model_dir) / config.experiment_name
  assert (run_dir / f'ckpt-{steps}.index').exists()
  assert (run_dir / 'eval' / f'metrics_step_{steps}.json').exists()
  assert list((run_dir / 'train').glob('events.out.tfevents.*'))

  # The SavedModel gives the Keras model's panoptic maps on a val clip.
  images = _first_val_clip(config)
  height, width = images.shape[1:3]
  loaded = tf.saved_model.load(str(run_dir / 'export'))
  served = loaded.signatures['serving_default'](input_tensor=tf.constant(images))
  experiment = train_lib.build_experiment(config, model_dir)
  tf.train.Checkpoint(**experiment.model.checkpoint_items).read(
      str(run_dir / f'ckpt-{steps}')).expect_partial()
  post_processor = builder.build_post_processor(config, experiment.descriptor)
  # By hand: the padding, the model, the post-processor, the crop.
  padded = _padded_by_hand(images)
  outputs = experiment.model(padded[np.newaxis], training=False)
  expected = post_processor(outputs, padded.shape[1:3])[common.PANOPTIC_PRED]
  np.testing.assert_array_equal(served[common.PANOPTIC_PRED].numpy(),
                                expected[0, :, :height, :width].numpy())
  single = loaded.signatures['serving_frame'](input_tensor=tf.constant(images[0]))
  assert single[common.PANOPTIC_PRED].shape == (1, height, width)

  # Running again with a later end step resumes from the checkpoint.
  config.trainer_options.solver_options.training_number_of_steps = steps + 100
  resumed = []
  train_lib.run_experiment('train', config, model_dir, log_fn=resumed.append)
  progress = [line for line in resumed if line.startswith('step ')]
  assert progress[0].startswith(f'step {steps + 100}/{steps + 100}'), progress
  assert (run_dir / f'ckpt-{steps + 100}.index').exists()


def test_eval_without_checkpoint_is_a_clear_error(tmp_path):
  config = _tiny_config(tmp_path, 10)
  with pytest.raises(ValueError, match='needs a checkpoint'):
    train_lib.run_experiment('eval', config, str(tmp_path / 'empty'))


@pytest.mark.slow
def test_export_mode_exports_the_latest_checkpoint(tmp_path):
  """--mode=export restores the latest checkpoint and writes its SavedModel."""
  config = _tiny_config(tmp_path, 2)
  model_dir = str(tmp_path / 'runs')
  train_lib.run_experiment('train', config, model_dir, log_fn=lambda _: None)
  run_dir = pathlib.Path(model_dir) / config.experiment_name
  assert not (run_dir / 'export').exists()
  lines = []
  train_lib.run_experiment('export', config, model_dir, log_fn=lines.append)
  assert any(line.startswith('restored ') and line.endswith('ckpt-2') for line in lines), lines
  images = _first_val_clip(config)
  height, width = images.shape[1:3]
  served = tf.saved_model.load(str(run_dir / 'export')).signatures['serving_default'](
      input_tensor=tf.constant(images))
  experiment = train_lib.build_experiment(config, str(tmp_path / 'fresh'))
  tf.train.Checkpoint(**experiment.model.checkpoint_items).read(
      str(run_dir / 'ckpt-2')).expect_partial()
  padded = _padded_by_hand(images)
  outputs = experiment.model(padded[np.newaxis], training=False)
  expected = builder.build_post_processor(config, experiment.descriptor)(
      outputs, padded.shape[1:3])[common.PANOPTIC_PRED]
  np.testing.assert_array_equal(served[common.PANOPTIC_PRED].numpy(),
                                expected[0, :, :height, :width].numpy())
  # The cluster centres depend on every transformer weight: the export carries
  # the checkpoint's weights, not a fresh initialisation.
  np.testing.assert_allclose(
      np.reshape(served[common.PRED_QUERY_EMBEDDINGS].numpy(), [-1]),
      np.reshape(outputs[common.PRED_QUERY_EMBEDDINGS].numpy(), [-1]), rtol=1e-4, atol=1e-4)


@pytest.mark.slow  # Two short trainings (tracing dominates).
@pytest.mark.parametrize('cross_attention', ['standard', 'latent_memory'])
def test_tiny_demo_trains_with_each_table4_cross_attention(tmp_path, cross_attention):
  # k-means is the shipped default, trained by the end-to-end test above.
  config = tiny_runs.tiny_config(tmp_path, steps=4, steps_per_loop=2, batch_size=2)
  config.model_options.clip_kmax.transformer_cross_attention = cross_attention
  lines = []
  train_lib.run_experiment('train', config, str(tmp_path / 'runs'), log_fn=lines.append)
  losses = [float(line.split('loss')[1].split()[0].strip(':=,'))
            for line in lines if line.startswith('step ') and 'loss' in line]
  assert len(losses) == 2 and all(np.isfinite(losses)), lines
  run_dir = tmp_path / 'runs' / config.experiment_name
  assert (run_dir / 'ckpt-4.index').exists()
  # The baseline's own variables are in the checkpoint: a fresh model of the same
  # config restores every one of its variables from it.
  fresh = builder.build_model(config, data_lib.dataset_descriptor(config.train_dataset_options))
  train_lib.build_model_variables(fresh, config)
  names = [v.path for v in fresh.trainable_variables]
  assert any('_cross_query_conv_bn' in n for n in names)
  assert any(n.endswith('/latent_memory') for n in names) == (cross_attention == 'latent_memory')
  tf.train.Checkpoint(**fresh.checkpoint_items).read(
      str(run_dir / 'ckpt-4')).expect_partial().assert_existing_objects_matched()


def test_trainer_seed_repeats_the_initial_weights(tmp_path):
  """trainer_options.seed fixes the initial weights; another seed draws others."""
  def initial_weights(seed):
    config = _tiny_config(tmp_path, 10)
    config.trainer_options.seed = seed
    model = train_lib.build_experiment(config, str(tmp_path / 'unused')).model
    return [v.numpy() for v in model.weights]

  first, again, other = initial_weights(1), initial_weights(1), initial_weights(2)
  assert len(first) == len(again) > 0
  assert all(np.array_equal(a, b) for a, b in zip(first, again))
  # Every randomly initialised weight (not a constant such as a BN scale) differs.
  random_pairs = [(a, b) for a, b in zip(first, other) if a.size > 1 and np.ptp(a) > 0]
  assert len(random_pairs) > 50
  assert not any(np.array_equal(a, b) for a, b in random_pairs)
