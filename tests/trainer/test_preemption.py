"""SIGTERM / SIGINT during training: checkpoint at the current step, clean exit.

The end-to-end test runs `python trainer/train.py --mode=train` on the tiny
synthetic config with `steps_per_loop` 2 and a checkpoint interval (1000) far
beyond the run, sends SIGTERM once a progress line shows training has made
progress, and checks that the job
- exits with 143 (128 + SIGTERM) after printing
  `preempted at step N: checkpoint saved to <run_dir>/ckpt-N`, without traceback;
- left a complete checkpoint at step N > 0 (N is not a multiple of the interval:
  the interval alone would have saved nothing), holding global step N;
- resumes from it when restarted: the restarted run's first progress line is
  step N + steps_per_loop.
The unit tests check the signal handling itself (flag, second signal, restore).
"""

import os
import pathlib
import re
import signal
import subprocess

import pytest
import tensorflow as tf

from deeplab2_vkmax.trainer import train_lib
import tiny_runs

REPO = tiny_runs.REPO
_STEPS_PER_LOOP = 2
_INTERVAL = 1000
_TOTAL_STEPS = 200
_STEP_KEY = 'global_step/.ATTRIBUTES/VARIABLE_VALUE'


def test_watcher_records_the_signal_and_restores_handlers():
  before = signal.getsignal(signal.SIGINT)
  watcher = train_lib.PreemptionWatcher(tf.distribute.get_strategy())
  with watcher:
    assert watcher.requested() == 0
    os.kill(os.getpid(), signal.SIGINT)  # Handled: no KeyboardInterrupt.
    assert watcher.requested() == signal.SIGINT
    # The second one gets the previous handler: Ctrl-C twice stops at once.
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)
  assert signal.getsignal(signal.SIGINT) is before
  assert signal.getsignal(signal.SIGTERM) is not watcher._handle  # pylint: disable=protected-access


def test_preempted_message_and_exit_code():
  error = train_lib.Preempted(7, '/runs/x/ckpt-7', signal.SIGTERM)
  assert str(error) == 'preempted at step 7: checkpoint saved to /runs/x/ckpt-7'
  assert error.exit_code == 143


def _write_config(tmp_path, total_steps) -> pathlib.Path:
  config = tiny_runs.tiny_config(tmp_path, steps=total_steps, steps_per_loop=_STEPS_PER_LOOP,
                                 save_checkpoints_steps=_INTERVAL, warmup_steps=0)
  return tiny_runs.write_config(config, tmp_path / f'tiny_{total_steps}.textproto')


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_at_the_current_step_and_restart_resumes(tmp_path):
  model_dir = tmp_path / 'runs'
  run_dir = model_dir / 'clip_kmax_tiny_synthetic'
  command = tiny_runs.train_command(_write_config(tmp_path, _TOTAL_STEPS), model_dir)
  process = subprocess.Popen(command, cwd=REPO, env=tiny_runs.subprocess_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
  lines = []
  try:
    for line in process.stdout:
      lines.append(line)
      if re.match(rf'step {2 * _STEPS_PER_LOOP}/{_TOTAL_STEPS} \|', line):
        process.send_signal(signal.SIGTERM)
        break
    rest, _ = process.communicate(timeout=120)
  finally:
    if process.poll() is None:
      process.kill()
      process.wait()
  output = ''.join(lines) + rest
  assert process.returncode == 128 + signal.SIGTERM, output[-3000:]
  assert 'Traceback' not in output, output[-3000:]
  match = re.search(r'^preempted at step (\d+): checkpoint saved to (\S+)$', output, re.MULTILINE)
  assert match, output[-3000:]
  step = int(match.group(1))
  assert step >= 2 * _STEPS_PER_LOOP and step % _STEPS_PER_LOOP == 0, step
  assert step % _INTERVAL and step < _TOTAL_STEPS, step
  prefix = str(run_dir / f'ckpt-{step}')
  assert match.group(2) == prefix
  assert tf.train.latest_checkpoint(str(run_dir)) == prefix
  reader = tf.train.load_checkpoint(prefix)
  assert int(reader.get_tensor(_STEP_KEY)) == step
  for key in reader.get_variable_to_shape_map():
    reader.get_tensor(key)  # Complete: every tensor reads back.

  end = step + _STEPS_PER_LOOP
  restarted = subprocess.run(tiny_runs.train_command(_write_config(tmp_path, end), model_dir),
                             cwd=REPO, env=tiny_runs.subprocess_env(), capture_output=True,
                             text=True, timeout=300)
  assert restarted.returncode == 0, restarted.stdout[-3000:] + restarted.stderr[-3000:]
  steps = re.findall(rf'^step (\d+)/{end} \|', restarted.stdout, re.MULTILINE)
  assert steps == [str(end)], restarted.stdout[-3000:]
  assert tf.train.latest_checkpoint(str(run_dir)) == str(run_dir / f'ckpt-{end}')
