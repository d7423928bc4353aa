"""Orbit trainer for clip-kMaX: one train step on a batch of clips.

Losses are per-example tensors from `KMaXLoss`; each replica sums them and divides
by the GLOBAL batch size, so the gradient is the same under any `tf.distribute`
strategy. A non-finite loss is never zeroed silently: the step's gradients are
replaced by zeros on every replica (the replicas agree through an all-reduce, so
a NaN on one replica cannot mix zeroed and real contributions), a warning with
the step is logged and the `nonfinite_loss_steps` summary counts it. With Adam /
AdamW a zero gradient still applies the moment decay and the weight decay, so
the weights move slightly on such a step (docs/training.md).

Mixed precision (`mixed_float16`): the optimisers are
`keras.optimizers.LossScaleOptimizer`s. The loss is scaled before the gradient,
the gradients are unscaled for the norm and clipping, and a step whose loss is
finite but whose gradients overflow is the loss scaler's business (it skips the
update and halves the scale): it is counted in `loss_scale_overflow_steps`, not
reported as a non-finite loss. A non-finite loss is reported as under float32.

Image summaries (every `image_summary_steps`, at a loop end): the first clip of
the loop's last batch is kept; the model (inference mode) and the
post-processor segment it, and `tubes/input_gt_prediction` shows per frame the
input, the ground truth and the predicted tubes in track colours.
"""

import time
from typing import Dict, Optional, Sequence, Tuple

import keras
import numpy as np
import orbit
import tensorflow as tf

from deeplab2_vkmax import common
from deeplab2_vkmax import visualization
from deeplab2_vkmax.data import dataset as dataset_lib

# Summarised as `losses/train_<name>` (each term sums the main output and every
# auxiliary kMaX-layer output; the PQ-style loss also as its two parts).
_LOSS_NAMES = (common.TOTAL_LOSS, common.PQ_STYLE_LOSS, common.MASK_ID_CROSS_ENTROPY_LOSS,
               common.INSTANCE_DISCRIMINATION_LOSS, common.SEMANTIC_LOSS,
               common.PQ_STYLE_LOSS_CLASS_TERM, common.PQ_STYLE_LOSS_MASK_DICE_TERM)
# Matching diagnostics of the main output, summarised as `matching/<name>`.
_MATCHING_NAMES = (common.LOSS_NUM_GT_MASKS, common.LOSS_MEAN_MATCHED_DICE,
                   common.LOSS_MEAN_MATCHED_CLASS_PROB)
IMAGE_SUMMARY_NAME = 'tubes/input_gt_prediction'


