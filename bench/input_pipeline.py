"""Throughput of the clip input pipeline on KITTI-STEP-sized frames.

Writes a KITTI-STEP tree of 375 x 1242 frames (PNG images with natural-image-like
compression, panoptic maps with stuff, things and void) into a temporary folder,
converts it with `build_step_data`, and times `clip_reader.build_clip_dataset` with
the KITTI-STEP training settings of `configs/kitti_step/clip_kmax_r50.textproto`:
T = 2, random scale 0.5-2.0 (step 0.1), random crop 385 x 1249 with ignore padding,
horizontal flip, `max_thing_id` 128. The evaluation path (no augmentation, fixed
pad / crop) is timed too, for reference.

Run: `python bench/input_pipeline.py [--batch_size=2] [--seconds=30]`.
Reports clips per second (wall time, after warm-up batches) and the process CPU
time per clip; on the shared 2-core dev machines wall time depends on the load,
so the script prints the 1-minute load average next to the numbers.
"""

import argparse
import os
import tempfile
import time

import numpy as np
from PIL import Image

from deeplab2_vkmax.data import build_step_data
from deeplab2_vkmax.data import clip_reader
from deeplab2_vkmax.data import dataset

HEIGHT, WIDTH = 375, 1242
CROP = (385, 1249)


def _image(rng):
  """Smooth colour field + fine texture: compresses like a photo (~0.6 MB PNG)."""
  coarse = rng.integers(0, 256, (12, 40, 3), dtype=np.uint8)
  smooth = np.asarray(Image.fromarray(coarse).resize((WIDTH, HEIGHT),
                                                     Image.BILINEAR), np.int16)
  texture = rng.integers(-12, 13, (HEIGHT, WIDTH, 3), dtype=np.int16)
  return np.clip(smooth + texture, 0, 255).astype(np.uint8)


def _panoptic_rgb(rng):
  semantic = np.zeros((HEIGHT, WIDTH), np.int32)  # road
  semantic[:HEIGHT // 3] = 10  # sky
  semantic[HEIGHT // 3:HEIGHT // 2, :WIDTH // 4] = 8  # vegetation
  instance = np.zeros_like(semantic)
  for k in range(30):
    y, x = rng.integers(0, HEIGHT - 60), rng.integers(0, WIDTH - 120)
    semantic[y:y + 50, x:x + 100] = 13 if k % 3 else 11
    instance[y:y + 50, x:x + 100] = k + 1
  semantic[-10:] = 255  # void
  instance[-10:] = 0
  return np.stack([semantic, instance // 256, instance % 256], -1).astype(np.uint8)


def write_kitti_tree(root, num_sequences, frames_per_sequence, seed=0):
  rng = np.random.default_rng(seed)
  for s in range(num_sequences):
    for f in range(frames_per_sequence):
      for folder, array in (('images', _image(rng)),
                            ('panoptic_maps', _panoptic_rgb(rng))):
        path = os.path.join(root, folder, 'train', '%04d' % s, '%06d.png' % f)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(array).save(path)


def time_pipeline(pattern, descriptor, batch_size, seconds, warmup_batches,
                  is_training):
  data = clip_reader.build_clip_dataset(
      pattern, descriptor=descriptor, clip_length=2, batch_size=batch_size,
      crop_size=CROP, is_training=is_training, min_scale_factor=0.5,
      max_scale_factor=2.0, scale_factor_step_size=0.1, flip=True,
      max_thing_id=128, repeat=True, seed=0)
  iterator = iter(data)
  for _ in range(warmup_batches):
    next(iterator)
  batches = 0
  wall0, cpu0 = time.perf_counter(), time.process_time()
  while time.perf_counter() - wall0 < seconds:
    next(iterator)
    batches += 1
  wall = time.perf_counter() - wall0
  cpu = time.process_time() - cpu0
  clips = batches * batch_size
  return clips / wall, cpu / clips, clips


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--batch_size', type=int, default=2)
  parser.add_argument('--seconds', type=float, default=30.0)
  parser.add_argument('--warmup_batches', type=int, default=3)
  parser.add_argument('--num_sequences', type=int, default=2)
  parser.add_argument('--frames_per_sequence', type=int, default=12)
  args = parser.parse_args()
  descriptor = dataset.get_dataset_descriptor('kitti_step')
  with tempfile.TemporaryDirectory() as workdir:
    root = os.path.join(workdir, 'kitti_step')
    write_kitti_tree(root, args.num_sequences, args.frames_per_sequence)
    image_bytes = os.path.getsize(
        os.path.join(root, 'images', 'train', '0000', '000000.png'))
    paths = build_step_data.convert_split(root, 'train',
                                          os.path.join(workdir, 'records'),
                                          num_shards=args.num_sequences)
    print(f'{args.num_sequences} x {args.frames_per_sequence} frames '
          f'{HEIGHT}x{WIDTH}, image PNG {image_bytes / 1e6:.2f} MB, '
          f'{len(paths)} shards; T = 2, crop {CROP}, batch {args.batch_size}, '
          f'{os.cpu_count()} CPUs visible')
    for name, is_training in (('train (scale 0.5-2.0, crop, flip)', True),
                              ('eval (pad / crop only)', False)):
      rate, cpu_per_clip, clips = time_pipeline(
          paths, descriptor, args.batch_size, args.seconds, args.warmup_batches,
          is_training)
      load = os.getloadavg()[0]
      print(f'{name}: {rate:.2f} clips/s over {clips} clips, '
            f'{cpu_per_clip * 1e3:.0f} ms CPU per clip, load average {load:.1f}')


if __name__ == '__main__':
  main()
