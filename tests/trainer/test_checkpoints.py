"""The run's checkpoint manager: step-multiple saves, resume past a truncated file."""

import os
import types

import pytest
import tensorflow as tf

from deeplab2_vkmax.trainer import checkpoints
from deeplab2_vkmax.trainer import train_lib
import tiny_runs


def _manager(directory, step, value, manager_class=checkpoints.RunCheckpointManager,
             **kwargs):
  checkpoint = tf.train.Checkpoint(step=step, value=value)
  return manager_class(checkpoint, str(directory), max_to_keep=10, step_counter=step,
                       checkpoint_interval=20, **kwargs)


def _saved_steps(manager, step, loop_ends):
  """Runs Orbit's save pattern: a checked save after every loop; returns the steps saved."""
  saved = []
  for end in loop_ends:
    step.assign(end)
    if manager.save(checkpoint_number=end) is not None:
      saved.append(end)
  return saved


def test_checkpoints_land_on_multiples_of_the_interval(tmp_path):
  step, value = tf.Variable(0, dtype=tf.int64), tf.Variable(0.0)
  ours = _manager(tmp_path / 'ours', step, value)
  ours.restore_or_initialize()
  assert _saved_steps(ours, step, range(10, 70, 10)) == [20, 40, 60]
  # The stock manager counts from its first save: the bug this class fixes.
  step.assign(0)
  stock = _manager(tmp_path / 'stock', step, value, tf.train.CheckpointManager)
  assert _saved_steps(stock, step, range(10, 70, 10)) == [10, 30, 50]


def test_loops_that_do_not_divide_the_interval_save_once_per_multiple(tmp_path):
  step, value = tf.Variable(0, dtype=tf.int64), tf.Variable(0.0)
  manager = _manager(tmp_path, step, value)
  manager.restore_or_initialize()
  assert _saved_steps(manager, step, range(15, 95, 15)) == [30, 45, 60, 90]


def test_a_resumed_run_keeps_the_multiples(tmp_path):
  step, value = tf.Variable(0, dtype=tf.int64), tf.Variable(0.0)
  _saved_steps(_manager(tmp_path, step, value), step, [10, 20, 30])
  step.assign(0)
  resumed = _manager(tmp_path, step, value)
  assert resumed.restore_or_initialize().endswith('ckpt-20')
  assert _saved_steps(resumed, step, [30, 40, 50, 60]) == [40, 60]


def _truncate(prefix):
  index = prefix + '.index'
  with open(index, 'rb') as f:
    data = f.read()
  with open(index, 'wb') as f:
    f.write(data[:len(data) // 2])


def test_a_truncated_newest_checkpoint_is_skipped_with_one_warning(tmp_path):
  step, value = tf.Variable(0, dtype=tf.int64), tf.Variable(0.0)
  manager = _manager(tmp_path, step, value)
  for end in (20, 40):
    step.assign(end)
    value.assign(float(end))
    manager.save(checkpoint_number=end)
  _truncate(manager.latest_checkpoint)
  warnings = []
  step.assign(0)
  value.assign(0.0)
  resumed = _manager(tmp_path, step, value, warn_fn=warnings.append)
  assert resumed.restore_or_initialize() == os.path.join(str(tmp_path), 'ckpt-20')
  assert (int(step.numpy()), float(value.numpy())) == (20, 20.0)
  assert len(warnings) == 1 and '\n' not in warnings[0]
  assert warnings[0].startswith(f'skipped checkpoint {tmp_path}/ckpt-40: it does not read')


def test_no_readable_checkpoint_is_an_error_naming_them(tmp_path):
  step, value = tf.Variable(0, dtype=tf.int64), tf.Variable(0.0)
  manager = _manager(tmp_path, step, value)
  step.assign(20)
  manager.save(checkpoint_number=20)
  _truncate(manager.latest_checkpoint)
  initialised = []
  resumed = _manager(tmp_path, step, value, warn_fn=lambda m: None,
                     init_fn=lambda: initialised.append(True))
  with pytest.raises(ValueError, match=r'no checkpoint in .* reads \(tried .*ckpt-20\)'):
    resumed.restore_or_initialize()
  assert not initialised  # Never silently start over on top of a broken run.


@pytest.mark.slow  # Two short training runs (about 75 s).
def test_training_resumes_from_the_checkpoint_before_a_truncated_newest(tmp_path, capsys):
  config = tiny_runs.tiny_config(tmp_path, steps=4, steps_per_loop=2, warmup_steps=0)
  train_lib.run_experiment('train', config, str(tmp_path / 'runs'), log_fn=lambda m: None)
  run_dir = tmp_path / 'runs' / config.experiment_name
  assert tf.train.latest_checkpoint(str(run_dir)).endswith('ckpt-4')
  _truncate(str(run_dir / 'ckpt-4'))
  capsys.readouterr()
  config.trainer_options.solver_options.training_number_of_steps = 6
  lines = []
  train_lib.run_experiment('train', config, str(tmp_path / 'runs'), log_fn=lines.append)
  captured = capsys.readouterr()
  warning = [l for l in captured.err.splitlines() if l.startswith('warning:')]
  assert len(warning) == 1 and f'{run_dir}/ckpt-4' in warning[0]
  # Resumed at step 2: its loops end at 4 and 6 (a fresh start would log step 2).
  assert [l.split('/')[0] for l in lines if l.startswith('step ')] == ['step 4', 'step 6']
  reader = tf.train.load_checkpoint(str(run_dir / 'ckpt-6'))
  assert reader.get_tensor('global_step/.ATTRIBUTES/VARIABLE_VALUE') == 6


def test_continuous_eval_skips_a_checkpoint_that_does_not_read(tmp_path):
  step, value = tf.Variable(0, dtype=tf.int64), tf.Variable(0.0)
  manager = _manager(tmp_path, step, value)
  for end in (20, 40, 60):
    step.assign(end)
    value.assign(float(end))
    manager.save(checkpoint_number=end)
  _truncate(manager.latest_checkpoint)  # The newest, ckpt-60, is what the iterator yields.
  step.assign(0)
  evaluated, warnings = [], []

  class Controller:  # Records which weights each evaluation saw.
    def evaluate(self, steps):
      del steps
      evaluated.append(float(value.numpy()))
      return {'value': evaluated[-1]}

  options = types.SimpleNamespace(continuous_eval_timeout=1)  # Seconds to wait for more.
  experiment = types.SimpleNamespace(
      run_dir=str(tmp_path), global_step=step,
      config=types.SimpleNamespace(evaluator_options=options))
  results = list(train_lib._continuous_eval(  # pylint: disable=protected-access
      Controller(), experiment, manager, total_steps=60, warn_fn=warnings.append))
  # No crash (it used to raise DataLossError), and nothing was evaluated on bad weights.
  assert results == [] and evaluated == []
  assert len(warnings) == 1
  assert warnings[0].startswith(f'skipped checkpoint {tmp_path}/ckpt-60: it does not read')
  assert warnings[0].endswith('waiting for the next one')
