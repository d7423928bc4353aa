r"""Converts COCO panoptic into TFRecords of one-frame sequences (T = 1 pre-training).

Official layout:

  <coco_root>/{train,val}2017/<image>.jpg
  <coco_root>/annotations/panoptic_{train,val}2017.json
  <coco_root>/annotations/panoptic_{train,val}2017/<image>.png   RGB id maps,
      id = R + 256 G + 256^2 B, 0 = void; per image `segments_info` in the JSON
  (`panoptic_{split}2017/` directly under `<coco_root>` is accepted too.)

The 133 categories map to contiguous ids 0..132 in the order of their COCO ids (the
80 things, then the 53 stuff classes), checked by name against the `coco_panoptic`
descriptor. Things are numbered 1, 2, ... per class within an image; crowd segments
get instance 0 of their thing class; void is 255 * 1000.

Output: `<output_dir>/<split>-%05d-of-%05d.tfrecord`, each image its own sequence
(sequence id = COCO image id, frame id '0').

CLI:
  python -m deeplab2_vkmax.data.build_coco_data --coco_root=... --output_dir=... \
      [--splits=train,val] [--num_shards=10]
"""

import os
from typing import Optional, Sequence

from deeplab2_vkmax.data import dataset as dataset_lib
from deeplab2_vkmax.data import tfrecord_writer

_DATASET = 'coco_panoptic'


def _mask_dir(coco_root: str, split: str) -> str:
  nested = os.path.join(coco_root, 'annotations', f'panoptic_{split}2017')
  if os.path.isdir(nested):
    return nested
  top = os.path.join(coco_root, f'panoptic_{split}2017')
  if os.path.isdir(top):
    return top
  raise ValueError(f'Panoptic PNG folder {nested} (or {top}) does not exist; unzip '
                   f'annotations/panoptic_{split}2017.zip there.')


def convert_split(coco_root: str, split: str, output_dir: str, *,
                  num_shards: int = 10,
                  progress: Optional[bool] = None) -> tfrecord_writer.SplitSummary:
  """Converts one COCO panoptic split ('train' or 'val') into TFRecord shards.

  Returns the `tfrecord_writer.SplitSummary`; raises the `ValueError`s of
  `tfrecord_writer.convert_image_set`, which name the offending file.
  """
  return tfrecord_writer.convert_image_set(
      os.path.join(coco_root, 'annotations', f'panoptic_{split}2017.json'),
      lambda image: os.path.join(coco_root, f'{split}2017', image['file_name']),
      _mask_dir(coco_root, split), split, output_dir,
      descriptor=dataset_lib.get_dataset_descriptor(_DATASET),
      num_shards=num_shards, allowed_formats=('JPEG', 'PNG'), progress=progress)


def main(argv: Optional[Sequence[str]] = None) -> None:
  """CLI entry point."""
  tfrecord_writer.run_converter_cli(
      argv, root_flag='coco_root',
      root_help='COCO root with {train,val}2017/ and annotations/.',
      convert_fn=lambda f, split: convert_split(
          f.coco_root, split, f.output_dir, num_shards=f.num_shards))


if __name__ == '__main__':
  main()