class ClipKMaXTrainer(orbit.StandardTrainer):
  """Trains a `ClipKMaX` model with the kMaX losses on tubes."""

  def __init__(self, *, strategy: tf.distribute.Strategy, model: keras.Model, loss_fn,
               optimizers: Sequence[Tuple[keras.optimizers.Optimizer, Sequence[tf.Variable]]],
               train_dataset, global_batch_size: int, global_step: tf.Variable,
               total_steps: int, clip_gradient_norm: Optional[float] = None,
               regularization_fn=None, learning_rate_fn=None, log_fn=print,
               image_summary_steps: int = 0, post_processor=None,
               descriptor: Optional[dataset_lib.DatasetDescriptor] = None,
               clip_shape: Optional[Sequence[int]] = None):
    """Initialises the trainer.

    Args:
      strategy: The distribution strategy the variables were created under.
      model: The clip-kMaX model.
      loss_fn: Callable (inputs, outputs) -> dict of per-example losses [B].
      optimizers: (optimizer, variables) pairs; together they cover the
        trainable variables once (the backbone may have its own learning rate).
        Either all or none are `keras.optimizers.LossScaleOptimizer`s (loss
        scaling for `mixed_float16`).
      train_dataset: A dataset of clip batches (or a distributed dataset).
      global_batch_size: Clips per step over all replicas.
      global_step: The step counter saved in checkpoints.
      total_steps: Steps of the whole run (for the ETA of the progress line).
      clip_gradient_norm: Global-norm bound, or None for no clipping.
      regularization_fn: Optional callable () -> scalar L2 term.
      learning_rate_fn: Callable step -> learning rate (for summaries).
      log_fn: Where progress lines go.
      image_summary_steps: Steps between image summaries (at loop ends, into
        the default summary writer, i.e. Orbit's train summary directory);
        0 = none.
      post_processor: A `ClipPostProcessor` (image summaries only).
      descriptor: The train data set descriptor (image summaries only).
      clip_shape: (T, H, W) of the training clips (image summaries only).

    Raises:
      ValueError: If only some optimisers scale the loss, or image summaries
        are asked for without a post-processor, descriptor and clip shape.
    """
    scaling = [isinstance(o, keras.optimizers.LossScaleOptimizer) for o, _ in optimizers]
    if any(scaling) and not all(scaling):
      raise ValueError('optimizers must be all LossScaleOptimizers or none; got '
                       f'{[type(o).__name__ for o, _ in optimizers]}')
    if image_summary_steps and (post_processor is None or descriptor is None or
                                clip_shape is None):
      raise ValueError(f'image_summary_steps={image_summary_steps} needs post_processor, '
                       'descriptor and clip_shape')
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
    self._loss_scaling = bool(scaling) and all(scaling)
    self._image_summary_steps = image_summary_steps
    self._post_processor = post_processor
    self._descriptor = descriptor
    first_replica = tf.VariableAggregation.ONLY_FIRST_REPLICA
    with strategy.scope():
      # Sums over the steps of one loop, read and reset on the host.
      self._sums = {name: tf.Variable(0.0, trainable=False, name=f'sum_{name}',
                                      aggregation=first_replica)
                    for name in _LOSS_NAMES + _MATCHING_NAMES + ('gradient_norm',)}
      self._count = tf.Variable(0.0, trainable=False, name='loop_steps',
                                aggregation=first_replica)
      self._nonfinite = tf.Variable(0, dtype=tf.int64, trainable=False, name='nonfinite_steps',
                                    aggregation=first_replica)
      self._overflow = tf.Variable(0, dtype=tf.int64, trainable=False,
                                   name='loss_scale_overflow_steps', aggregation=first_replica)
      if image_summary_steps:
        # The first clip of the latest batch (first replica), for image summaries.
        num_frames, height, width = clip_shape
        self._summary_clip = tf.Variable(
            tf.zeros([num_frames, height, width, 3]), trainable=False, name='summary_clip',
            aggregation=first_replica)
        self._summary_label = tf.Variable(
            tf.zeros([num_frames, height, width], tf.int32), trainable=False,
            name='summary_label', aggregation=first_replica)
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
    if self._image_summary_steps:
      self._summary_clip.assign(tf.cast(inputs[common.IMAGE][0], tf.float32))
      self._summary_label.assign(tf.cast(inputs[common.PANOPTIC_LABEL][0], tf.int32))
    with tf.GradientTape() as tape:
      outputs = self._model(inputs[common.IMAGE], training=True)
      losses = self._loss_fn(inputs, outputs)
      per_replica = {name: tf.reduce_sum(tf.cast(losses[name], tf.float32)) /
                           self._global_batch_size
                     for name in _LOSS_NAMES + _MATCHING_NAMES if name in losses}
      total = per_replica[common.TOTAL_LOSS]
      if self._regularization_fn is not None:
        total += self._regularization_fn() / self._strategy.num_replicas_in_sync
      # Loss scaling: every LossScaleOptimizer sees the same finite/overflow
      # decisions (below), so their scales stay equal; the first one's is used.
      scale = self._optimizers[0][0].dynamic_scale if self._loss_scaling else None
      target = total * scale if self._loss_scaling else total
    gradients = tape.gradient(target, variables)
    gradients = [tf.zeros_like(v) if g is None else g for g, v in zip(gradients, variables)]
    if self._loss_scaling:
      gradients = [g / scale for g in gradients]  # Powers of two: exact.
    gradient_norm = tf.linalg.global_norm(gradients)
    loss_finite = tf.math.is_finite(total)
    gradients_finite = tf.math.is_finite(gradient_norm)
    if self._loss_scaling:
      # Finite loss, non-finite gradients: float16 overflow under too large a
      # scale, the loss scaler's normal mechanism, not a NaN loss.
      nonfinite = tf.logical_not(loss_finite)
      overflow = loss_finite & tf.logical_not(gradients_finite)
    else:
      nonfinite = tf.logical_not(loss_finite & gradients_finite)
      overflow = tf.constant(False)
    # Every replica takes the same decision: a non-finite value on one replica
    # skips the step on all of them (else the all-reduced gradient would mix
    # zeroed and real contributions).
    replica_context = tf.distribute.get_replica_context()
    flags = replica_context.all_reduce(
        tf.distribute.ReduceOp.SUM, tf.cast(tf.stack([nonfinite, overflow]), tf.int32))
    nonfinite, overflow = flags[0] > 0, (flags[0] == 0) & (flags[1] > 0)
    if self._clip_gradient_norm:
      gradients, _ = tf.clip_by_global_norm(gradients, self._clip_gradient_norm,
                                            use_norm=gradient_norm)
    # Skip (do not hide) a non-finite step: zero update, counted and logged.
    gradients = [tf.where(nonfinite, tf.zeros_like(g), g) for g in gradients]
    if self._loss_scaling:
      # Back to the scaled gradients the LossScaleOptimizers unscale; on an
      # overflow every group gets NaN so that every optimiser skips the step
      # and halves its scale.
      gradients = [tf.where(overflow, tf.constant(np.nan, g.dtype), g * scale)
                   for g in gradients]
    start = 0
    for optimizer, group in self._optimizers:
      optimizer.apply_gradients(zip(gradients[start:start + len(group)], group))
      start += len(group)
    per_replica['gradient_norm'] = gradient_norm
    # The decisions are already global: count them once (first replica).
    first = tf.cast(tf.equal(replica_context.replica_id_in_sync_group, 0), tf.int64)
    per_replica['nonfinite'] = tf.cast(nonfinite, tf.int64) * first
    per_replica['overflow'] = tf.cast(overflow, tf.int64) * first
    return per_replica

  def train_step(self, iterator):
    inputs = next(iterator)
    per_replica = self._strategy.run(self._replica_step, args=(inputs,))
    reduced = {name: self._strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)
               for name, value in per_replica.items()}
    nonfinite = reduced.pop('nonfinite')
    overflow = reduced.pop('overflow')
    # The gradient norm is per replica; report the replicas' mean.
    reduced['gradient_norm'] /= self._strategy.num_replicas_in_sync
    tf.cond(nonfinite > 0,
            lambda: tf.print('WARNING: non-finite loss at step', self._global_step,
                             '(update skipped): total loss', reduced[common.TOTAL_LOSS]),
            tf.no_op)
    self._nonfinite.assign_add(nonfinite)
    self._overflow.assign_add(overflow)
    skipped = (nonfinite + overflow) > 0
    for name, value in reduced.items():
      # Skipped steps are excluded from the means (they are counted apart).
      self._sums[name].assign_add(tf.where(skipped, 0.0, value))
    self._count.assign_add(tf.where(skipped, 0.0, 1.0))
    self._global_step.assign_add(1)

  def train_loop_end(self) -> Dict[str, float]:
    count = max(float(self._count.numpy()), 1.0)
    logs = {f'losses/train_{name}': float(self._sums[name].numpy()) / count for name in _LOSS_NAMES}
    logs.update({f'matching/{name}': float(self._sums[name].numpy()) / count
                 for name in _MATCHING_NAMES})
    logs['gradient_norm'] = float(self._sums['gradient_norm'].numpy()) / count
    logs['nonfinite_loss_steps'] = int(self._nonfinite.numpy())
    if self._loss_scaling:
      logs['loss_scale'] = float(self._optimizers[0][0].dynamic_scale.numpy())
      logs['loss_scale_overflow_steps'] = int(self._overflow.numpy())
    step = int(self._global_step.numpy())
    if self._image_summary_steps and step % self._image_summary_steps == 0:
      self._write_image_summary(step)
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

  @tf.function
  def _predict_panoptic(self, clip: tf.Tensor) -> tf.Tensor:
    """float32 [T, H, W, 3] -> int32 [T, H, W] predicted panoptic maps."""
    outputs = self._model(clip[tf.newaxis], training=False)
    processed = self._post_processor(outputs, tf.shape(clip)[1:3])
    return processed[common.PANOPTIC_PRED][0]

  def _write_image_summary(self, step: int) -> None:
    """Writes the kept clip's input | ground truth | prediction panel."""
    clip = tf.convert_to_tensor(self._summary_clip)
    prediction = self._predict_panoptic(clip).numpy()
    panel = visualization.clip_summary_image(
        clip.numpy(), self._summary_label.numpy(), prediction, self._descriptor)
    # Orbit's train writer is the default one here; record whatever its
    # scalar summary interval says.
    with tf.summary.record_if(True):
      tf.summary.image(IMAGE_SUMMARY_NAME, panel[np.newaxis], step=step, max_outputs=1)


def _format_seconds(seconds: float) -> str:
  if seconds == float('inf'):
    return '?'
  seconds = int(round(seconds))
  return f'{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'
