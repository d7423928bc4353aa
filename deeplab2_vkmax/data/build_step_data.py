r"""Converts a KITTI-STEP style tree into DeepLab2-format TFRecords.

Input layout (see /work/shared/reference/datasets.md):

  <step_root>/images/<split>/<seq>/<frame>.png          RGB
  <step_root>/panoptic_maps/<split>/<seq>/<frame>.png   R = semantic id (255 void),
                                                        G = inst // 256, B = inst % 256

Output: `<output_dir>/<split>-%05d-of-%05d.tfrecord`, one `tf.train.Example` per
frame with DeepLab2's keys (`deeplab2_vkmax.common.KEY_*`):

  image/encoded          the PNG bytes, as read from disk
  image/filename         '<seq>_<frame>' (no extension; safe as an output file name)
  image/format           'png'
  image/height, image/width, image/channels (3)
  image/segmentation/class/encoded   panoptic label, raw little-endian int32 bytes of
                         `semantic * label_divisor + instance` (absent for 'test')
  image/segmentation/class/format    'raw'
  video/sequence_id      the sequence folder name, e.g. '0002'
  video/frame_id         the frame file name without extension, e.g. '000012'
                         (a string, as in DeepLab2; the clip reader parses it as an
                         integer for its consecutive-frame check)

Sharding keeps every sequence whole inside one shard, frames in frame order, so the
clip reader can window over each shard's contiguous records; sequences are spread
over `min(num_shards, num_sequences)` shards balanced by frame count
(`num_shards=0`: one shard per sequence, DeepLab2's choice for val/test).
Shards are written under temporary names and renamed when all succeeded; older
shards of the same split in `output_dir` are removed then.

CLI:
  python -m deeplab2_vkmax.data.build_step_data --step_root=... --output_dir=... \
      [--splits=train,val] [--num_shards=10] [--dataset_name=kitti_step]
"""

import io
import os
import re
import uuid
from typing import List, Optional, Sequence, Tuple

from absl import app
from absl import flags
from absl import logging
import numpy as np
from PIL import Image
import tensorflow as tf

from deeplab2_vkmax import common
from deeplab2_vkmax.data import dataset as dataset_lib

_LABELLESS_SPLITS = ('test',)
_SHARD_SUFFIX = r'-\d{5}-of-\d{5}\.tfrecord'


def shard_filename(split: str, shard: int, num_shards: int) -> str:
  """'{split}-%05d-of-%05d.tfrecord'."""
  return '%s-%05d-of-%05d.tfrecord' % (split, shard, num_shards)


def _natural_key(name: str) -> Tuple[int, int, str]:
  stem = os.path.splitext(name)[0]
  return (0, int(stem), name) if stem.isdigit() else (1, 0, name)


def _list_frames(step_root: str, split: str) -> List[Tuple[str, List[Tuple[str, str, Optional[str]]]]]:
  """Returns [(sequence_id, [(frame_id, image_path, label_path or None)])]."""
  image_dir = os.path.join(step_root, 'images', split)
  label_dir = os.path.join(step_root, 'panoptic_maps', split)
  if not os.path.isdir(image_dir):
    raise ValueError(f'Image folder {image_dir} for split {split!r} does not exist.')
  has_labels = os.path.isdir(label_dir)
  if not has_labels and split not in _LABELLESS_SPLITS:
    raise ValueError(f'Label folder {label_dir} for split {split!r} does not exist '
                     f'(only {list(_LABELLESS_SPLITS)} may come without labels).')
  sequences = []
  for sequence_id in sorted(os.listdir(image_dir), key=_natural_key):
    folder = os.path.join(image_dir, sequence_id)
    if not os.path.isdir(folder):
      continue
    frames = []
    for name in sorted(os.listdir(folder), key=_natural_key):
      if not name.lower().endswith('.png'):
        continue
      image_path = os.path.join(folder, name)
      label_path = None
      if has_labels:
        label_path = os.path.join(label_dir, sequence_id, name)
        if not os.path.isfile(label_path):
          raise ValueError(f'{image_path}: no label; expected {label_path}.')
      frames.append((os.path.splitext(name)[0], image_path, label_path))
    if frames:
      sequences.append((sequence_id, frames))
  if not sequences:
    raise ValueError(f'Split {split!r} is empty: no PNG frames under '
                     f'{image_dir}/<sequence>/.')
  return sequences


