r"""Converts a KITTI-STEP style tree into DeepLab2-format TFRecords.

Input layout (see docs/data.md):

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

Sharding, the temporary-name-then-rename writing, image checks and the summary are
`tfrecord_writer`'s (shared by every converter): every sequence stays whole inside
one shard, frames in frame order, over `min(num_shards, num_sequences)` shards
balanced by frame count (`num_shards=0`: one shard per sequence, DeepLab2's choice
for val/test).

CLI:
  python -m deeplab2_vkmax.data.build_step_data --step_root=... --output_dir=... \
      [--splits=train,val] [--num_shards=10] [--dataset_name=kitti_step]
  Prints one summary line per split (frames, sequences, shards, classes seen).
"""

import os
from typing import List, Optional, Sequence, Tuple

from absl import flags
import numpy as np

from deeplab2_vkmax.data import dataset as dataset_lib
from deeplab2_vkmax.data import tfrecord_writer

_LABELLESS_SPLITS = ('test',)

shard_filename = tfrecord_writer.shard_filename  # Kept for callers of this module.


def _list_sequences(step_root: str,
                    split: str) -> List[tfrecord_writer.FrameSequence]:
  """Lists the split's sequences; frames carry their label path (None for test)."""
  image_dir = os.path.join(step_root, 'images', split)
  label_dir = os.path.join(step_root, 'panoptic_maps', split)
  if not os.path.isdir(image_dir):
    raise ValueError(f'Image folder {image_dir} for split {split!r} does not exist.')
  has_labels = os.path.isdir(label_dir)
  if not has_labels and split not in _LABELLESS_SPLITS:
    raise ValueError(f'Label folder {label_dir} for split {split!r} does not exist '
                     f'(only {list(_LABELLESS_SPLITS)} may come without labels).')
  sequences = []
  for sequence_id in sorted(os.listdir(image_dir), key=tfrecord_writer.natural_key):
    folder = os.path.join(image_dir, sequence_id)
    if os.path.isdir(folder):
      sequence = tfrecord_writer.list_video(
          sequence_id, folder, '.png',
          os.path.join(label_dir, sequence_id) if has_labels else None)
      if sequence.frames:
        sequences.append(sequence)
  if not sequences:
    raise ValueError(f'Split {split!r} is empty: no PNG frames under '
                     f'{image_dir}/<sequence>/.')
  return sequences


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
  rgb = tfrecord_writer.read_rgb_png(path, expected_size)
  return tfrecord_writer.compose_panoptic(
      path, rgb[..., 0], rgb[..., 1] * 256 + rgb[..., 2], descriptor)


def convert_split_with_summary(
    step_root: str, split: str, output_dir: str, num_shards: int = 10,
    dataset_name: str = 'kitti_step',
    progress: Optional[bool] = None) -> tfrecord_writer.SplitSummary:
  """`convert_split`, returning the `tfrecord_writer.SplitSummary`."""
  descriptor = dataset_lib.get_dataset_descriptor(dataset_name)
  return tfrecord_writer.write_split(
      _list_sequences(step_root, split), split, output_dir,
      descriptor=descriptor,
      label_fn=lambda frame, size: read_panoptic_label(frame.label_path,
                                                       descriptor, size),
      num_shards=num_shards, allowed_formats=('PNG',), progress=progress)


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
  summary = convert_split_with_summary(step_root, split, output_dir, num_shards,
                                       dataset_name, progress=False)
  return list(summary.shard_paths)


def _define_flags() -> None:
  flags.DEFINE_string('dataset_name', 'kitti_step', 'Dataset descriptor name.')


def main(argv: Optional[Sequence[str]] = None) -> None:
  """CLI entry point."""
  tfrecord_writer.run_converter_cli(
      argv, root_flag='step_root', root_help='KITTI-STEP style root folder.',
      convert_fn=lambda f, split: convert_split_with_summary(
          f.step_root, split, f.output_dir, f.num_shards, f.dataset_name),
      define_extra_flags=_define_flags)


if __name__ == '__main__':
  main()
