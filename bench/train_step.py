r"""Timings of one clip-kMaX training step, of the Hungarian matching and of the loss.

The time of one training step (R50, 2 x 2 frames at 385x1249, and a tiny config)
with the matching cost shown separately.

For each model config (`tiny`: `clip_kmax.tiny_model_kwargs`; `r50`: the ClipKMaX
defaults = DeepLab2's kMaX-R50, OS4, N = 128, auxiliary semantic decoder), all with
KITTI-STEP's 19 classes:
  * train step: forward + `KMaXLoss` (all four terms, deep supervision on every
    kMaX layer: 6 auxiliary outputs for R50, 3 for tiny) + backward + AdamW
    apply, in one `tf.function`;
  * loss alone: `KMaXLoss` forward (targets, matching, all terms) on random
    model-shaped outputs (the loss does not depend on the weights), in
    `tf.function`;
  * Hungarian matching alone: `matchers.hungarian_matching` on a [B, N, N] cost
    built like the loss's (-(dice x class prob)) from those same outputs, in
    `tf.function`.
The first call (tracing + one run) is reported apart; the median is over the
following calls. Labels are synthetic KITTI-like clips (4 stuff classes, 8 thing
tubes per clip, void border): up to 12 ground-truth masks per clip.

Run (from the repo root):
  python bench/train_step.py                       # tiny and r50, 385x1249, B=2, T=2
  python bench/train_step.py --configs=tiny --repeats=5
  python bench/train_step.py --train_step_configs=tiny   # r50: loss + matching
Memory: the R50 train step at 2 x 2 x 385 x 1249 peaks at 19.7 GB resident
(1 x 2: 11.8 GB); on the shared 23 GB dev box it was once killed for memory while
other jobs ran. Use --train_step_configs=tiny or --batch=1 there.
Prints `uptime` before and after and a markdown table.

Steps/s and peak memory for the tiny and R50 configs on this CPU, float32 vs
mixed precision: with --compare_precision, every (config, dtype
policy) pair runs in its own subprocess (so that the peak resident set size,
`VmHWM` from /proc/self/status, belongs to it alone) and times the same train
step with the model built under the policy (`precision.dtype_policy_scope`)
and, for mixed_float16, AdamW wrapped in `keras.optimizers.LossScaleOptimizer`:
  python bench/train_step.py --compare_precision --configs=tiny \
      --batch=2 --frames=2 --height=65 --width=129 --repeats=10
  python bench/train_step.py --compare_precision --configs=r50 \
      --batch=1 --frames=2 --height=129 --width=257 --repeats=2
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import proc_status

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import keras  # pylint: disable=g-import-not-at-top
import numpy as np
import tensorflow as tf

from deeplab2_vkmax import common
from deeplab2_vkmax.data import dataset as dataset_lib
from deeplab2_vkmax.model import clip_kmax
from deeplab2_vkmax.model import precision
from deeplab2_vkmax.model.loss import clip_targets
from deeplab2_vkmax.model.loss import kmax_loss
from deeplab2_vkmax.model.loss import matchers

_DESCRIPTOR = dataset_lib.get_dataset_descriptor('kitti_step')
_STUFF_CLASSES = (0, 2, 8, 10)  # road, building, vegetation, sky
_CAR, _PERSON = 13, 11


def _model_kwargs(config: str):
  if config == 'tiny':
    return clip_kmax.tiny_model_kwargs(num_classes=_DESCRIPTOR.num_classes)
  if config == 'r50':
    return dict(num_classes=_DESCRIPTOR.num_classes)
  raise ValueError(f'Unknown config {config!r}; expected one of tiny, r50.')


def _make_clips(batch, frames, height, width, seed=0):
  """Images float32 [B, T, H, W, 3] and panoptic labels int32 [B, T, H, W]."""
  rng = np.random.default_rng(seed)
  images = rng.uniform(0, 255, (batch, frames, height, width, 3)).astype(
      np.float32)
  divisor = _DESCRIPTOR.panoptic_label_divisor
  labels = np.zeros((batch, frames, height, width), np.int32)
  bands = np.linspace(0, height, len(_STUFF_CLASSES) + 1).astype(int)
  for b in range(batch):
    for s, cls in enumerate(_STUFF_CLASSES):
      labels[b, :, bands[s]:bands[s + 1]] = cls * divisor
    for i in range(8):
      h = rng.integers(height // 12, height // 4)
      w = rng.integers(width // 30, width // 8)
      y, x = rng.integers(0, height - h), rng.integers(0, width - w - 5 * frames)
      cls = _CAR if i % 2 == 0 else _PERSON
      for t in range(frames):  # Same id in every frame: one tube.
        labels[b, t, y:y + h, x + 5 * t:x + 5 * t + w] = cls * divisor + i + 1
    labels[b, :, -8:] = _DESCRIPTOR.ignore_label * divisor  # Void border.
  return tf.constant(images), tf.constant(labels)


def _timed(fn, repeats):
  """(first-call seconds, median seconds of `repeats` further calls)."""
  start = time.perf_counter()
  tf.nest.map_structure(lambda t: t.numpy() if hasattr(t, 'numpy') else t, fn())
  first = time.perf_counter() - start
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    tf.nest.map_structure(lambda t: t.numpy() if hasattr(t, 'numpy') else t,
                          fn())
    times.append(time.perf_counter() - start)
  return first, statistics.median(times)


def _uptime():
  return subprocess.run(['uptime'], capture_output=True, text=True,
                        check=False).stdout.strip()


def _random_outputs(kwargs, batch, frames, height, width, seed=0):
  """Model-shaped outputs (random logits) of a ClipKMaX with `kwargs`.

  The loss and the matcher do not depend on the weights, only on these shapes,
  so they are timed without running the model.
  """
  rng = tf.random.Generator.from_seed(seed)
  stride = kwargs.get('decoder_output_stride', 4)
  out_h, out_w = -(-height // stride), -(-width // stride)
  slots = kwargs.get('num_mask_slots', 128)
  classes = kwargs['num_classes']
  depth = kwargs.get('pixel_space_output_channels', 128)
  tube = [batch, frames, out_h, out_w]

  def head():
    return {
        common.PRED_PIXEL_SPACE_MASK_LOGITS: rng.normal(tube + [slots]),
        common.PRED_TRANSFORMER_CLASS_LOGITS: rng.normal(
            [batch, slots, classes + 1]),
    }

  outputs = head()
  outputs[common.PRED_PIXEL_SPACE_NORMALIZED_FEATURE] = tf.math.l2_normalize(
      rng.normal(tube + [depth]), axis=-1)
  outputs[common.PRED_SEMANTIC_LOGITS] = rng.normal(tube + [classes])
  num_aux = sum(kwargs.get('transformer_decoder_block_counts', (2, 2, 2)))
  outputs[common.PRED_AUX_OUTPUTS] = tuple(head() for _ in range(num_aux))
  return outputs


def bench_config(config, images, labels, repeats, matcher_repeats, train_step):
  """Returns markdown rows for one model config."""
  keras.utils.set_random_seed(0)
  kwargs = _model_kwargs(config)
  num_slots = kwargs.get('num_mask_slots', 128)
  batch, frames, height, width = images.shape[:4]
  loss = kmax_loss.KMaXLoss(
      num_classes=_DESCRIPTOR.num_classes, ignore_label=_DESCRIPTOR.ignore_label,
      label_divisor=_DESCRIPTOR.panoptic_label_divisor,
      thing_class_ids=_DESCRIPTOR.thing_class_ids,
      num_mask_slots=num_slots)
  y_true = {common.PANOPTIC_LABEL: labels}
  shape = f'[{batch}x{frames}x{height}x{width}]'
  rows = []

  if train_step:
    model = clip_kmax.ClipKMaX(**kwargs)
    model(images[:1, :1], training=False)
    optimizer = keras.optimizers.AdamW(1e-4, weight_decay=0.05)
    optimizer.build(model.trainable_variables)

    # No Python control flow on tensors in these functions: autograph off.
    @tf.function(autograph=False)
    def step():
      with tf.GradientTape() as tape:
        outputs = model(images, training=True)
        losses = loss(y_true, outputs)
        total = tf.reduce_sum(losses[common.TOTAL_LOSS]) / batch
      grads = tape.gradient(total, model.trainable_variables)
      optimizer.apply_gradients(zip(grads, model.trainable_variables))
      return total

    first, median = _timed(step, repeats)
    rows.append((f'{config}: train step (fwd + loss + bwd + AdamW), {shape}, '
                 f'N = {num_slots}', median, first, repeats))

  outputs = _random_outputs(kwargs, batch, frames, height, width)
  num_aux = len(outputs[common.PRED_AUX_OUTPUTS])
  loss_fn = tf.function(lambda: loss(y_true, outputs)[common.TOTAL_LOSS],
                        autograph=False)
  first, median = _timed(loss_fn, repeats * 3)
  rows.append((f'{config}: loss alone, forward (targets + matching + 4 terms, '
               f'{num_aux} aux outputs), {shape}, N = {num_slots}', median,
               first, repeats * 3))

  # The loss's own cost matrix on those outputs: -(dice x class prob).
  targets = loss.build_targets(labels)
  gt_mask = targets[clip_targets.PIXEL_MASK_ONE_HOT]  # [B, P, N]
  non_void = targets[clip_targets.PIXEL_NON_VOID]  # [B, P]
  mask_probs = tf.nn.softmax(tf.reshape(
      outputs[common.PRED_PIXEL_SPACE_MASK_LOGITS],
      [batch, -1, num_slots]), axis=-1) * non_void[..., None]
  intersection = tf.einsum('bpm,bpn->bmn', gt_mask, mask_probs)
  dice = 2.0 * intersection / (
      tf.reduce_sum(gt_mask, 1)[:, :, None] +
      tf.reduce_sum(mask_probs, 1)[:, None, :] + 1e-9)
  class_probs = tf.nn.softmax(
      outputs[common.PRED_TRANSFORMER_CLASS_LOGITS])[..., :-1]
  class_prob = tf.einsum(
      'bmc,bnc->bmn',
      tf.one_hot(targets[clip_targets.MASK_CLASS], _DESCRIPTOR.num_classes),
      class_probs)
  cost = -dice * class_prob * targets[clip_targets.MASK_VALID][..., None]
  matcher = tf.function(lambda: matchers.hungarian_matching(cost),
                        autograph=False)
  first, median = _timed(matcher, matcher_repeats)
  rows.append((f'{config}: Hungarian matching alone, the loss\'s cost '
               f'[{batch}, {num_slots}, {num_slots}]', median, first,
               matcher_repeats))
  return rows


def _precision_child(config, policy, images, labels, repeats):
  """Times one train step of `config` under dtype `policy`; returns a dict."""
  keras.utils.set_random_seed(0)
  kwargs = _model_kwargs(config)
  batch = images.shape[0]
  loss = kmax_loss.KMaXLoss(
      num_classes=_DESCRIPTOR.num_classes, ignore_label=_DESCRIPTOR.ignore_label,
      label_divisor=_DESCRIPTOR.panoptic_label_divisor,
      thing_class_ids=_DESCRIPTOR.thing_class_ids,
      num_mask_slots=kwargs.get('num_mask_slots', 128))
  y_true = {common.PANOPTIC_LABEL: labels}
  with precision.dtype_policy_scope(policy):
    model = clip_kmax.ClipKMaX(**kwargs)
    model(images[:1, :1], training=False)
  optimizer = keras.optimizers.AdamW(1e-4, weight_decay=0.05)
  if policy == 'mixed_float16':
    optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
  optimizer.build(model.trainable_variables)
  scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)

  @tf.function(autograph=False)
  def step():
    with tf.GradientTape() as tape:
      outputs = model(images, training=True)
      total = tf.reduce_sum(loss(y_true, outputs)[common.TOTAL_LOSS]) / batch
      target = optimizer.scale_loss(total) if scaled else total
    grads = tape.gradient(target, model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    return total

  first, median = _timed(step, repeats)
  total = float(step())
  return dict(config=config, policy=policy, shape=list(images.shape[:4]),
              first_call_s=first, step_s=median, steps_per_second=1.0 / median,
              final_loss=total, peak_rss_gib=proc_status.status_kib('VmHWM') / 2**20)


def compare_precision(args):
  """Runs every (config, policy) in a subprocess; prints a markdown table."""
  print('uptime before:', _uptime(), flush=True)
  flags = [f'--batch={args.batch}', f'--frames={args.frames}', f'--height={args.height}',
           f'--width={args.width}', f'--repeats={args.repeats}']
  rows = []
  for config in args.configs.split(','):
    for policy in args.policies.split(','):
      command = [sys.executable, __file__, '--_child', f'--configs={config}',
                 f'--policies={policy}'] + flags
      run = subprocess.run(command, capture_output=True, text=True,
                           env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'), check=False)
      if run.returncode:
        sys.exit(f'{config} / {policy} failed:\n{run.stderr[-3000:]}')
      result = json.loads(run.stdout.strip().splitlines()[-1])
      print(f'  {json.dumps(result)}', flush=True)
      rows.append(result)
  print('uptime after:', _uptime())
  print(f'\nTF {tf.__version__}, Keras {keras.__version__}, {os.cpu_count()} CPU cores, graph '
        'mode (no XLA); AdamW (+ LossScaleOptimizer for mixed_float16)\n')
  print('| config | policy | input [B, T, H, W] | s / step (median) | steps / s | '
        'first call (trace + run) | peak RSS (GiB) | loss after the timed steps |')
  print('| --- | --- | --- | --- | --- | --- | --- | --- |')
  for r in rows:
    print(f'| {r["config"]} | {r["policy"]} | {r["shape"]} | {r["step_s"]:.3f} | '
          f'{r["steps_per_second"]:.2f} | {r["first_call_s"]:.1f} s | '
          f'{r["peak_rss_gib"]:.2f} | {r["final_loss"]:.3f} |')


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--configs', default='tiny,r50')
  parser.add_argument('--batch', type=int, default=2)
  parser.add_argument('--frames', type=int, default=2)
  parser.add_argument('--height', type=int, default=385)
  parser.add_argument('--width', type=int, default=1249)
  parser.add_argument('--repeats', type=int, default=3,
                      help='timed train-step calls after the first (loss: 3x)')
  parser.add_argument('--matcher_repeats', type=int, default=20)
  parser.add_argument('--train_step_configs', default='tiny,r50',
                      help='configs whose full train step is timed (the '
                      'others: loss and matching only)')
  parser.add_argument('--compare_precision', action='store_true',
                      help='steps/s and peak RSS of the train step per dtype policy '
                      '(one subprocess each)')
  parser.add_argument('--policies', default='float32,mixed_bfloat16,mixed_float16',
                      help='dtype policies of --compare_precision')
  parser.add_argument('--_child', action='store_true', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.compare_precision:
    compare_precision(args)
    return
  images, labels = _make_clips(args.batch, args.frames, args.height, args.width)
  if args._child:  # pylint: disable=protected-access
    print(json.dumps(_precision_child(args.configs, args.policies, images, labels,
                                      args.repeats)))
    return
  print('uptime before:', _uptime(), flush=True)
  rows = []
  for config in args.configs.split(','):
    config_rows = bench_config(
        config, images, labels, args.repeats, args.matcher_repeats,
        train_step=config in args.train_step_configs.split(','))
    for row in config_rows:
      print(f'  {row[0]}: median {row[1]:.3f} s, first call {row[2]:.1f} s',
            flush=True)
    rows += config_rows
  print('uptime after:', _uptime())
  print(f'\nTF {tf.__version__}, {os.cpu_count()} CPU cores, graph mode '
        '(no XLA)\n')
  print('| what | median | first call (trace + run) | calls |')
  print('| --- | --- | --- | --- |')
  for what, median, first, calls in rows:
    shown = f'{median * 1e3:.1f} ms' if median < 1.0 else f'{median:.2f} s'
    print(f'| {what} | {shown} | {first:.1f} s | {calls} |')


if __name__ == '__main__':
  main()
