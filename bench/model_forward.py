"""clip-kMaX forward time per frame and peak memory on this machine.

Each configuration runs in its own subprocess so that the peak resident set size
(`VmHWM` in /proc/self/status, which sees TensorFlow's allocations, unlike
`tracemalloc`) belongs to that configuration alone. Inference in graph mode
(`tf.function`, no XLA), batch 1, random uint8-range frames.

  python bench/model_forward.py                      # R50, 385x1249, T = 1, 2, 4
  python bench/model_forward.py --frames=1,2 --repeats=5
  python bench/model_forward.py --tiny_train         # tiny model forward + backward
  python bench/model_forward.py --backbone=axial_resnet50 --frames=1
  python bench/model_forward.py --auxiliary_ratio --frames=1 --repeats=4

`--auxiliary_ratio` times, in one process and alternating call by call, the
inference forward that also computes the training-only outputs (deep
supervision and the auxiliary semantic branch: `auxiliary_outputs=True`, what
every forward computed before) against the default inference forward, and
prints both medians and their ratio.

Prints one markdown table row per configuration: seconds per call and per frame
(median of `--repeats` calls after one warm-up call), resident memory after the
weights are built, and the process's peak resident memory.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import proc_status


def _child(args) -> dict:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from deeplab2_vkmax.model import clip_kmax  # pylint: disable=g-import-not-at-top

  tf.random.set_seed(0)
  if args.tiny_train:
    model = clip_kmax.ClipKMaX(**clip_kmax.tiny_model_kwargs(num_classes=3))
    shape = [2, args.frames, 65, 129, 3]
  else:
    model = clip_kmax.ClipKMaX(num_classes=args.num_classes,
                               backbone_name=args.backbone)
    shape = [1, args.frames, args.height, args.width, 3]
  clip = tf.random.uniform(shape, maxval=255.0)
  model.build(shape)
  rss_weights_kib = proc_status.status_kib('VmRSS')

  if args.tiny_train:
    @tf.function
    def step(x):
      with tf.GradientTape() as tape:
        outputs = model(x, training=True)
        loss = tf.add_n([tf.reduce_mean(t) for t in tf.nest.flatten(outputs)
                         if t.dtype.is_floating])
      grads = tape.gradient(loss, model.trainable_variables)
      return [tf.convert_to_tensor(g) for g in grads if g is not None]
  else:
    @tf.function
    def step(x):
      return model(x, training=False)

  if args.auxiliary_ratio:
    return _auxiliary_ratio(model, clip, args.repeats)
  start = time.perf_counter()
  tf.nest.map_structure(lambda t: t.numpy(), step(clip))
  first_s = time.perf_counter() - start
  times = []
  for _ in range(args.repeats):
    start = time.perf_counter()
    tf.nest.map_structure(lambda t: t.numpy(), step(clip))
    times.append(time.perf_counter() - start)
  clip_s = statistics.median(times)
  return dict(shape=shape, first_call_s=first_s, clip_s=clip_s,
              frame_s=clip_s / (shape[0] * shape[1]),
              parameters=int(sum(int(tf.size(v)) for v in model.trainable_variables)),
              rss_weights_gib=rss_weights_kib / 2**20,
              peak_rss_gib=proc_status.status_kib('VmHWM') / 2**20)


def _auxiliary_ratio(model, clip, repeats: int) -> dict:
  """Median s / call with and without the training-only outputs, alternating."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  calls = {
      'with_auxiliary': tf.function(lambda x: model(x, training=False, auxiliary_outputs=True)),
      'inference': tf.function(lambda x: model(x, training=False)),
  }
  for call in calls.values():  # Trace and warm up.
    tf.nest.map_structure(lambda t: t.numpy(), call(clip))
  times = {name: [] for name in calls}
  for _ in range(repeats):
    for name, call in calls.items():
      start = time.perf_counter()
      tf.nest.map_structure(lambda t: t.numpy(), call(clip))
      times[name].append(time.perf_counter() - start)
  medians = {name: statistics.median(t) for name, t in times.items()}
  return dict(shape=list(clip.shape), medians=medians,
              ratio=medians['inference'] / medians['with_auxiliary'])


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--frames', default='1,2,4',
                      help='comma-separated clip lengths T')
  parser.add_argument('--height', type=int, default=385)
  parser.add_argument('--width', type=int, default=1249)
  parser.add_argument('--num_classes', type=int, default=19)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--backbone', default='resnet50',
                      help='ClipKMaX backbone_name (a key of clip_kmax.ENCODERS)')
  parser.add_argument('--tiny_train', action='store_true',
                      help='tiny model, [2, T, 65, 129, 3], forward + backward')
  parser.add_argument('--auxiliary_ratio', action='store_true',
                      help='time inference with vs without the training-only outputs')
  parser.add_argument('--_child', action='store_true', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args._child:  # pylint: disable=protected-access
    args.frames = int(args.frames)
    print(json.dumps(_child(args)))
    return

  print(f'load average before: {os.getloadavg()}', file=sys.stderr)
  if not args.auxiliary_ratio:
    print('| model | input [B, T, H, W, 3] | s / call | s / frame | '
          'RSS after build (GiB) | peak RSS (GiB) |')
    print('| --- | --- | --- | --- | --- | --- |')
  for frames in args.frames.split(','):
    command = [sys.executable, __file__, '--_child', f'--frames={frames}',
               f'--height={args.height}', f'--width={args.width}',
               f'--num_classes={args.num_classes}', f'--repeats={args.repeats}',
               f'--backbone={args.backbone}']
    if args.tiny_train:
      command.append('--tiny_train')
    if args.auxiliary_ratio:
      command.append('--auxiliary_ratio')
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
    run = subprocess.run(command, capture_output=True, text=True, env=env)
    if run.returncode:
      sys.exit(f'T = {frames} failed:\n{run.stderr[-3000:]}')
    result = json.loads(run.stdout.strip().splitlines()[-1])
    if args.auxiliary_ratio:
      medians = result['medians']
      print(f'{args.backbone} {result["shape"]}: with auxiliary outputs '
            f'{medians["with_auxiliary"]:.3f} s, inference {medians["inference"]:.3f} s, '
            f'ratio {result["ratio"]:.2f} (median of {args.repeats}, alternating)')
      continue
    name = ('tiny, fwd + bwd' if args.tiny_train
            else f'{args.backbone} ({result["parameters"]:,} params), fwd')
    print(f'| {name} | {result["shape"]} | {result["clip_s"]:.3f} | '
          f'{result["frame_s"]:.3f} | {result["rss_weights_gib"]:.2f} | '
          f'{result["peak_rss_gib"]:.2f} |', flush=True)
  print(f'load average after: {os.getloadavg()}', file=sys.stderr)


if __name__ == '__main__':
  main()
