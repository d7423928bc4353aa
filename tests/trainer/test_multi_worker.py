"""Two workers on 127.0.0.1 train with MultiWorkerMirroredStrategy.

Two processes get a `TF_CONFIG` naming both (free ports on localhost, task 0 is
the chief) and run the same entry point: `train_lib.create_strategy()` (which
picks MultiWorkerMirroredStrategy from `TF_CONFIG`, as `trainer/train.py` does)
and `train_lib.run_experiment('train', ...)` on the tiny synthetic config, global
batch 2 (one clip per worker, each worker reading its own shard of the clips),
checkpoint interval 1000. Once the non-chief has trained 2 loops, it alone gets
SIGTERM. The entry point catches `train_lib.Preempted` and writes the worker's
final weights to an `.npz`. Checked:
- both workers stop after the same loop (the non-chief's flag reaches the chief
  through the all-reduce), both print `preempted at step N: checkpoint saved to
  <run_dir>/ckpt-N` and exit cleanly;
- they end with bitwise identical trainable weights (the all-reduced gradients
  are the same on both; weights that did not move would prove nothing, so the
  test also checks that training moved them). Batch-norm moving statistics are
  per worker here: without `use_sync_batchnorm` each worker normalises with its
  own clips (Keras 3 creates the statistics with aggregation "none"), and the
  chief's are the ones saved. With synchronized batch norm they are identical
  too (measured: every weight bitwise equal), but its per-layer all-reduces make
  the run 3-4x slower on 2 shared cores;
- the chief's run directory holds the checkpoint of step N (not a multiple of the
  interval), with the chief's final weights; the non-chief wrote nothing into it
  and removed its private checkpoint directory;
- the workers' input pipelines read different clips (their first batches'
  sequence / frame ids differ).
"""

import json
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from deeplab2_vkmax import common
from deeplab2_vkmax import config as config_lib
from deeplab2_vkmax.data import clip_reader
from deeplab2_vkmax.trainer import data_lib
from deeplab2_vkmax.trainer import train_lib
import tiny_runs

REPO = tiny_runs.REPO
TINY = tiny_runs.TINY
_STEPS = 40
_STEPS_PER_LOOP = 2

# Imports TensorFlow only after the strategy is made: MultiWorkerMirroredStrategy
# must be created before any other TensorFlow op runs.
_ENTRY = r'''
import json
import sys
import numpy as np
from deeplab2_vkmax import config as config_lib
from deeplab2_vkmax.trainer import train_lib
config_path, model_dir, out = sys.argv[1:4]
strategy = train_lib.create_strategy()
experiments = []
build = train_lib.build_experiment
initial = []
def record_experiment(*args, **kwargs):
  experiments.append(build(*args, **kwargs))
  initial.extend(w.numpy() for w in experiments[-1].model.trainable_weights)
  return experiments[-1]
train_lib.build_experiment = record_experiment
datasets = []
build_dataset = train_lib.build_train_dataset
def record_dataset(experiment, **kwargs):
  train_input, iterator = build_dataset(experiment, **kwargs)
  first = next(iter(train_input))
  ids = strategy.experimental_local_results(first['frame_id'])
  sequences = strategy.experimental_local_results(first['sequence_id'])
  datasets.append([[s.decode() for s in q.numpy()] + f.numpy().ravel().tolist()
                   for q, f in zip(sequences, ids)])
  return train_input, iterator
train_lib.build_train_dataset = record_dataset
config = config_lib.load_experiment_config(config_path)
preempted = None
try:
  train_lib.run_experiment('train', config, model_dir, strategy=strategy,
                           log_fn=lambda line: print(line, flush=True))
except train_lib.Preempted as e:
  preempted = e.step
model = experiments[0].model
np.savez(out, *[w.numpy() if hasattr(w, 'numpy') else np.asarray(w) for w in model.weights])
print('RESULT ' + json.dumps({
    'task': strategy.cluster_resolver.task_id, 'replicas': strategy.num_replicas_in_sync,
    'preempted': preempted,
    'chief': train_lib.is_chief(strategy), 'step': int(experiments[0].global_step.numpy()),
    'first_batch': datasets[0], 'names': [w.path for w in model.weights],
    'trainable': [w.path for w in model.trainable_weights],
    'moved': [bool(np.any(w.numpy() != w0)) for w, w0 in zip(model.trainable_weights, initial)],
}), flush=True)
'''