def _open_png(path: str, data: bytes) -> Image.Image:
  try:
    image = Image.open(io.BytesIO(data))
    image.load()
  except Exception as e:  # PIL raises several types for broken files.
    raise ValueError(f'{path}: corrupt or unreadable image ({e}).') from e
  return image


def read_panoptic_label(path: str, descriptor: dataset_lib.DatasetDescriptor,
                        expected_size: Optional[Tuple[int, int]] = None) -> np.ndarray:
  """Reads and validates a KITTI-STEP panoptic PNG.

  Args:
    path: Label PNG (R = semantic, G = instance // 256, B = instance % 256).
    descriptor: Data set descriptor (classes, ignore label, divisor).
    expected_size: (height, width) the label must have, e.g. its image's.

  Returns:
    int32 [H, W] panoptic labels `semantic * divisor + instance`.

  Raises:
    ValueError: Naming `path`, for an unreadable file, a non-RGB mode, a size
      mismatch, an unknown class id or an instance id >= the label divisor.
  """
  with open(path, 'rb') as f:
    label = _open_png(path, f.read())
  if label.mode not in ('RGB', 'RGBA'):
    raise ValueError(f'{path}: panoptic map must be an RGB PNG, got mode '
                     f'{label.mode!r}.')
  rgb = np.asarray(label.convert('RGB')).astype(np.int32)
  if expected_size is not None and rgb.shape[:2] != tuple(expected_size):
    raise ValueError(f'{path}: label size {rgb.shape[0]}x{rgb.shape[1]} (HxW) does '
                     f'not match its image, {expected_size[0]}x{expected_size[1]}.')
  semantic = rgb[..., 0]
  instance = rgb[..., 1] * 256 + rgb[..., 2]
  classes = np.unique(semantic)
  unknown = [int(c) for c in classes
             if c != descriptor.ignore_label and not 0 <= c < descriptor.num_classes]
  if unknown:
    raise ValueError(f'{path}: unknown class ids {unknown}; expected ids in [0, '
                     f'{descriptor.num_classes}) or the ignore label '
                     f'{descriptor.ignore_label} ({descriptor.name}).')
  if instance.max() >= descriptor.panoptic_label_divisor:
    raise ValueError(f'{path}: instance id {int(instance.max())} does not fit the '
                     f'panoptic label divisor {descriptor.panoptic_label_divisor}.')
  return semantic * descriptor.panoptic_label_divisor + instance


def _bytes_feature(value: bytes) -> tf.train.Feature:
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int_feature(value: int) -> tf.train.Feature:
  return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))


def make_example(image_path: str, label_path: Optional[str], sequence_id: str,
                 frame_id: str,
                 descriptor: dataset_lib.DatasetDescriptor) -> tf.train.Example:
  """Builds the `tf.train.Example` of one frame (keys in the module docstring).

  Raises:
    ValueError: Naming the file, for a corrupt image or a bad label.
  """
  with open(image_path, 'rb') as f:
    encoded = f.read()
  image = _open_png(image_path, encoded)
  if image.format != 'PNG':
    raise ValueError(f'{image_path}: expected a PNG image, got {image.format}.')
  width, height = image.size
  feature = {
      common.KEY_ENCODED_IMAGE: _bytes_feature(encoded),
      common.KEY_IMAGE_FILENAME: _bytes_feature(
          f'{sequence_id}_{frame_id}'.encode()),
      common.KEY_IMAGE_FORMAT: _bytes_feature(b'png'),
      common.KEY_IMAGE_HEIGHT: _int_feature(height),
      common.KEY_IMAGE_WIDTH: _int_feature(width),
      common.KEY_IMAGE_CHANNELS: _int_feature(3),
      common.KEY_SEQUENCE_ID: _bytes_feature(sequence_id.encode()),
      common.KEY_FRAME_ID: _bytes_feature(frame_id.encode()),
  }
  if label_path is not None:
    panoptic = read_panoptic_label(label_path, descriptor, (height, width))
    feature[common.KEY_ENCODED_LABEL] = _bytes_feature(
        panoptic.astype('<i4').tobytes())
    feature[common.KEY_LABEL_FORMAT] = _bytes_feature(b'raw')
  return tf.train.Example(features=tf.train.Features(feature=feature))


