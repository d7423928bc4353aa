"""OneDevice and MirroredStrategy train the same model identically.

(Also: `solver_options.use_sync_batchnorm` reaches every batch norm, off by default.)

The project's `ClipKMaXTrainer` (orbit) trains the tiny clip-kMaX for 3 steps on
one fixed global batch of 2 synthetic clips with the project's AdamW
(`optimizer_builder.build_optimizer`, weight decay on), once under
OneDeviceStrategy (batch 2 on one device) and once under MirroredStrategy over 2
logical CPU devices (1 clip per replica), from the same initial weights (copied).
The per-step losses and the final weights (trainable variables and BN moving
statistics) must agree.

Logical devices must be configured before TensorFlow initialises (the pytest
process has already initialised it), so both runs happen in a subprocess that
prints its measurements as JSON.

Determinism:
- Synchronized batch norm (`use_sync_batchnorm=True`) in both runs, so the
  replicas normalise with both clips' statistics as the single device does.
- Drop path is off (`tiny_model_kwargs`: transformer keep prob 1.0, backbone 1.0),
  and so is the ASPP dropout (`aspp_dropout_rate=0`).
- Instance discrimination: `instance_discrimination_sample_k` (4096) is above the
  clip's pixel count at output stride 4 (2 x 9 x 17 = 306), so every pixel is
  drawn and the loss does not depend on the order; the loss_fn wrapper passes a
  fixed `sample_seed` as well. All four loss terms keep their default weights.
- The steps run eagerly (the trainer's `train_step` without `tf.function`, through
  orbit's own loop helper): tracing the step takes about 55 s on 2 CPU cores,
  against 17 s for the 6 eager steps. Same strategy calls (`strategy.run`, the
  all-reduces, `strategy.reduce`) either way.
- No data augmentation: the batch is built from the synthetic generator directly
  and the same 2 clips are fed at every step.
"""

import json
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest

from deeplab2_vkmax import config as config_lib
from deeplab2_vkmax import builder
from deeplab2_vkmax.model.layers import normalization
from deeplab2_vkmax.trainer import data_lib

TINY = (pathlib.Path(__file__).resolve().parents[2] / 'configs' / 'synthetic' /
        'clip_kmax_tiny.textproto')

# Losses: float32 sums in a different order (all-reduce of BN statistics and of
# the gradients): relative 1e-5 per step (measured 2.5e-7). Weights (trainable
# and BN moving statistics): each variable's final value w (one device) vs w'
# (mirrored) within
#   max|w - w'| <= _WEIGHT_ATOL + _WEIGHT_RTOL * max|w|.
# The learning rate is 2e-3: 3 AdamW steps move a weight by up to ~4e-3. Adam
# divides by sqrt(v), which makes a round-off difference in a small gradient a
# visible difference in the step, so the bound is 3e-4 = 0.15 of one step's
# largest update. Measured: largest error 1.4e-4 (ASPP pooling branch kernel,
# whose input is a global average), next 4.7e-5; every other variable < 3e-5.
# Adam is invariant to the gradient's scale, so the weights alone would not
# catch a wrong loss normalisation; the losses do (a per-replica mean would
# report twice the loss).
# Not compared: the pixel-space heads' final conv bias feeds straight into a
# BatchNorm (`_pixel_space_feature_batch_norm`, batch statistics in training),
# which removes any per-channel constant, so the bias's gradient is exactly zero
# and what reaches Adam is round-off (~1e-9). Adam scales it up to a step of
# ~0.1 lr whose sign depends on the summation order, so the two runs' values are
# unrelated at the 1e-4 level (measured with TF 2.20 / Keras 3.15.1 / numpy 2.3.5:
# 3.3e-4 apart, each moved by up to 2.4e-4). Every other variable is compared.
_ZERO_GRADIENT_SUFFIX = '_pixel_space_head/final_conv/bias'
_LOSS_RTOL = 1e-5
_WEIGHT_ATOL = 3e-4
_WEIGHT_RTOL = 1e-5
_STEPS = 3

