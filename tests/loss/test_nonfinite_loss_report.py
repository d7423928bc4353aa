"""A non-finite loss is reported and its update skipped, never silently zeroed.

A NaN or Inf loss is reported (summary + log line with the step).
Drives `trainer.trainer.ClipKMaXTrainer` directly under a OneDevice CPU strategy.
The model is a one-layer stand-in that returns the mask-logit key: the trainer only
needs `model(images, training=True)` and `loss_fn(inputs, outputs)`, and a
ClipKMaX would add tens of seconds of tracing without exercising anything more of
the NaN path.
"""

import keras
import numpy as np
import tensorflow as tf

from deeplab2_vkmax import common
from deeplab2_vkmax.trainer import trainer as trainer_lib

_NAN_STEP = 2
_NUM_STEPS = 4


class OneConvModel(keras.Model):
  """[B, T, H, W, 3] -> {PRED_PIXEL_SPACE_MASK_LOGITS: [B, T, H, W, 2]}."""

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    self.conv = keras.layers.Conv2D(2, 1, name='conv')

  def call(self, images, training=False):
    frames = tf.reshape(images, [-1, 4, 4, 3])  # [B*T, H, W, 3]
    logits = tf.reshape(self.conv(frames), [-1, 2, 4, 4, 2])
    return {common.PRED_PIXEL_SPACE_MASK_LOGITS: logits}


def _run(global_step_nan):
  """Trains _NUM_STEPS steps; the loss is NaN at global step `global_step_nan`.

  Returns:
    (logs of train_loop_end, list of the conv kernel after each step, log lines).
  """
  keras.utils.set_random_seed(0)
  strategy = tf.distribute.OneDeviceStrategy('/cpu:0')
  with strategy.scope():
    model = OneConvModel(name="one_conv_model")
    model(tf.zeros([1, 2, 4, 4, 3]))
    global_step = tf.Variable(0, dtype=tf.int64, trainable=False)
    optimizer = keras.optimizers.SGD(0.1)
    optimizer.build(model.trainable_variables)

  def loss_fn(inputs, outputs):
    del inputs
    per_example = tf.reduce_mean(
        tf.square(outputs[common.PRED_PIXEL_SPACE_MASK_LOGITS] - 1.0),
        axis=[1, 2, 3, 4])  # [B]
    # The trainer increments the global step after the replica step, so the
    # step that reads `global_step_nan` here is the one logged with it.
    total = tf.where(tf.equal(global_step, global_step_nan),
                     tf.fill(tf.shape(per_example), float('nan')), per_example)
    return {common.TOTAL_LOSS: total, common.PQ_STYLE_LOSS: total}

  images = np.random.default_rng(0).uniform(0, 255, [2, 2, 4, 4, 3])
  dataset = tf.data.Dataset.from_tensors(
      {common.IMAGE: tf.constant(images, tf.float32)}).repeat()
  lines = []
  trainer = trainer_lib.ClipKMaXTrainer(
      strategy=strategy, model=model, loss_fn=loss_fn,
      optimizers=[(optimizer, model.trainable_variables)],
      train_dataset=strategy.experimental_distribute_dataset(dataset),
      global_batch_size=2, global_step=global_step, total_steps=_NUM_STEPS,
      log_fn=lines.append)
  kernels = [model.conv.kernel.numpy().copy()]
  logs = None
  for _ in range(_NUM_STEPS):
    logs = trainer.train(tf.constant(1))
    kernels.append(model.conv.kernel.numpy().copy())
  return logs, kernels, lines


def test_nan_loss_is_logged_with_its_step_counted_and_skipped(capfd):
  logs, kernels, lines = _run(global_step_nan=_NAN_STEP)
  # The last loop (one step each) is a finite step; the counter spans loops.
  assert logs['nonfinite_loss_steps'] == 1
  assert np.isfinite(logs['losses/train_total_loss'])
  captured = capfd.readouterr()
  output = captured.out + captured.err
  assert 'WARNING: non-finite loss at step 2 (update skipped)' in output
  assert output.count('WARNING: non-finite loss') == 1
  assert len(lines) == _NUM_STEPS
  # Update skipped exactly at the NaN step; the other steps do update, with
  # finite values (NaN gradients would otherwise leak into the weights).
  for step in range(_NUM_STEPS):
    changed = not np.array_equal(kernels[step], kernels[step + 1])
    assert changed == (step != _NAN_STEP), step
    assert np.all(np.isfinite(kernels[step + 1]))


def test_finite_run_reports_no_nonfinite_step(capfd):
  logs, _, _ = _run(global_step_nan=-1)
  assert logs['nonfinite_loss_steps'] == 0
  captured = capfd.readouterr()
  assert 'non-finite' not in captured.out + captured.err
