"""The training data position is saved and restored.

With `trainer_options.checkpoint_data_position` the checkpoints hold the training
input iterator (`train_iterator`). The test trains the tiny synthetic config
(seeded pipeline, batch 2) for 4 steps, then restarts the same experiment with 8
steps, and compares the checkpoints' data positions with an uninterrupted,
freshly built pipeline of the same config:
- the iterator restored from `ckpt-4` yields the batches that the uninterrupted
  pipeline yields as its 5th, 6th, ... batches: training consumed exactly one
  batch per step and saved the position after them;
- the iterator restored from `ckpt-8` (written by the restarted run) yields the
  uninterrupted pipeline's 9th, 10th, ... batches: the restarted run consumed
  batches 5-8 of the uninterrupted stream. Had it started the stream again, its
  checkpoint would yield batch 5 (not 9) next.
Batches are compared by their clips' sequence and frame ids and an image hash;
the test first checks that different positions give different batches.
Without the option the checkpoint has no iterator.
"""

import hashlib
import pathlib

import pytest
import tensorflow as tf

from deeplab2_vkmax import common
from deeplab2_vkmax.trainer import data_lib
from deeplab2_vkmax.trainer import train_lib
import tiny_runs
_COMPARED = 3  # Batches compared after each restore.


def _config(tmp_path, steps, data_position=True):
  return tiny_runs.tiny_config(tmp_path, steps=steps, steps_per_loop=2, save_checkpoints_steps=4,
                               checkpoint_data_position=data_position)


def _fingerprint(batch):
  """(sequence ids, frame ids, image hash) of a batch."""
  return ([s.decode() for s in batch[common.SEQUENCE_ID].numpy()],
          batch[common.FRAME_ID].numpy().tolist(),
          hashlib.sha1(batch[common.IMAGE].numpy().tobytes()).hexdigest())


def _pipeline(config):
  options = config.train_dataset_options
  return iter(data_lib.build_train_dataset(options, data_lib.dataset_descriptor(options),
                                           options.batch_size))


def _restored_batches(config, prefix):
  iterator = _pipeline(config)
  tf.train.Checkpoint(**{train_lib.TRAIN_ITERATOR: iterator}).read(prefix).expect_partial()
  return [_fingerprint(next(iterator)) for _ in range(_COMPARED)]


@pytest.mark.slow
def test_restart_continues_the_data_stream_of_an_uninterrupted_run(tmp_path):
  model_dir = str(tmp_path / 'runs')
  run_dir = pathlib.Path(model_dir) / 'clip_kmax_tiny_synthetic'
  quiet = lambda _: None
  train_lib.run_experiment('train', _config(tmp_path, 4), model_dir, log_fn=quiet)
  train_lib.run_experiment('train', _config(tmp_path, 8), model_dir, log_fn=quiet)

  uninterrupted = _pipeline(_config(tmp_path, 8))
  stream = [_fingerprint(next(uninterrupted)) for _ in range(8 + _COMPARED)]
  assert len({batch[2] for batch in stream}) == len(stream)  # Positions differ.
  for step in (4, 8):
    prefix = str(run_dir / f'ckpt-{step}')
    reader = tf.train.load_checkpoint(prefix)
    assert any(key.startswith(train_lib.TRAIN_ITERATOR + '/')
               for key in reader.get_variable_to_shape_map())
    assert _restored_batches(_config(tmp_path, 8), prefix) == stream[step:step + _COMPARED], step


@pytest.mark.slow
def test_without_the_option_the_checkpoint_has_no_data_position(tmp_path):
  model_dir = str(tmp_path / 'runs')
  config = _config(tmp_path, 2, data_position=False)
  config.trainer_options.steps_per_loop = 1
  config.trainer_options.save_summaries_steps = 1
  config.trainer_options.save_checkpoints_steps = 1
  train_lib.run_experiment('train', config, model_dir, log_fn=lambda _: None)
  reader = tf.train.load_checkpoint(
      str(pathlib.Path(model_dir) / 'clip_kmax_tiny_synthetic' / 'ckpt-2'))
  keys = reader.get_variable_to_shape_map()
  assert 'global_step/.ATTRIBUTES/VARIABLE_VALUE' in keys
  assert not any(key.startswith(train_lib.TRAIN_ITERATOR) for key in keys)


def test_data_position_under_a_distributed_strategy_is_a_clear_error(tmp_path):
  config = _config(tmp_path, 2)
  strategy = tf.distribute.MirroredStrategy(['/cpu:0'])
  with pytest.raises(ValueError, match='checkpoint_data_position needs OneDeviceStrategy'):
    train_lib.run_experiment('train', config, str(tmp_path / 'runs'), strategy=strategy)
