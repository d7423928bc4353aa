r"""Converts VSPW (video semantic segmentation) into TFRecords the clip reader reads.

Official layout (see docs/data.md):

  <vspw_root>/data/<video>/origin/<frame>.jpg
  <vspw_root>/data/<video>/mask/<frame>.png     8-bit: 0 = others, 1..124 classes,
                                                 255 = void
  <vspw_root>/{train,val,test}.txt               video names, one per line

Semantic only: every pixel gets instance 0, panoptic = class * 1000, void
255 * 1000. With `--remap_others_to_void` (default, the official README's
"0 -> 255, then minus 1"): 0 and 255 become void and 1..124 become classes 0..123.
Without it the masks are taken as already remapped (0..123 classes, 255 void), for
users who ran the official remap themselves. The test split has no masks and is
written without labels.

Output: `<output_dir>/<split>-%05d-of-%05d.tfrecord` with `build_step_data`'s keys;
sequence id = video name; frame id = position in the video ('000000', ...), the file
stem kept in `image/filename` (see `tfrecord_writer.renumber_frames`).

CLI:
  python -m deeplab2_vkmax.data.build_vspw_data --vspw_root=.../VSPW_480p \
      --output_dir=... [--splits=train,val] [--noremap_others_to_void]
"""

import os
from typing import Optional, Sequence

from absl import flags
import numpy as np

from deeplab2_vkmax.data import dataset as dataset_lib
from deeplab2_vkmax.data import tfrecord_writer

_DATASET = 'vspw'
_LABELLESS_SPLITS = ('test',)
_RAW_OTHERS = 0
_RAW_VOID = 255


def mask_to_panoptic(values: np.ndarray, path: str,
                     descriptor: dataset_lib.DatasetDescriptor,
                     remap_others_to_void: bool = True) -> np.ndarray:
  """VSPW mask values (int32 [H, W]) -> panoptic labels (instance 0).

  Raises:
    ValueError: Naming `path`, for a value that is no class after the remap.
  """
  if values.size and int(values.max()) > _RAW_VOID:
    raise ValueError(f'{path}: mask value {int(values.max())} above {_RAW_VOID}; '
                     f'VSPW masks are 8-bit.')
  if remap_others_to_void:
    void = (values == _RAW_OTHERS) | (values == _RAW_VOID)
    semantic = np.where(void, descriptor.ignore_label, values - 1)
  else:
    semantic = values
  return tfrecord_writer.compose_panoptic(path, semantic, np.zeros_like(semantic),
                                          descriptor)


def convert_split(vspw_root: str, split: str, output_dir: str, *,
                  remap_others_to_void: bool = True, num_shards: int = 10,
                  progress: Optional[bool] = None) -> tfrecord_writer.SplitSummary:
  """Converts one VSPW split into TFRecord shards.

  Args:
    vspw_root: The `VSPW_480p/` folder.
    split: 'train', 'val' or 'test' (test: no masks, written without labels).
    output_dir: Destination folder (created).
    remap_others_to_void: Official remap (see module docstring).
    num_shards: Requested shards (capped at the number of videos; 0 = one each).
    progress: Progress bar; None = only on a terminal.

  Returns:
    The `tfrecord_writer.SplitSummary`.

  Raises:
    ValueError: Naming the file for a missing frame or mask, a size mismatch, a
      corrupt image or mask, an unknown class id; for an empty split.
  """
  descriptor = dataset_lib.get_dataset_descriptor(_DATASET)
  sequences = tfrecord_writer.list_split_videos(
      os.path.join(vspw_root, f'{split}.txt'), split,
      lambda video: os.path.join(vspw_root, 'data', video, 'origin'),
      lambda video: os.path.join(vspw_root, 'data', video, 'mask'), '.jpg',
      _LABELLESS_SPLITS)

  def label_fn(frame, size):
    values = tfrecord_writer.read_integer_png(frame.label_path, size)
    return mask_to_panoptic(values, frame.label_path, descriptor,
                            remap_others_to_void)

  return tfrecord_writer.write_split(
      sequences, split, output_dir, descriptor=descriptor, label_fn=label_fn,
      num_shards=num_shards, allowed_formats=('JPEG', 'PNG'), progress=progress)


def _define_flags() -> None:
  flags.DEFINE_bool('remap_others_to_void', True,
                    'Official remap: 0 (others) and 255 -> void, 1..124 -> 0..123. '
                    'False: masks already hold 0..123 and 255 void.')


def main(argv: Optional[Sequence[str]] = None) -> None:
  """CLI entry point."""
  tfrecord_writer.run_converter_cli(
      argv, root_flag='vspw_root', root_help='The VSPW_480p/ folder.',
      convert_fn=lambda f, split: convert_split(
          f.vspw_root, split, f.output_dir,
          remap_others_to_void=f.remap_others_to_void, num_shards=f.num_shards),
      define_extra_flags=_define_flags)


if __name__ == '__main__':
  main()
