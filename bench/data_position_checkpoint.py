"""Checkpoint cost of saving the training data position.

`trainer_options.checkpoint_data_position` puts the training input iterator into
every checkpoint. tf.data then serialises the iterator's buffers: the shuffle
buffer (clips of encoded frames: PNG bytes and panoptic maps) and the elements
already decoded and batched by the parallel map / prefetch. This script measures
the serialised iterator of the KITTI-STEP training pipeline
(`configs/kitti_step/clip_kmax_r50.textproto` settings: 375x1242 frames, T = 2,
crop 385x1249, scale 0.5-2.0, flip) on a generated tree (frames written by
`bench/input_pipeline.py`), for two shuffle-buffer sizes, and reports the bytes
per buffered clip and the rest (prefetched batches); the cost at the config's
shuffle buffer (256 clips) follows from them. It also measures the tiny synthetic
demo config (and, for scale, its model + AdamW checkpoint), and each save's time.

Run: `python bench/data_position_checkpoint.py [--batch_size=2]`.
"""

import argparse
import glob
import os
import sys
import tempfile
import time

import tensorflow as tf

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import input_pipeline  # pylint: disable=g-import-not-at-top,wrong-import-position

from deeplab2_vkmax import config as config_lib  # pylint: disable=g-import-not-at-top
from deeplab2_vkmax.data import build_step_data
from deeplab2_vkmax.data import clip_reader
from deeplab2_vkmax.data import dataset
from deeplab2_vkmax.trainer import data_lib
from deeplab2_vkmax.trainer import train_lib

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def iterator_bytes(dataset_, directory, batches=3):
  """Saves an iterator after `batches` batches; (bytes on disk, seconds to save)."""
  iterator = iter(dataset_)
  for _ in range(batches):
    next(iterator)
  time.sleep(2.0)  # Let prefetching fill its buffers, as during a training step.
  start = time.time()
  prefix = tf.train.Checkpoint(train_iterator=iterator).save(os.path.join(directory, 'ckpt'))
  seconds = time.time() - start
  return sum(os.path.getsize(p) for p in glob.glob(prefix + '*')), seconds


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--batch_size', type=int, default=2)
  parser.add_argument('--frames_per_sequence', type=int, default=24)
  args = parser.parse_args()
  print(f'load average {os.getloadavg()[0]:.1f}')
  with tempfile.TemporaryDirectory() as workdir:
    config = config_lib.load_experiment_config(
        os.path.join(_REPO, 'configs', 'synthetic', 'clip_kmax_tiny.textproto'))
    options = config.train_dataset_options
    options.synthetic.root_dir = os.path.join(workdir, 'synthetic')
    tiny = data_lib.build_train_dataset(options, data_lib.dataset_descriptor(options),
                                        options.batch_size)
    size, seconds = iterator_bytes(tiny, os.path.join(workdir, 'tiny'))
    print(f'tiny synthetic demo (frames 32x64 -> crop 65x129, batch {options.batch_size}, '
          f'shuffle {options.shuffle_buffer_size}): {size / 1e6:.1f} MB, save {seconds:.2f} s')
    experiment = train_lib.build_experiment(config, workdir)
    (optimizer, variables), = train_lib.build_optimizers(experiment)
    optimizer.build(variables)
    prefix = tf.train.Checkpoint(model=experiment.model, optimizer=optimizer).save(
        os.path.join(workdir, 'model', 'ckpt'))
    model_size = sum(os.path.getsize(p) for p in glob.glob(prefix + '*'))
    print(f'tiny demo model + AdamW state checkpoint: {model_size / 1e6:.1f} MB')

    root = os.path.join(workdir, 'kitti_step')
    input_pipeline.write_kitti_tree(root, 2, args.frames_per_sequence)
    paths = build_step_data.convert_split(root, 'train', os.path.join(workdir, 'records'),
                                          num_shards=2)
    descriptor = dataset.get_dataset_descriptor('kitti_step')
    sizes = {}
    for buffer in (4, 16):
      kitti = clip_reader.build_clip_dataset(
          paths, descriptor=descriptor, clip_length=2, batch_size=args.batch_size,
          crop_size=input_pipeline.CROP, is_training=True, min_scale_factor=0.5,
          max_scale_factor=2.0, scale_factor_step_size=0.1, flip=True, max_thing_id=128,
          shuffle_buffer=buffer, seed=0, deterministic=True)
      sizes[buffer], seconds = iterator_bytes(kitti, os.path.join(workdir, f'kitti{buffer}'))
      print(f'KITTI-STEP 375x1242, batch {args.batch_size}, shuffle buffer {buffer} clips: '
            f'{sizes[buffer] / 1e6:.1f} MB, save {seconds:.2f} s')
    per_clip = (sizes[16] - sizes[4]) / 12
    rest = sizes[4] - 4 * per_clip
    print(f'per buffered clip {per_clip / 1e6:.2f} MB; rest (prefetched batches) '
          f'{rest / 1e6:.1f} MB; at shuffle buffer 256: {(rest + 256 * per_clip) / 1e9:.2f} GB')


if __name__ == '__main__':
  main()