def _free_ports(count):
  sockets = [socket.socket() for _ in range(count)]
  for s in sockets:
    s.bind(('127.0.0.1', 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


def _write_config(tmp_path) -> pathlib.Path:
  config = tiny_runs.tiny_config(tmp_path, steps=_STEPS, steps_per_loop=_STEPS_PER_LOOP,
                                 save_checkpoints_steps=1000, warmup_steps=0)
  return tiny_runs.write_config(config, tmp_path / 'tiny.textproto')


@pytest.mark.slow
def test_two_workers_on_localhost_stop_together_with_identical_weights(tmp_path):
  config_path = _write_config(tmp_path)
  # Generate the synthetic data once, before two processes race to write it.
  data_lib.resolve_file_patterns(config_lib.load_experiment_config(
      str(config_path)).train_dataset_options)
  model_dir = tmp_path / 'runs'
  ports = _free_ports(2)
  cluster = {'worker': [f'127.0.0.1:{port}' for port in ports]}
  processes, logs = [], []
  temp_dirs = [tmp_path / f'tmp{task}' for task in range(2)]
  for task in range(2):
    temp_dirs[task].mkdir()
    env = dict(tiny_runs.subprocess_env(), TMPDIR=str(temp_dirs[task]), TF_CONFIG=json.dumps(
        {'cluster': cluster, 'task': {'type': 'worker', 'index': task}}))
    log = open(tmp_path / f'worker{task}.log', 'w+')
    logs.append(log)
    processes.append(subprocess.Popen(
        [sys.executable, '-c', _ENTRY, str(config_path), str(model_dir),
         str(tmp_path / f'weights{task}.npz')],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT))
  try:
    # SIGTERM to the non-chief only, once it has trained 2 loops.
    progress = re.compile(rf'^step {2 * _STEPS_PER_LOOP}/{_STEPS} \|', re.MULTILINE)
    deadline = time.monotonic() + 240
    while not progress.search((tmp_path / 'worker1.log').read_text()):
      assert processes[1].poll() is None, (tmp_path / 'worker1.log').read_text()[-3000:]
      assert time.monotonic() < deadline, 'worker 1 made no progress'
      time.sleep(0.2)
    processes[1].send_signal(signal.SIGTERM)
    for process in processes:
      process.wait(timeout=240)
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()
  outputs = []
  for log in logs:
    log.seek(0)
    outputs.append(log.read())
    log.close()
  for process, output in zip(processes, outputs):
    assert process.returncode == 0, output[-3000:]
  results = []
  for output in outputs:
    lines = [l for l in output.splitlines() if l.startswith('RESULT ')]
    assert len(lines) == 1, output[-4000:]
    results.append(json.loads(lines[0][len('RESULT '):]))
  assert [r['task'] for r in results] == [0, 1]
  assert [r['chief'] for r in results] == [True, False]
  step = results[0]['step']
  assert 2 * _STEPS_PER_LOOP <= step < _STEPS and step % _STEPS_PER_LOOP == 0, step
  assert all(r['replicas'] == 2 and r['step'] == r['preempted'] == step for r in results)
  run_dir = model_dir / 'clip_kmax_tiny_synthetic'
  for output in outputs:
    assert f'preempted at step {step}: checkpoint saved to {run_dir}/ckpt-{step}\n' in output
  assert results[0]['first_batch'] != results[1]['first_batch'], results
  # Training moved most trainable weights (zero-gamma BN ends of residual
  # branches and the like may not move in 4 steps).
  moved = results[0]['moved']
  assert sum(moved) > 0.5 * len(moved), sum(moved)

  chief = np.load(tmp_path / 'weights0.npz')
  worker = np.load(tmp_path / 'weights1.npz')
  names = results[0]['names']
  assert len(chief.files) == len(names) > 100
  trainable = set(results[0]['trainable'])
  assert len(trainable) > 100
  for index, name in enumerate(names):
    if name in trainable:
      np.testing.assert_array_equal(chief[f'arr_{index}'], worker[f'arr_{index}'], err_msg=name)

  # The chief's checkpoint of the last step (the only one) holds these weights.
  latest = tf.train.latest_checkpoint(str(run_dir))
  assert latest == str(run_dir / f'ckpt-{step}'), latest
  reader = tf.train.load_checkpoint(latest)
  assert int(reader.get_tensor('global_step/.ATTRIBUTES/VARIABLE_VALUE')) == step
  config = config_lib.load_experiment_config(str(config_path))
  experiment = train_lib.build_experiment(config, str(tmp_path / 'unused'))
  tf.train.Checkpoint(**experiment.model.checkpoint_items).read(latest).assert_existing_objects_matched()
  # Paths below the model's own name (Keras numbers it by how many models the
  # process built before: 'clip_k_ma_x' in a worker, 'clip_k_ma_x_58' here).
  def below_model(path):
    return path.split('/', 1)[1]
  assert [below_model(w.path) for w in experiment.model.weights] == [
      below_model(name) for name in names]
  for index, weight in enumerate(experiment.model.weights):
    np.testing.assert_array_equal(weight.numpy(), chief[f'arr_{index}'], err_msg=names[index])
  # The non-chief left nothing behind: one writer in the run directory.
  assert sorted(p.name for p in run_dir.iterdir() if p.is_dir()) == ['train']
  assert [list(d.iterdir()) for d in temp_dirs] == [[], []]


def _clip_ids(dataset):
  return [(s.decode(), tuple(f)) for batch in dataset.as_numpy_iterator()
          for s, f in zip(batch[common.SEQUENCE_ID], batch[common.FRAME_ID])]


def test_input_pipelines_read_disjoint_shards_that_cover_the_data(tmp_path):
  # The synthetic set has one TFRecord file: fewer files than pipelines, so the
  # clips are sharded (before decoding).
  options = config_lib.load_experiment_config(str(TINY)).train_dataset_options
  options.synthetic.root_dir = str(tmp_path / 'synthetic')
  files = clip_reader.expand_file_pattern(data_lib.resolve_file_patterns(options))
  assert len(files) == 1
  descriptor = data_lib.dataset_descriptor(options)
  kwargs = dict(descriptor=descriptor, clip_length=2, batch_size=1, crop_size=(65, 129),
                is_training=False)
  everything = _clip_ids(clip_reader.build_clip_dataset(files, **kwargs))
  shards = [_clip_ids(clip_reader.build_clip_dataset(files, num_shards=2, shard_index=i,
                                                     **kwargs)) for i in range(2)]
  assert len(everything) > 10
  assert not set(shards[0]) & set(shards[1])
  assert sorted(shards[0] + shards[1]) == sorted(everything)
  with pytest.raises(ValueError, match='shard_index < num_shards, got 2 and 2'):
    clip_reader.build_clip_dataset(files, num_shards=2, shard_index=2, **kwargs)


class _FakeStrategy:
  num_replicas_in_sync = 3


def test_a_batch_that_does_not_divide_over_the_replicas_is_a_clear_error(tmp_path):
  config = config_lib.load_experiment_config(str(TINY))
  experiment = train_lib.Experiment(
      config=config, run_dir=str(tmp_path), strategy=_FakeStrategy(), descriptor=None,
      model=None, global_step=None)
  with pytest.raises(ValueError, match=r'batch_size 4 does not divide over 3 replicas '
                                       r'\(1 worker\(s\) x 3\); use a multiple of 3'):
    train_lib.build_trainer(experiment, optimizers=[])


def test_eval_modes_are_refused_under_multi_worker(tmp_path, monkeypatch):
  monkeypatch.setattr(train_lib, 'num_workers', lambda strategy: 2)
  config = config_lib.load_experiment_config(str(TINY))
  for mode in ('train_and_eval', 'eval', 'continuous_eval', 'export'):
    with pytest.raises(ValueError, match=f'--mode={mode} does not run multi-worker'):
      train_lib.run_experiment(mode, config, str(tmp_path), strategy=_FakeStrategy())
  assert not list(tmp_path.iterdir())  # Refused before writing anything.