_SCRIPT = r'''
import json
import sys
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices('CPU')[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
import orbit
from deeplab2_vkmax import common
from deeplab2_vkmax.data import synthetic
from deeplab2_vkmax.model import clip_kmax
from deeplab2_vkmax.model.loss import kmax_loss
from deeplab2_vkmax.protos import trainer_pb2
from deeplab2_vkmax.trainer import optimizer_builder
from deeplab2_vkmax.trainer import trainer as trainer_lib

steps = int(sys.argv[1])
nan_step = int(sys.argv[2])  # 0: none; else clip 1's loss is NaN at this step.
keras.utils.set_random_seed(0)
params = synthetic.SyntheticParams(num_train_sequences=2, train_frames=2,
                                   height=32, width=64)
images = np.zeros([2, 2, 33, 65, 3], np.float32)
labels = np.full([2, 2, 33, 65], 255 * 1000, np.int32)  # Padding is void.
for i in range(2):
  sequence = synthetic.generate_sequence(params, 'train', i)
  images[i, :, :32, :64] = sequence.images
  labels[i, :, :32, :64] = sequence.panoptic
kwargs = clip_kmax.tiny_model_kwargs(num_classes=6)
kwargs['use_sync_batchnorm'] = True
kwargs['aspp_dropout_rate'] = 0.0  # Random masks would differ between the runs.
loss = kmax_loss.KMaXLoss(
    num_classes=6, ignore_label=255, label_divisor=1000, thing_class_ids=(4, 5),
    num_mask_slots=kwargs['num_mask_slots'])
assert loss.instance_discrimination_sample_k >= 2 * 9 * 17
seed = tf.constant([7, 11], tf.int32)
current_step = []  # The global step variable of the run in progress.

def loss_fn(inputs, outputs):
  losses = dict(loss(inputs, outputs, sample_seed=seed))
  # A NaN in clip 1 only: on one device it is part of the batch, under
  # MirroredStrategy it lives on replica 1 alone.
  poison = (tf.equal(inputs['clip_index'], 1) &
            tf.equal(current_step[-1] + 1, nan_step))
  losses[common.TOTAL_LOSS] = tf.where(poison, np.nan, losses[common.TOTAL_LOSS])
  return losses
solver = trainer_pb2.SolverOptions(
    optimizer='adamw', base_learning_rate=0.002, warmup_steps=0,
    training_number_of_steps=steps, adamw_weight_decay=0.05)

class EagerTrainer(trainer_lib.ClipKMaXTrainer):
  # The project's train_step and replica step, run eagerly: tracing them takes
  # 14 s (one device) and 39 s (2 replicas) on 2 CPU cores, eager steps 1-5 s.
  def create_train_loop_fn(self):
    return orbit.utils.create_loop_fn(self.train_step)

def train(strategy, initial_weights):
  with strategy.scope():
    model = clip_kmax.ClipKMaX(**kwargs)
    model(images[:1], training=False)
    if initial_weights is not None:
      model.set_weights(initial_weights)
    start = model.get_weights()
    variables = list(model.trainable_variables)
    optimizer = optimizer_builder.build_optimizer(solver, variables)
    global_step = tf.Variable(0, dtype=tf.int64, trainable=False)
  current_step.append(global_step)
  # The same 2 clips at every step; the global batch of 2 is split over the
  # replicas (clip 0 on replica 0, clip 1 on replica 1).
  dataset = tf.data.Dataset.from_tensors(
      {common.IMAGE: images, common.PANOPTIC_LABEL: labels,
       'clip_index': np.arange(2, dtype=np.int64)}).unbatch().batch(2).repeat()
  trainer = EagerTrainer(
      strategy=strategy, model=model, loss_fn=loss_fn, optimizers=[(optimizer, variables)],
      train_dataset=strategy.experimental_distribute_dataset(dataset),
      global_batch_size=2, global_step=global_step, total_steps=steps,
      log_fn=lambda _: None)
  losses = []
  for _ in range(steps):
    logs = trainer.train(tf.constant(1, tf.int32))
    losses.append(logs['losses/train_' + common.TOTAL_LOSS])
  assert int(global_step.numpy()) == steps
  assert logs['nonfinite_loss_steps'] == (1 if nan_step else 0), logs
  return start, model, losses

single_start, single, single_losses = train(
    tf.distribute.OneDeviceStrategy('/cpu:0'), None)
mirrored_strategy = tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])
mirrored_start, mirrored, mirrored_losses = train(mirrored_strategy, single_start)
assert all(np.array_equal(a, b) for a, b in zip(single_start, mirrored_start))
single_final = single.get_weights()
mirrored_final = mirrored.get_weights()
print('RESULT ' + json.dumps({
    'num_replicas': mirrored_strategy.num_replicas_in_sync,
    'single_losses': single_losses,
    'mirrored_losses': mirrored_losses,
    'names': [v.path for v in single.weights],
    'weight_max_abs': [float(np.max(np.abs(w))) for w in single_final],
    'moved_max_abs': [float(np.max(np.abs(w - s)))
                      for w, s in zip(single_final, single_start)],
    'error_max_abs': [float(np.max(np.abs(a - b)))
                      for a, b in zip(single_final, mirrored_final)],
}))
'''


