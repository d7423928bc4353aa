"""Orbit trainer for clip-kMaX: one train step on a batch of clips.

Losses are per-example tensors from `KMaXLoss`; each replica sums them and divides
by the GLOBAL batch size, so the gradient is the same under any `tf.distribute`
strategy. A non-finite loss is never zeroed silently: the step's update is skipped
(gradients replaced by zeros), a warning with the step is logged and the
`nonfinite_loss_steps` summary counts it.
"""

import time
from typing import Dict, Optional, Sequence, Tuple

import keras
import orbit
import tensorflow as tf

from deeplab2_vkmax import common

_LOSS_NAMES = (common.TOTAL_LOSS, common.PQ_STYLE_LOSS, common.MASK_ID_CROSS_ENTROPY_LOSS,
               common.INSTANCE_DISCRIMINATION_LOSS, common.SEMANTIC_LOSS)


class ClipKMaXTrainer(orbit.StandardTrainer):
  """Trains a `ClipKMaX` model with the kMaX losses on tubes."""

  def __init__(self, *, strategy: tf.distribute.Strategy, model: keras.Model, loss_fn,
               optimizers: Sequence[Tuple[keras.optimizers.Optimizer, Sequence[tf.Variable]]],
               train_dataset, global_batch_size: int, global_step: tf.Variable,
               total_steps: int, clip_gradient_norm: Optional[float] = None,
               regularization_fn=None, learning_rate_fn=None, log_fn=print):
    """Initialises the trainer.

    Args:
      strategy: The distribution strategy the variables were created under.
      model: The clip-kMaX model.
      loss_fn: Callable (inputs, outputs) -> dict of per-example losses [B].
      optimizers: (optimizer, variables) pairs; together they cover the
        trainable variables once (the backbone may have its own learning rate).
      train_dataset: A dataset of clip batches (or a distributed dataset).
      global_batch_size: Clips per step over all replicas.
      global_step: The step counter saved in checkpoints.
      total_steps: Steps of the whole run (for the ETA of the progress line).
      clip_gradient_norm: Global-norm bound, or None for no clipping.
      regularization_fn: Optional callable () -> scalar L2 term.
      learning_rate_fn: Callable step -> learning rate (for summaries).
      log_fn: Where progress lines go.
    """
    self._strategy = strategy
    self._model = model
    self._loss_fn = loss_fn
    self._optimizers = list(optimizers)
    self._global_batch_size = global_batch_size
    self._global_step = global_step
    self._total_steps = total_steps
    self._clip_gradient_norm = clip_gradient_norm
    self._regularization_fn = regularization_fn
    self._learning_rate_fn = learning_rate_fn
    self._log_fn = log_fn
    with strategy.scope():
      # Sums over the steps of one loop, read and reset on the host.
      self._sums = {name: tf.Variable(0.0, trainable=False, name=f'sum_{name}',
                                      aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
                    for name in _LOSS_NAMES + ('gradient_norm',)}
      self._count = tf.Variable(0.0, trainable=False, name='loop_steps',
                                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
      self._nonfinite = tf.Variable(0, dtype=tf.int64, trainable=False, name='nonfinite_steps',
                                    aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
    self._loop_start = None
    self._loop_start_step = 0
    super().__init__(train_dataset, options=orbit.StandardTrainerOptions(
        use_tf_function=True, use_tf_while_loop=False))

  @property
  def model(self) -> keras.Model:
    return self._model

  def train_loop_begin(self):
    for variable in list(self._sums.values()) + [self._count]:
      variable.assign(0.0)
    self._loop_start = time.time()
    self._loop_start_step = int(self._global_step.numpy())

  def _replica_step(self, inputs: Dict[str, tf.Tensor]):
    variables = [v for _, group in self._optimizers for v in group]
    with tf.GradientTape() as tape:
      outputs = self._model(inputs[common.IMAGE], training=True)
      losses = self._loss_fn(inputs, outputs)
      per_replica = {name: tf.reduce_sum(losses[name]) / self._global_batch_size
                     for name in _LOSS_NAMES if name in losses}
      total = per_replica[common.TOTAL_LOSS]
      if self._regularization_fn is not None:
        total += self._regularization_fn() / self._strategy.num_replicas_in_sync
    gradients = tape.gradient(total, variables)
    gradients = [tf.zeros_like(v) if g is None else g for g, v in zip(gradients, variables)]
    gradient_norm = tf.linalg.global_norm(gradients)
    finite = tf.math.is_finite(total) & tf.math.is_finite(gradient_norm)
    if self._clip_gradient_norm:
      gradients, _ = tf.clip_by_global_norm(gradients, self._clip_gradient_norm,
                                            use_norm=gradient_norm)
    # Skip (do not hide) a non-finite step: zero update, counted and logged.
    gradients = [tf.where(finite, g, tf.zeros_like(g)) for g in gradients]
    start = 0
    for optimizer, group in self._optimizers:
      optimizer.apply_gradients(zip(gradients[start:start + len(group)], group))
      start += len(group)
    per_replica['gradient_norm'] = gradient_norm
    per_replica['nonfinite'] = tf.cast(tf.logical_not(finite), tf.int64)
    return per_replica

  def train_step(self, iterator):
    inputs = next(iterator)
    per_replica = self._strategy.run(self._replica_step, args=(inputs,))
    reduced = {name: self._strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)
               for name, value in per_replica.items()}
    nonfinite = reduced.pop('nonfinite')
    # The gradient norm is per replica; report the replicas' mean.
    reduced['gradient_norm'] /= self._strategy.num_replicas_in_sync
    tf.cond(nonfinite > 0,
            lambda: tf.print('WARNING: non-finite loss at step', self._global_step,
                             '(update skipped): total loss', reduced[common.TOTAL_LOSS]),
            tf.no_op)
    self._nonfinite.assign_add(nonfinite)
    for name, value in reduced.items():
      # A NaN step is excluded from the means (it is reported separately).
      self._sums[name].assign_add(tf.where(nonfinite > 0, 0.0, value))
    self._count.assign_add(tf.where(nonfinite > 0, 0.0, 1.0))
    self._global_step.assign_add(1)

  def train_loop_end(self) -> Dict[str, float]:
    count = max(float(self._count.numpy()), 1.0)
    logs = {f'losses/train_{name}': float(self._sums[name].numpy()) / count for name in _LOSS_NAMES}
    logs['gradient_norm'] = float(self._sums['gradient_norm'].numpy()) / count
    logs['nonfinite_loss_steps'] = int(self._nonfinite.numpy())
    step = int(self._global_step.numpy())
    if self._learning_rate_fn is not None:
      logs['learning_rate'] = float(self._learning_rate_fn(step))
    elapsed = max(time.time() - self._loop_start, 1e-9)
    steps_per_second = (step - self._loop_start_step) / elapsed
    logs['steps_per_second'] = steps_per_second
    remaining = max(self._total_steps - step, 0)
    eta = remaining / steps_per_second if steps_per_second > 0 else float('inf')
    self._log_fn(f'step {step}/{self._total_steps} | loss {logs["losses/train_total_loss"]:.4f} | '
                 f'{steps_per_second:.2f} steps/s | ETA {_format_seconds(eta)}')
    return logs


def _format_seconds(seconds: float) -> str:
  if seconds == float('inf'):
    return '?'
  seconds = int(round(seconds))
  return f'{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'
