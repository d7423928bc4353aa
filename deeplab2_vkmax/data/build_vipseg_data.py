r"""Converts VIPSeg (raw or 720p) into TFRecords the clip reader reads.

Two official layouts (see docs/data.md):

raw (`--variant=raw`):
  <vipseg_root>/imgs/<video>/<frame %08d>.jpg
  <vipseg_root>/panomasks/<video>/<frame>.png   single-channel 8/16-bit values:
      0 = void; v < 125: stuff or thing category v (1-based), no instance;
      v >= 125: category v // 100 (1-based), object v % 100 (things)
  <vipseg_root>/{train,val,test}.txt             video names, one per line
  Class id = category - 1 (0-based, VIPSeg's category order). A thing object v % 100
  = k becomes instance k + 1, because instance 0 means crowd / untracked here and
  VIPSeg numbers real objects from 0 (e.g. 6100, 6101). A thing category written
  below 125 (no object number) becomes instance 0, a stuff category written as
  category * 100 + k keeps only its class, as VIPSeg's own JSON conversion does.

720p (`--variant=720p`):
  <vipseg_root>/images/<video>/<frame>.jpg
  <vipseg_root>/panomasksRGB/<video>/<frame>.png   RGB id maps, id = R + 256 G + 256^2 B
  <vipseg_root>/panoptic_gt_VIPSeg_{train,val}.json
      {"categories": [{id 0..123, name, isthing}],
       "annotations": [{"video_id", "annotations": [{"file_name", "segments_info":
           [{id, category_id (0-based), iscrowd, area}]}]}]}
  Segment ids persist over a video's frames, so instance numbers are given per
  video (1, 2, ... per class, in order of first appearance): a track keeps its
  instance id in every frame. id 0 is void; crowd segments get instance 0.

`--variant=auto` (default) picks 720p when `panomasksRGB/` exists. The test split
of the raw layout has no masks and is written without labels.

Output: `<output_dir>/<split>-%05d-of-%05d.tfrecord` with `build_step_data`'s keys
(JPEG bytes unchanged, `image/format` 'jpeg'); sequence id = video name; frame id =
the frame's position among the video's annotated frames ('000000', '000001', ...,
see `tfrecord_writer.renumber_frames`: VIPSeg's frame numbers have gaps), the file
stem kept in `image/filename` ('<video>_<stem>'). Panoptic label = class * 1000 +
instance, void 255 * 1000.

CLI:
  python -m deeplab2_vkmax.data.build_vipseg_data --vipseg_root=.../VIPSeg \
      --output_dir=... [--variant=auto|raw|720p] [--splits=train,val] [--num_shards=10]
"""

import os
from typing import List, Optional, Sequence

from absl import flags
import numpy as np

from deeplab2_vkmax.data import dataset as dataset_lib
from deeplab2_vkmax.data import tfrecord_writer

_DATASET = 'vipseg'
_VARIANTS = ('auto', 'raw', '720p')
_LABELLESS_SPLITS = ('test',)
# Raw values below this are a bare category; from it on, category * 100 + object.
_FIRST_OBJECT_VALUE = 125


