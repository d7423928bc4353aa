r"""Post-processing speed: today's ClipPostProcessor against a git ref's, same inputs.

  python bench/post_processing.py --ref=HEAD~1 [--run_dir=<demo run>] [--rounds=20]

Inputs (each timed for both versions, alternating call by call, tf.function):
- `demo`: the predictions of a trained demo model (`--run_dir`, a run folder of
  `python trainer/train.py --config_file=configs/synthetic/clip_kmax_tiny.textproto`
  holding config.textproto and checkpoints) on 7 clips (T = 2, 65x129) of a
  synthetic val sequence, with the run's own post-processing options. Skipped
  without `--run_dir`.
- `r50`: mask logits shaped like the R50 model's at 385x1249 (N = 128, T = 2,
  decoder output 97x313) holding 20 confident blob-shaped slots on a background of
  unconfident ones, as a trained model's (random weights keep no segment, which
  would time an empty merge), maskwise with the KITTI-STEP config's thresholds.

`--ref`'s `model/post_processor/clip_post_processor.py` is loaded with `git show`.
Prints the median ms per call of each and their ratio, and checks that the
panoptic maps are equal.
"""

import argparse
import os
import statistics
import time

import numpy as np
import tensorflow as tf

from deeplab2_vkmax import common
from deeplab2_vkmax import config as config_lib
from deeplab2_vkmax.data import dataset as dataset_lib
from deeplab2_vkmax.data import synthetic
from deeplab2_vkmax import builder

import git_ref  # bench/git_ref.py

_PATH = 'deeplab2_vkmax/model/post_processor/clip_post_processor.py'
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _demo_inputs(run_dir: str):
  """(post-processor options, [model outputs], output size) of a trained demo run."""
  config = config_lib.load_experiment_config(os.path.join(run_dir, common.CONFIG_FILENAME))
  descriptor = dataset_lib.get_dataset_descriptor(config.train_dataset_options.dataset)
  model = builder.build_model(config, descriptor)
  height, width = config.eval_dataset_options.crop_size
  model(tf.zeros([1, 2, height, width, 3]), training=False)
  tf.train.Checkpoint(**model.checkpoint_items).read(
      tf.train.latest_checkpoint(run_dir)).expect_partial().assert_existing_objects_matched()
  params = synthetic.SyntheticParams(num_val_sequences=1, val_frames=8, height=height,
                                     width=width)
  frames = synthetic.generate_sequence(params, 'val', 0).images.astype(np.float32)
  outputs = [model(tf.constant(frames[i:i + 2][None]), training=False) for i in range(7)]
  return builder.build_post_processor(config, descriptor), outputs, (height, width)


def _r50_inputs():
  """Blob-shaped logits of 20 confident slots out of 128, R50 shapes at 385x1249."""
  rng = np.random.default_rng(0)
  frames, height, width, slots, classes = 2, 97, 313, 128, 19
  ys, xs = np.mgrid[0:height, 0:width]
  logits = np.full((1, frames, height, width, slots), -5.0, np.float32)
  for n in range(20):
    cy, cx, radius = rng.integers(0, height), rng.integers(0, width), rng.integers(10, 40)
    logits[0, ..., n] += 30 * np.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / (2 * radius ** 2))
  logits += rng.normal(0, 0.2, logits.shape).astype(np.float32)
  class_logits = rng.normal(0, 1, (1, slots, classes + 1)).astype(np.float32)
  class_logits[0, np.arange(20), rng.integers(0, classes, 20)] += 8
  outputs = {common.PRED_PIXEL_SPACE_MASK_LOGITS: tf.constant(logits),
             common.PRED_TRANSFORMER_CLASS_LOGITS: tf.constant(class_logits),
             common.PRED_QUERY_EMBEDDINGS: tf.zeros([1, slots, 8])}
  config = config_lib.load_experiment_config(
      os.path.join(_REPO, 'configs', 'kitti_step', 'clip_kmax_r50.textproto'))
  descriptor = dataset_lib.get_dataset_descriptor('kitti_step')
  return builder.build_post_processor(config, descriptor), [outputs], (385, 1249)


def _rebuilt(post_processor, module):
  """The same options in `module`'s ClipPostProcessor."""
  names = ('num_classes', 'label_divisor', 'thing_class_ids', 'ignore_label',
           'pixel_confidence_threshold', 'transformer_class_confidence_threshold_thing',
           'transformer_class_confidence_threshold_stuff', 'overlapping_threshold',
           'reorder_class_weight', 'reorder_mask_weight', 'thing_area_limit',
           'stuff_area_limit')
  kwargs = {name: getattr(post_processor, name) for name in names}
  return module.ClipPostProcessor(post_processing=post_processor.post_processing, **kwargs)


def _bench(name, post_processor, outputs, size, old_module, rounds):
  versions = {'now': post_processor, 'ref': _rebuilt(post_processor, old_module)}
  functions = {k: tf.function(lambda o, p=p: p(o, size)) for k, p in versions.items()}
  maps = {k: [f(o)[common.PANOPTIC_PRED].numpy() for o in outputs]
          for k, f in functions.items()}
  equal = all(np.array_equal(a, b) for a, b in zip(maps['now'], maps['ref']))
  segments = np.mean([len(np.unique(m)) for m in maps['now']])
  times = {k: [] for k in functions}
  for _ in range(rounds):
    for output in outputs:
      for key, function in functions.items():
        start = time.perf_counter()
        function(output)[common.PANOPTIC_PRED].numpy()
        times[key].append(time.perf_counter() - start)
  now, ref = (statistics.median(times[k]) for k in ('now', 'ref'))
  print(f'| {name} | {segments:.1f} | {1000 * ref:.2f} | {1000 * now:.2f} | '
        f'{now / ref:.3f}x | {"yes" if equal else "NO"} |')


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--ref', default='HEAD~1')
  parser.add_argument('--run_dir', default='')
  parser.add_argument('--rounds', type=int, default=20)
  args = parser.parse_args()
  old_module = git_ref.module_at(args.ref, _PATH)
  print(f'| input | ids per clip | ref {args.ref} ms | now ms | now / ref | maps equal |')
  print('| --- | --- | --- | --- | --- | --- |')
  if args.run_dir:
    _bench('demo (trained), T=2, 65x129', *_demo_inputs(args.run_dir), old_module,
           args.rounds)
  _bench('R50 shapes, T=2, 385x1249, N=128', *_r50_inputs(), old_module,
         max(args.rounds // 4, 3))


if __name__ == '__main__':
  main()
