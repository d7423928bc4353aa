r"""Converts Cityscapes panoptic into TFRecords of one-frame sequences (T = 1).

Official layout (after cityscapesScripts' `createPanopticImgs`):

  <cityscapes_root>/leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
  <cityscapes_root>/gtFine/cityscapes_panoptic_{train,val}.json
  <cityscapes_root>/gtFine/cityscapes_panoptic_{train,val}/<name>_gtFine_panoptic.png
      RGB id maps, id = R + 256 G + 256^2 B, 0 = void; `segments_info` in the JSON

The JSON's 19 categories (Cityscapes label ids 7..33) map to the 19 train ids in the
order of their label ids, checked by name against the `cityscapes_panoptic`
descriptor. Things (person .. bicycle, 11..18) are numbered 1, 2, ... per class
within an image; crowd (group) segments get instance 0; void is 255 * 1000.

Output: `<output_dir>/<split>-%05d-of-%05d.tfrecord`, each image its own sequence
(sequence id = image id, e.g. 'frankfurt_000000_000294', frame id '0').

CLI:
  python -m deeplab2_vkmax.data.build_cityscapes_data --cityscapes_root=... \
      --output_dir=... [--splits=train,val] [--num_shards=10]
"""

import os
from typing import Mapping, Optional, Sequence

from deeplab2_vkmax.data import dataset as dataset_lib
from deeplab2_vkmax.data import tfrecord_writer

_DATASET = 'cityscapes_panoptic'


def _image_path(cityscapes_root: str, split: str, image: Mapping) -> str:
  city = image['file_name'].split('_')[0]
  return os.path.join(cityscapes_root, 'leftImg8bit', split, city,
                      image['file_name'])


def convert_split(cityscapes_root: str, split: str, output_dir: str, *,
                  num_shards: int = 10,
                  progress: Optional[bool] = None) -> tfrecord_writer.SplitSummary:
  """Converts one Cityscapes panoptic split ('train' or 'val') into TFRecords.

  Returns the `tfrecord_writer.SplitSummary`; raises the `ValueError`s of
  `tfrecord_writer.convert_image_set`, which name the offending file.
  """
  gt_dir = os.path.join(cityscapes_root, 'gtFine')
  return tfrecord_writer.convert_image_set(
      os.path.join(gt_dir, f'cityscapes_panoptic_{split}.json'),
      lambda image: _image_path(cityscapes_root, split, image),
      os.path.join(gt_dir, f'cityscapes_panoptic_{split}'), split, output_dir,
      descriptor=dataset_lib.get_dataset_descriptor(_DATASET),
      num_shards=num_shards, allowed_formats=('PNG',), progress=progress)


def main(argv: Optional[Sequence[str]] = None) -> None:
  """CLI entry point."""
  tfrecord_writer.run_converter_cli(
      argv, root_flag='cityscapes_root',
      root_help='Cityscapes root with leftImg8bit/ and gtFine/.',
      convert_fn=lambda f, split: convert_split(
          f.cityscapes_root, split, f.output_dir, num_shards=f.num_shards))


if __name__ == '__main__':
  main()