def _run_subprocess(nan_step=0):
  env = dict(os.environ, CUDA_VISIBLE_DEVICES='', TF_CPP_MIN_LOG_LEVEL='2')
  completed = subprocess.run([sys.executable, '-c', _SCRIPT, str(_STEPS), str(nan_step)],
                             env=env,
                             capture_output=True, text=True, timeout=300, check=False)
  assert completed.returncode == 0, completed.stderr[-4000:]
  lines = [l for l in completed.stdout.splitlines() if l.startswith('RESULT ')]
  assert len(lines) == 1, completed.stdout[-4000:]
  return json.loads(lines[0][len('RESULT '):])


def _assert_weights_agree(result):
  """The final weights of the two runs agree within the stated bound."""
  # Training moved the weights (else equal weights would prove nothing).
  moved = np.array(result['moved_max_abs'])
  assert np.sum(moved > 1e-3) > 0.5 * len(moved)
  compared = np.array([not n.endswith(_ZERO_GRADIENT_SUFFIX) for n in result['names']])
  assert 0 < np.sum(~compared) < 5  # The exclusion matches the heads, nothing else.
  names = [n for n, c in zip(result['names'], compared) if c]
  moved = moved[compared]
  scale = np.array(result['weight_max_abs'])[compared]
  error = np.array(result['error_max_abs'])[compared]
  bound = _WEIGHT_ATOL + _WEIGHT_RTOL * scale
  worst = int(np.argmax(error / bound))
  assert np.all(error <= bound), (
      f'{names[worst]} differs by {error[worst]:.3g} (bound {bound[worst]:.3g}; '
      f'largest error {error.max():.3g}, moved by up to {moved[worst]:.3g})')


@pytest.mark.slow
def test_one_device_and_mirrored_training_agree():
  result = _run_subprocess()
  assert result['num_replicas'] == 2
  assert len(result['single_losses']) == _STEPS
  assert np.all(np.isfinite(result['single_losses']))
  np.testing.assert_allclose(result['mirrored_losses'], result['single_losses'],
                             rtol=_LOSS_RTOL)
  _assert_weights_agree(result)


@pytest.mark.slow
def test_a_nan_on_one_replica_skips_the_step_on_every_replica():
  # Step 2: clip 1's loss is NaN. One device zeroes the whole batch's gradient;
  # under MirroredStrategy the NaN is on replica 1 only, and replica 0 must skip
  # too (its real gradient would otherwise be all-reduced with replica 1's zeros
  # and the weights would part from the single-device run). The NaN step is
  # counted once (asserted in the script) and left out of the loss means.
  result = _run_subprocess(nan_step=2)
  np.testing.assert_allclose(result['mirrored_losses'], result['single_losses'],
                             rtol=_LOSS_RTOL)
  _assert_weights_agree(result)


def _batch_norms(model):
  """Every batch-norm layer of `model` (Keras' and the project's axis BN)."""
  return [layer for layer in model._flatten_layers(include_self=False)  # pylint: disable=protected-access
          if isinstance(layer, (keras.layers.BatchNormalization,
                                normalization.AxisBatchNormalization))]


@pytest.mark.parametrize('sync', [None, False, True])
def test_sync_batchnorm_option_reaches_every_batch_norm(sync):
  config = config_lib.load_experiment_config(str(TINY))
  if sync is not None:
    config.trainer_options.solver_options.use_sync_batchnorm = sync
  model = builder.build_model(config, data_lib.dataset_descriptor(config.train_dataset_options))
  layers = _batch_norms(model)
  # Stem, residual blocks, axial attention, pixel decoder, transformer decoder,
  # heads: the tiny model has well over a hundred.
  assert len(layers) > 100
  assert any(isinstance(layer, normalization.AxisBatchNormalization) for layer in layers)
  unset = [layer.name for layer in layers if layer.synchronized != bool(sync)]
  assert not unset, unset  # Off by default (sync None).
