"""SIGKILL after a checkpoint, restart the same command: training resumes.

`python trainer/train.py --mode=train` runs as a subprocess on the tiny synthetic
config (steps_per_loop = save_checkpoints_steps = 5, 15 steps). When the first
checkpoint appears in the run directory the process is killed with SIGKILL (no
chance to clean up), then the identical command is started again. The test
checks that:
- every entry of the `checkpoint` state file names a complete checkpoint (an
  `.index` and every `.data-XXXXX-of-NNNNN` shard), before and after the restart;
- the restarted run resumes: its first progress line is a step after the
  checkpoint's and it never reports a step at or below it (a fresh start would
  print `step 5/15` first);
- the checkpoints the restarted run writes carry the optimizer state continued
  from the killed run's checkpoint: the optimizer's `iterations` counter equals
  the global step in every checkpoint (a freshly built optimizer would count
  from 0 again), and Adam's second moments in the restarted run's first
  checkpoint are at least beta_2^5 of the killed run's, element by element (what
  5 updates from the restored moments guarantee; zero-initialised moments fail).
"""

import os
import pathlib
import re
import signal
import subprocess
import time

import numpy as np
import pytest
import tensorflow as tf

from deeplab2_vkmax import config as config_lib
from deeplab2_vkmax.trainer import train_lib
import tiny_runs

REPO = tiny_runs.REPO

_TOTAL_STEPS = 15
_INTERVAL = 5
_ITERATIONS_KEY = 'optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE'
_STEP_KEY = 'global_step/.ATTRIBUTES/VARIABLE_VALUE'


def _write_config(tmp_path) -> pathlib.Path:
  config = tiny_runs.tiny_config(tmp_path, steps=_TOTAL_STEPS, steps_per_loop=_INTERVAL,
                                 warmup_steps=0, num_checkpoints_to_keep=10)
  return tiny_runs.write_config(config, tmp_path / 'tiny.textproto')


def _checkpoint_paths(run_dir: pathlib.Path):
  """The checkpoint prefixes the `checkpoint` state file lists (latest last)."""
  state = tf.train.get_checkpoint_state(str(run_dir))
  if state is None:
    return []
  return list(state.all_model_checkpoint_paths)


def _assert_complete(prefix: str) -> None:
  """The checkpoint `prefix` has its index and every data shard, and loads."""
  assert os.path.exists(prefix + '.index'), prefix
  shards = [name for name in os.listdir(os.path.dirname(prefix))
            if name.startswith(os.path.basename(prefix) + '.data-')]
  assert shards, prefix
  match = re.search(r'-of-(\d+)$', shards[0])
  assert match and len(shards) == int(match.group(1)), shards
  reader = tf.train.load_checkpoint(prefix)
  assert reader.has_tensor(_STEP_KEY)
  for key in reader.get_variable_to_shape_map():
    reader.get_tensor(key)  # Every tensor reads back (no truncated shard).


def _wait_for_checkpoint(process, run_dir, timeout_s=150.0):
  deadline = time.monotonic() + timeout_s
  while time.monotonic() < deadline:
    paths = _checkpoint_paths(run_dir)
    if paths:
      return paths
    assert process.poll() is None, 'training exited before its first checkpoint'
    time.sleep(0.2)
  raise AssertionError(f'no checkpoint in {run_dir} after {timeout_s} s')


def _velocity_keys(config_path, tmp_path):
  """Checkpoint keys of Adam's second moments (`optimizer/_variables/<i>`)."""
  config = config_lib.load_experiment_config(str(config_path))
  experiment = train_lib.build_experiment(config, str(tmp_path / 'unused'))
  (optimizer, _), = train_lib.build_optimizers(experiment)
  return [f'optimizer/_variables/{i}/.ATTRIBUTES/VARIABLE_VALUE'
          for i, variable in enumerate(optimizer.variables) if variable.path.endswith('_velocity')]


@pytest.mark.slow
def test_sigkill_after_checkpoint_resumes_with_optimizer_state(tmp_path):
  config_path = _write_config(tmp_path)
  model_dir = tmp_path / 'runs'
  run_dir = model_dir / 'clip_kmax_tiny_synthetic'
  log = open(tmp_path / 'first.log', 'w')
  first = subprocess.Popen(tiny_runs.train_command(config_path, model_dir), cwd=REPO,
                           env=tiny_runs.subprocess_env(), stdout=log, stderr=subprocess.STDOUT)
  try:
    paths = _wait_for_checkpoint(first, run_dir)
    first.send_signal(signal.SIGKILL)
  finally:
    first.kill()
    first.wait(timeout=30)
    log.close()
  assert first.returncode == -signal.SIGKILL

  # Whatever moment the kill hit, the state file names only complete checkpoints.
  paths = _checkpoint_paths(run_dir)
  for prefix in paths:
    _assert_complete(prefix)
  killed_at = tf.train.load_checkpoint(paths[-1])
  resume_step = int(killed_at.get_tensor(_STEP_KEY))
  assert resume_step >= _INTERVAL and resume_step < _TOTAL_STEPS, paths
  assert int(killed_at.get_tensor(_ITERATIONS_KEY)) == resume_step
  velocity_keys = _velocity_keys(config_path, tmp_path)
  assert len(velocity_keys) > 100
  old_velocities = {key: killed_at.get_tensor(key) for key in velocity_keys}

  second = subprocess.run(tiny_runs.train_command(config_path, model_dir), cwd=REPO,
                          env=tiny_runs.subprocess_env(), capture_output=True, text=True, timeout=300)
  assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
  steps = [int(m.group(1)) for m in re.finditer(rf'^step (\d+)/{_TOTAL_STEPS} \|',
                                                second.stdout, re.MULTILINE)]
  assert steps, second.stdout[-3000:]
  assert steps[0] == resume_step + _INTERVAL, (resume_step, steps)
  assert steps[-1] == _TOTAL_STEPS

  paths = _checkpoint_paths(run_dir)
  for prefix in paths:
    _assert_complete(prefix)
  assert paths[-1].endswith(f'ckpt-{_TOTAL_STEPS}')
  for prefix in paths:
    reader = tf.train.load_checkpoint(prefix)
    # The optimizer counts every step of both runs: it was restored, not rebuilt.
    assert int(reader.get_tensor(_ITERATIONS_KEY)) == int(reader.get_tensor(_STEP_KEY)), prefix

  # Adam's second moments continue the killed run's. Each step sets
  # v <- beta_2 v + (1 - beta_2) g^2 >= beta_2 v (beta_2 = 0.999), so after one loop
  # every element is at least 0.999^5 of the checkpointed one. A rebuilt
  # optimizer would restart from v = 0 and hold only these 5 steps' g^2, with
  # no such bound (measured here only with the restored optimizer).
  after = tf.train.load_checkpoint(os.path.join(run_dir, f'ckpt-{resume_step + _INTERVAL}'))
  old = np.concatenate([old_velocities[key].ravel() for key in velocity_keys])
  new = np.concatenate([after.get_tensor(key).ravel() for key in velocity_keys])
  # Many gradients are exactly 0 at initialisation (zero-gamma BN ends of the
  # residual branches): measured 62 % of v is non-zero.
  assert np.count_nonzero(old) > 0.4 * old.size
  floor = old * 0.999 ** _INTERVAL * (1 - 1e-5)
  assert np.all(new >= floor), np.mean(new < floor)