def raw_mask_to_panoptic(values: np.ndarray, path: str,
                         descriptor: dataset_lib.DatasetDescriptor) -> np.ndarray:
  """Raw VIPSeg mask values (int32 [H, W]) -> panoptic labels (encoding above).

  Raises:
    ValueError: Naming `path`, for a category outside 1..num_classes.
  """
  category = np.where(values < _FIRST_OBJECT_VALUE, values, values // 100)
  bad = (values != 0) & ((category < 1) | (category > descriptor.num_classes))
  if bad.any():
    raise ValueError(f'{path}: unknown VIPSeg values {np.unique(values[bad])[:10]}'
                     f' (categories outside 1..{descriptor.num_classes}); 0 is '
                     f'void, v < {_FIRST_OBJECT_VALUE} a category, larger values '
                     f'category * 100 + object.')
  semantic = np.where(values == 0, descriptor.ignore_label, category - 1)
  is_object = (values >= _FIRST_OBJECT_VALUE) & np.isin(
      semantic, descriptor.thing_class_ids)
  instance = np.where(is_object, values % 100 + 1, 0)
  return tfrecord_writer.compose_panoptic(path, semantic, instance, descriptor)


def resolve_variant(vipseg_root: str, variant: str) -> str:
  """'auto' -> '720p' if `panomasksRGB/` exists, else 'raw'."""
  if variant not in _VARIANTS:
    raise ValueError(f'Unknown VIPSeg variant {variant!r}; expected one of '
                     f'{list(_VARIANTS)}.')
  if variant != 'auto':
    return variant
  return '720p' if os.path.isdir(os.path.join(vipseg_root, 'panomasksRGB')) else 'raw'


def _raw_sequences(vipseg_root: str,
                   split: str) -> List[tfrecord_writer.FrameSequence]:
  return tfrecord_writer.list_split_videos(
      os.path.join(vipseg_root, f'{split}.txt'), split,
      lambda video: os.path.join(vipseg_root, 'imgs', video),
      lambda video: os.path.join(vipseg_root, 'panomasks', video), '.jpg',
      _LABELLESS_SPLITS)


def _720p_sequences(vipseg_root: str, split: str,
                    descriptor: dataset_lib.DatasetDescriptor
                    ) -> List[tfrecord_writer.FrameSequence]:
  json_path = os.path.join(vipseg_root, f'panoptic_gt_VIPSeg_{split}.json')
  data = tfrecord_writer.load_json(json_path)
  categories = data.get('categories')
  if categories:
    category_map = tfrecord_writer.json_category_map(categories, json_path,
                                                     descriptor)
  else:  # category_id is the 0-based class id already.
    category_map = {c: c for c in range(descriptor.num_classes)}
  sequences = []
  for video in data.get('annotations', []):
    video_id = str(video['video_id'])
    numbering = tfrecord_writer.InstanceNumbering(descriptor)  # Per video.
    frames = []
    for annotation in video['annotations']:
      stem = os.path.splitext(annotation['file_name'])[0]
      segments = tfrecord_writer.segments_to_panoptic(
          annotation['segments_info'], category_map, numbering, json_path)
      frames.append(tfrecord_writer.Frame(
          stem, os.path.join(vipseg_root, 'images', video_id, stem + '.jpg'),
          os.path.join(vipseg_root, 'panomasksRGB', video_id, stem + '.png'),
          segments))
    frames.sort(key=lambda f: tfrecord_writer.natural_key(f.frame_id))
    sequences.append(tfrecord_writer.renumber_frames(
        tfrecord_writer.FrameSequence(video_id, tuple(frames))))
  return sequences


def convert_split(vipseg_root: str, split: str, output_dir: str, *,
                  variant: str = 'auto', num_shards: int = 10,
                  progress: Optional[bool] = None) -> tfrecord_writer.SplitSummary:
  """Converts one VIPSeg split into TFRecord shards.

  Args:
    vipseg_root: `VIPSeg/` (raw) or `VIPSeg_720P/` (720p) folder.
    split: 'train', 'val' or 'test' (raw test: no masks, written without labels).
    output_dir: Destination folder (created).
    variant: 'raw', '720p' or 'auto'.
    num_shards: Requested shards (capped at the number of videos; 0 = one each).
    progress: Progress bar; None = only on a terminal.

  Returns:
    The `tfrecord_writer.SplitSummary`.

  Raises:
    ValueError: Naming the file for a missing frame or mask, a size mismatch, a
      corrupt image or mask, an unknown class or segment id; for an empty split.
  """
  descriptor = dataset_lib.get_dataset_descriptor(_DATASET)
  if resolve_variant(vipseg_root, variant) == 'raw':
    sequences = _raw_sequences(vipseg_root, split)

    def label_fn(frame, size):
      values = tfrecord_writer.read_integer_png(frame.label_path, size)
      return raw_mask_to_panoptic(values, frame.label_path, descriptor)
  else:
    sequences = _720p_sequences(vipseg_root, split, descriptor)

    def label_fn(frame, size):
      return tfrecord_writer.read_id_map_panoptic(frame, size, descriptor)
  return tfrecord_writer.write_split(
      sequences, split, output_dir, descriptor=descriptor, label_fn=label_fn,
      num_shards=num_shards, allowed_formats=('JPEG', 'PNG'), progress=progress)


def _define_flags() -> None:
  flags.DEFINE_enum('variant', 'auto', list(_VARIANTS),
                    'Layout: raw panomasks, 720p panomasksRGB + JSON, or auto.')


def main(argv: Optional[Sequence[str]] = None) -> None:
  """CLI entry point."""
  tfrecord_writer.run_converter_cli(
      argv, root_flag='vipseg_root', root_help='VIPSeg/ or VIPSeg_720P/ folder.',
      convert_fn=lambda f, split: convert_split(
          f.vipseg_root, split, f.output_dir, variant=f.variant,
          num_shards=f.num_shards),
      define_extra_flags=_define_flags)


if __name__ == '__main__':
  main()