def _assign_shards(sizes: Sequence[int], num_shards: int) -> List[List[int]]:
  """Sequence indices per shard: whole sequences, largest first to the lightest."""
  count = len(sizes) if num_shards <= 0 else min(num_shards, len(sizes))
  shards = [[] for _ in range(count)]
  loads = [0] * count
  for index in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
    target = min(range(count), key=lambda s: (loads[s], s))
    shards[target].append(index)
    loads[target] += sizes[index]
  return [sorted(s) for s in shards]


def convert_split(step_root: str, split: str, output_dir: str,
                  num_shards: int = 10,
                  dataset_name: str = 'kitti_step') -> List[str]:
  """Converts one split of a KITTI-STEP style tree into TFRecord shards.

  Args:
    step_root: Root holding `images/` and `panoptic_maps/`.
    split: Split folder name ('train', 'val', 'test'); 'test' may lack labels.
    output_dir: Destination folder (created).
    num_shards: Requested shard count; capped at the number of sequences since a
      sequence never straddles shards; 0 means one shard per sequence.
    dataset_name: Descriptor name giving classes, ignore label and divisor.

  Returns:
    The written shard paths, in shard order.

  Raises:
    ValueError: Naming the file for a missing label, an image/label size mismatch,
      a corrupt PNG or an unknown class id; for an empty or missing split.
  """
  descriptor = dataset_lib.get_dataset_descriptor(dataset_name)
  sequences = _list_frames(step_root, split)
  assignment = _assign_shards([len(frames) for _, frames in sequences], num_shards)
  os.makedirs(output_dir, exist_ok=True)
  token = uuid.uuid4().hex
  final_paths, temp_paths = [], []
  try:
    for shard, members in enumerate(assignment):
      final = os.path.join(output_dir, shard_filename(split, shard, len(assignment)))
      temp = f'{final}.tmp-{token}'
      final_paths.append(final)
      temp_paths.append(temp)
      with tf.io.TFRecordWriter(temp) as writer:
        for index in members:
          sequence_id, frames = sequences[index]
          for frame_id, image_path, label_path in frames:
            example = make_example(image_path, label_path, sequence_id, frame_id,
                                   descriptor)
            writer.write(example.SerializeToString())
    # Shards of an earlier conversion with another shard count would mix in.
    # Same-named shards are replaced atomically below.
    own = re.compile(re.escape(split) + _SHARD_SUFFIX)
    keep = {os.path.basename(p) for p in final_paths}
    for old in os.listdir(output_dir):
      if own.fullmatch(old) and old not in keep:
        os.remove(os.path.join(output_dir, old))
    for temp, final in zip(temp_paths, final_paths):
      os.replace(temp, final)
  finally:
    for temp in temp_paths:
      if os.path.exists(temp):
        os.remove(temp)
  logging.info('Wrote %d frames of %d sequences of split %s into %d shards in %s.',
               sum(len(f) for _, f in sequences), len(sequences), split,
               len(final_paths), output_dir)
  return final_paths


def _define_flags() -> None:
  # Defined when the CLI runs, not at import: the trainer imports convert_split.
  flags.DEFINE_string('step_root', None, 'KITTI-STEP style root folder.')
  flags.DEFINE_string('output_dir', None, 'Where to write the TFRecords.')
  flags.DEFINE_list('splits', ['train', 'val'], 'Splits to convert.')
  flags.DEFINE_integer('num_shards', 10,
                       'Shards per split (capped at the number of sequences; 0 = '
                       'one per sequence).')
  flags.DEFINE_string('dataset_name', 'kitti_step', 'Dataset descriptor name.')


def _run(unused_argv) -> None:
  if not flags.FLAGS.step_root or not flags.FLAGS.output_dir:
    raise app.UsageError('--step_root and --output_dir are required.')
  for split in flags.FLAGS.splits:
    paths = convert_split(flags.FLAGS.step_root, split, flags.FLAGS.output_dir,
                          flags.FLAGS.num_shards, flags.FLAGS.dataset_name)
    print(f'{split}: {len(paths)} shards in {flags.FLAGS.output_dir}')


def main(argv: Optional[Sequence[str]] = None) -> None:
  """CLI entry point."""
  _define_flags()
  app.run(_run, argv=argv)


if __name__ == '__main__':
  main()
