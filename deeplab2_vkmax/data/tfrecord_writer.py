"""Shared machinery of the TFRecord converters (`build_*_data.py`).

Every converter lists its frames as `Frame`s grouped by sequence, supplies a label
function that turns one frame's annotation into an int32 panoptic map
(`semantic * panoptic_label_divisor + instance`, void = `ignore_label * divisor`), and
calls `write_split`, which

  - reads and checks every image (a corrupt file or an unexpected format raises a
    `ValueError` naming the file) and keeps its encoded bytes unchanged,
  - checks each label against its image size and the descriptor's classes,
  - writes one `tf.train.Example` per frame with DeepLab2's keys plus
    `video/sequence_id` and `video/frame_id` (`deeplab2_vkmax.common.KEY_*`), readable
    by `clip_reader.decode_example`,
  - keeps every sequence whole inside one shard, frames in order, shards balanced by
    frame count (`{split}-%05d-of-%05d.tfrecord`),
  - writes under temporary names and renames only when the whole split succeeded
    (older shards of the split are removed then), so nothing half-written is left,
  - shows a progress bar on a terminal and returns a `SplitSummary` (frames,
    sequences, shards, classes seen).

It also holds the readers several converters share: an integer-valued PNG (VIPSeg raw
masks, VSPW masks), an RGB id-map PNG (`id = R + 256 G + 256^2 B`, the COCO panoptic
format used by COCO, Cityscapes and VIPSeg-720p), and the COCO-style JSON category
mapping.
"""

import dataclasses
import io
import json
import os
import re
import sys
import uuid
from typing import (Callable, Dict, Iterable, List, Mapping, Optional, Sequence,
                    Set, Tuple)

from absl import flags
import numpy as np
from PIL import Image
import tqdm

from deeplab2_vkmax import cli
from deeplab2_vkmax import common
from deeplab2_vkmax.data import dataset as dataset_lib

_SHARD_SUFFIX = r'-\d{5}-of-\d{5}\.tfrecord'
# PIL format name -> the `image/format` string DeepLab2 writes.
_IMAGE_FORMATS = {'PNG': 'png', 'JPEG': 'jpeg'}
# Single-channel PIL modes whose pixel values are the stored integers.
_INTEGER_MODES = ('L', 'P', 'I', 'I;16', 'I;16L', 'I;16B', 'I;16N')


@dataclasses.dataclass(frozen=True)
class Frame:
  """One frame to convert.

  Attributes:
    frame_id: Digits only (the clip reader parses it as an integer), e.g. '000012'.
    image_path: The encoded image (PNG or JPEG), stored unchanged.
    label_path: The annotation file, or None for a label-less (test) frame.
    segments: Converter-specific annotation data besides the file (e.g. the
      JSON `segments_info` mapped to panoptic ids), or None.
    file_stem: Original frame name for `image/filename` when `frame_id` was
      renumbered (see `renumber_frames`); None = `frame_id`.
  """

  frame_id: str
  image_path: str
  label_path: Optional[str] = None
  segments: Optional[Mapping[int, int]] = None
  file_stem: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class FrameSequence:
  """A sequence (video) of frames in frame order; an image set has one per frame."""

  sequence_id: str
  frames: Tuple[Frame, ...]


@dataclasses.dataclass(frozen=True)
class SplitSummary:
  """What `write_split` wrote."""

  split: str
  num_frames: int
  num_sequences: int
  shard_paths: Tuple[str, ...]
  classes_seen: Tuple[int, ...]  # Semantic ids with at least one pixel, void excluded.
  descriptor: dataset_lib.DatasetDescriptor

  def describe(self) -> str:
    """One human-readable line for the CLI summary."""
    names = [self.descriptor.class_names[c] for c in self.classes_seen]
    return (f'{self.split}: {self.num_frames} frames, {self.num_sequences} '
            f'sequences, {len(self.shard_paths)} shards, '
            f'{len(self.classes_seen)}/{self.descriptor.num_classes} classes seen '
            f'{names}')


LabelFn = Callable[[Frame, Tuple[int, int]], np.ndarray]


def renumber_frames(sequence: FrameSequence) -> FrameSequence:
  """Frame ids 0, 1, ... ('%06d') in the given order; names kept as `file_stem`.

  For data sets whose annotated frames are a subsample with gaps in the file
  numbering (VIPSeg, VSPW): the clip reader forms clips of frames whose ids step
  by `frame_stride`, so consecutive annotated frames must get consecutive ids.
  """
  return FrameSequence(sequence.sequence_id, tuple(
      dataclasses.replace(frame, frame_id='%06d' % index,
                          file_stem=frame.file_stem or frame.frame_id)
      for index, frame in enumerate(sequence.frames)))


_DIGIT_RUNS = re.compile(r'(\d+)')


def frame_gaps(sequence: FrameSequence) -> List[Tuple[int, int]]:
  """(last id before, first id after) of every jump in the frame numbering."""
  ids = [int(f.frame_id) for f in sequence.frames if f.frame_id.isdigit()]
  return [(a, b) for a, b in zip(ids, ids[1:]) if b != a + 1]


def warn_frame_gaps(sequences: Sequence[FrameSequence], split: str) -> None:
  """Warns once per sequence whose frame numbers have gaps (missing files?).

  The clip reader forms clips of frames whose numbers step by `frame_stride`,
  so no clip spans a gap; a frame missing from a download would otherwise go
  unnoticed.
  """
  for sequence in sequences:
    gaps = frame_gaps(sequence)
    if gaps:
      shown = ', '.join(f'{a} -> {b}' for a, b in gaps[:5])
      more = f' and {len(gaps) - 5} more' if len(gaps) > 5 else ''
      print(f'warning: {split} sequence {sequence.sequence_id}: frame numbers jump '
            f'{shown}{more} (missing frames?); clips never span a gap',
            file=sys.stderr)


def shard_filename(split: str, shard: int, num_shards: int) -> str:
  """'{split}-%05d-of-%05d.tfrecord'."""
  return '%s-%05d-of-%05d.tfrecord' % (split, shard, num_shards)


def natural_key(name: str) -> Tuple[Tuple[int, object], ...]:
  """Natural sort key: digit runs compare as numbers, the rest as text.

  'frame2' < 'frame10', '000009.png' < '000010.png'; a name starting with a
  number sorts before one starting with a letter; ties keep the plain name order.
  """
  parts = tuple((0, int(chunk)) if chunk.isdigit() else (1, chunk)
                for chunk in _DIGIT_RUNS.split(name) if chunk)
  return parts + ((2, name),)


def read_split_list(path: str) -> List[str]:
  """Reads a split list file (one name per line; blank lines skipped).

  Raises:
    ValueError: If the file is missing or lists nothing.
  """
  if not os.path.isfile(path):
    raise ValueError(f'Split list {path} does not exist.')
  with open(path) as f:
    names = [line.strip() for line in f if line.strip()]
  if not names:
    raise ValueError(f'Split list {path} is empty.')
  return names


def list_video(sequence_id: str, image_dir: str, image_ext: str,
               label_dir: Optional[str], label_ext: str = '.png') -> FrameSequence:
  """Pairs `image_dir/<frame><image_ext>` with `label_dir/<frame><label_ext>`.

  Args:
    sequence_id: The video's id.
    image_dir: Folder of the video's frames.
    image_ext: Image extension, e.g. '.jpg' (case-insensitive).
    label_dir: Folder of the labels, or None for a label-less video.
    label_ext: Label extension.

  Returns:
    The `FrameSequence`, frames in natural (numeric) order.

  Raises:
    ValueError: Naming the file, for a frame without label or a label without
      frame; naming the folder if `image_dir` is missing.
  """
  if not os.path.isdir(image_dir):
    raise ValueError(f'Frame folder {image_dir} of sequence {sequence_id!r} does '
                     f'not exist.')
  names = sorted((n for n in os.listdir(image_dir)
                  if n.lower().endswith(image_ext)), key=natural_key)
  frames = []
  for name in names:
    stem = os.path.splitext(name)[0]
    image_path = os.path.join(image_dir, name)
    label_path = None
    if label_dir is not None:
      label_path = os.path.join(label_dir, stem + label_ext)
      if not os.path.isfile(label_path):
        raise ValueError(f'{image_path}: no label; expected {label_path}.')
    frames.append(Frame(stem, image_path, label_path))
  if label_dir is not None and os.path.isdir(label_dir):
    stems = {f.frame_id for f in frames}
    for name in sorted(os.listdir(label_dir)):
      if name.endswith(label_ext) and os.path.splitext(name)[0] not in stems:
        raise ValueError(f'{os.path.join(label_dir, name)}: no frame; expected '
                         f'{os.path.join(image_dir, os.path.splitext(name)[0])}'
                         f'{image_ext}.')
  return FrameSequence(sequence_id, tuple(frames))


def list_split_videos(split_list_path: str, split: str,
                      image_dir_fn: Callable[[str], str],
                      label_dir_fn: Callable[[str], str], image_ext: str,
                      labelless_splits: Sequence[str] = ('test',)
                      ) -> List[FrameSequence]:
  """Videos named in a split list, each listed by `list_video` and renumbered.

  Args:
    split_list_path: `<split>.txt`, one video name per line.
    split: The split; in `labelless_splits` a video may lack its label folder.
    image_dir_fn: video name -> its frame folder.
    label_dir_fn: video name -> its label folder.
    image_ext: Frame extension, e.g. '.jpg'.
    labelless_splits: Splits written without labels when the folder is absent.

  Returns:
    The `FrameSequence`s in list order, frame ids renumbered (`renumber_frames`).

  Raises:
    ValueError: Naming the list or folder, for an empty list or a missing folder;
      naming the file for a frame without label or a label without frame.
  """
  sequences = []
  for video in read_split_list(split_list_path):
    label_dir = label_dir_fn(video)
    if not os.path.isdir(label_dir):
      if split not in labelless_splits:
        raise ValueError(f'Label folder {label_dir} of video {video!r} (split '
                         f'{split!r}) does not exist.')
      label_dir = None
    sequences.append(renumber_frames(
        list_video(video, image_dir_fn(video), image_ext, label_dir)))
  return sequences


def load_json(path: str) -> Dict:
  """Reads a JSON annotation file; a missing or broken one raises a ValueError."""
  if not os.path.isfile(path):
    raise ValueError(f'Annotation file {path} does not exist.')
  try:
    with open(path) as f:
      return json.load(f)
  except ValueError as e:
    raise ValueError(f'{path}: not valid JSON ({e}).') from e


def image_set_sequences(json_path: str, image_path_fn: Callable[[Mapping], str],
                        mask_dir: str,
                        descriptor: dataset_lib.DatasetDescriptor
                        ) -> List[FrameSequence]:
  """COCO-format panoptic JSON of single images -> one sequence per image.

  Each annotation's image becomes sequence `str(image_id)` with frame '0'; things
  are numbered 1, 2, ... per class within the image, crowd segments get
  instance 0; the PNG id map `mask_dir/<annotation file_name>` is read by
  `read_id_map_panoptic`.

  Raises:
    ValueError: Naming `json_path`, for an annotation whose image is not listed or
      an unknown category (and see `json_category_map`).
  """
  data = load_json(json_path)
  category_map = json_category_map(data.get('categories', []), json_path,
                                   descriptor)
  images = {image['id']: image for image in data.get('images', [])}
  sequences = []
  for annotation in data.get('annotations', []):
    image = images.get(annotation['image_id'])
    if image is None:
      raise ValueError(f'{json_path}: annotation {annotation["file_name"]!r} has '
                       f'image_id {annotation["image_id"]!r}, which is not in '
                       f'"images".')
    segments = segments_to_panoptic(annotation['segments_info'], category_map,
                                    InstanceNumbering(descriptor), json_path)
    frame = Frame('0', image_path_fn(image),
                  os.path.join(mask_dir, annotation['file_name']), segments)
    sequences.append(FrameSequence(str(annotation['image_id']), (frame,)))
  return sequences


def convert_image_set(json_path: str, image_path_fn: Callable[[Mapping], str],
                      mask_dir: str, split: str, output_dir: str, *,
                      descriptor: dataset_lib.DatasetDescriptor,
                      num_shards: int, allowed_formats: Sequence[str],
                      progress: Optional[bool]) -> 'SplitSummary':
  """Converts a COCO-format panoptic image set split (`image_set_sequences`).

  Raises:
    ValueError: Naming the file for a missing image or PNG, a size mismatch, a
      corrupt file, an unknown category or segment id; for an empty split.
  """
  return write_split(
      image_set_sequences(json_path, image_path_fn, mask_dir, descriptor), split,
      output_dir, descriptor=descriptor,
      label_fn=lambda frame, size: read_id_map_panoptic(frame, size, descriptor),
      num_shards=num_shards, allowed_formats=allowed_formats, progress=progress)


def _open(path: str, data: bytes) -> Image.Image:
  try:
    image = Image.open(io.BytesIO(data))
    image.load()
  except Exception as e:  # PIL raises several types for broken files.
    # PIL names the in-memory buffer (an address); the path says which file.
    reason = re.sub(r' <_io\.BytesIO object at 0x[0-9a-f]+>', '', str(e))
    raise ValueError(f'{path}: corrupt or unreadable image ({reason}).') from e
  return image


def open_image_file(path: str) -> Tuple[bytes, Image.Image]:
  """Reads and fully decodes an image file; returns (bytes, PIL image).

  Raises:
    ValueError: Naming `path`, if missing, truncated or not an image.
  """
  if not os.path.isfile(path):
    raise ValueError(f'{path}: file does not exist.')
  with open(path, 'rb') as f:
    data = f.read()
  return data, _open(path, data)


def check_size(path: str, shape: Sequence[int],
               expected_size: Optional[Tuple[int, int]]) -> None:
  """Raises a ValueError naming `path` if shape[:2] != expected (H, W)."""
  if expected_size is not None and tuple(shape[:2]) != tuple(expected_size):
    raise ValueError(f'{path}: label size {shape[0]}x{shape[1]} (HxW) does not '
                     f'match its image, {expected_size[0]}x{expected_size[1]}.')


def check_semantic(path: str, semantic: np.ndarray,
                   descriptor: dataset_lib.DatasetDescriptor) -> None:
  """Raises a ValueError naming `path` for ids outside the classes and void."""
  classes = np.unique(semantic)
  unknown = [int(c) for c in classes
             if c != descriptor.ignore_label and not 0 <= c < descriptor.num_classes]
  if unknown:
    raise ValueError(f'{path}: unknown class ids {unknown}; expected ids in [0, '
                     f'{descriptor.num_classes}) or the ignore label '
                     f'{descriptor.ignore_label} ({descriptor.name}).')


def compose_panoptic(path: str, semantic: np.ndarray, instance: np.ndarray,
                     descriptor: dataset_lib.DatasetDescriptor) -> np.ndarray:
  """Checks classes and instance range; returns int32 semantic * divisor + instance.

  Raises:
    ValueError: Naming `path`, for an unknown class id or an instance id that
      does not fit the panoptic label divisor.
  """
  check_semantic(path, semantic, descriptor)
  if instance.size and int(instance.max()) >= descriptor.panoptic_label_divisor:
    raise ValueError(f'{path}: instance id {int(instance.max())} does not fit the '
                     f'panoptic label divisor {descriptor.panoptic_label_divisor}.')
  return (semantic.astype(np.int32) * descriptor.panoptic_label_divisor +
          instance.astype(np.int32))


def read_integer_png(path: str,
                     expected_size: Optional[Tuple[int, int]]) -> np.ndarray:
  """Reads a single-channel PNG of integer values (8- or 16-bit) as int32 [H, W].

  Raises:
    ValueError: Naming `path`, if unreadable, not single-channel or of the wrong
      size.
  """
  _, label = open_image_file(path)
  if label.format != 'PNG' or label.mode not in _INTEGER_MODES:
    raise ValueError(f'{path}: expected a single-channel integer PNG (modes '
                     f'{list(_INTEGER_MODES)}), got {label.format} mode '
                     f'{label.mode!r}.')
  values = np.asarray(label).astype(np.int32)  # 'P' keeps the palette indices.
  check_size(path, values.shape, expected_size)
  return values


def read_rgb_png(path: str, expected_size: Optional[Tuple[int, int]]) -> np.ndarray:
  """Reads an RGB PNG as int32 [H, W, 3].

  Raises:
    ValueError: Naming `path`, if unreadable, not RGB or of the wrong size.
  """
  _, label = open_image_file(path)
  if label.format != 'PNG' or label.mode not in ('RGB', 'RGBA'):
    raise ValueError(f'{path}: panoptic map must be an RGB PNG, got '
                     f'{label.format} mode {label.mode!r}.')
  rgb = np.asarray(label.convert('RGB')).astype(np.int32)
  check_size(path, rgb.shape, expected_size)
  return rgb


def read_id_map_panoptic(frame: Frame, expected_size: Tuple[int, int],
                         descriptor: dataset_lib.DatasetDescriptor) -> np.ndarray:
  """Label function for COCO-format RGB id maps (`id = R + 256 G + 256^2 B`).

  `frame.segments` maps each segment id to its panoptic label; id 0 is void.

  Raises:
    ValueError: Naming the PNG, for a segment id absent from `frame.segments` or
      the errors of `read_rgb_png`.
  """
  rgb = read_rgb_png(frame.label_path, expected_size)
  ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
  unique, inverse = np.unique(ids, return_inverse=True)
  table = dict(frame.segments or {})
  table.setdefault(0, descriptor.void_panoptic_label)
  missing = [int(u) for u in unique if int(u) not in table]
  if missing:
    raise ValueError(f'{frame.label_path}: segment ids {missing[:10]} are not in '
                     f'the JSON segments_info of this frame '
                     f'(listed: {sorted(k for k in table if k)[:10]}).')
  values = np.array([table[int(u)] for u in unique], np.int32)
  panoptic = values[inverse.reshape(ids.shape)]
  divisor = descriptor.panoptic_label_divisor
  return compose_panoptic(frame.label_path, panoptic // divisor, panoptic % divisor,
                          descriptor)


def json_category_map(categories: Sequence[Mapping], json_path: str,
                      descriptor: dataset_lib.DatasetDescriptor) -> Dict[int, int]:
  """Maps COCO-style JSON category ids to the descriptor's contiguous class ids.

  The contiguous id is the rank of the category id (COCO: the 80 things, ids 1-90,
  come before the 53 stuff classes; Cityscapes: label ids 7..33 rank to the 19
  train ids). Names and `isthing` must agree with the descriptor, so a JSON of
  another data set or version fails here instead of producing wrong labels.

  Raises:
    ValueError: Naming `json_path`, on a count, name or thing/stuff mismatch.
  """
  ordered = sorted(categories, key=lambda c: int(c['id']))
  if len(ordered) != descriptor.num_classes:
    raise ValueError(f'{json_path}: {len(ordered)} categories, expected '
                     f'{descriptor.num_classes} ({descriptor.name}).')
  mapping = {}
  for class_id, category in enumerate(ordered):
    name = str(category.get('name', ''))
    expected = descriptor.class_names[class_id]
    if _normalise(name) != _normalise(expected):
      raise ValueError(f'{json_path}: category id {category["id"]} is named '
                       f'{name!r}; expected {expected!r} at contiguous id '
                       f'{class_id} ({descriptor.name}).')
    if 'isthing' in category and bool(category['isthing']) != descriptor.is_thing(
        class_id):
      raise ValueError(f'{json_path}: category {name!r} has isthing='
                       f'{category["isthing"]}, the {descriptor.name} descriptor '
                       f'disagrees.')
    mapping[int(category['id'])] = class_id
  return mapping


def _normalise(name: str) -> str:
  return name.lower().replace('_', ' ').replace('-', ' ').strip()


class InstanceNumbering:
  """Gives things instance ids 1, 2, ... per class; crowd and stuff get 0.

  One object per scope in which ids must stay stable: an image (COCO,
  Cityscapes) or a whole video (VIPSeg, whose segment ids persist over frames).
  """

  def __init__(self, descriptor: dataset_lib.DatasetDescriptor):
    self._descriptor = descriptor
    self._assigned: Dict[Tuple[int, int], int] = {}
    self._next: Dict[int, int] = {}

  def panoptic_id(self, class_id: int, segment_key: int, is_crowd: bool) -> int:
    """Panoptic label of a segment; `segment_key` identifies the object in scope."""
    divisor = self._descriptor.panoptic_label_divisor
    if is_crowd or not self._descriptor.is_thing(class_id):
      return class_id * divisor
    key = (class_id, segment_key)
    if key not in self._assigned:
      self._next[class_id] = self._next.get(class_id, 0) + 1
      self._assigned[key] = self._next[class_id]
    return class_id * divisor + self._assigned[key]


def segments_to_panoptic(segments_info: Iterable[Mapping],
                         category_map: Mapping[int, int],
                         numbering: InstanceNumbering,
                         json_path: str) -> Dict[int, int]:
  """Maps a frame's JSON `segments_info` to {segment id: panoptic label}.

  Raises:
    ValueError: Naming `json_path`, for a category id missing from the map.
  """
  table = {}
  for segment in segments_info:
    category_id = int(segment['category_id'])
    if category_id not in category_map:
      raise ValueError(f'{json_path}: segment {segment["id"]} has unknown '
                       f'category_id {category_id}; expected one of '
                       f'{sorted(category_map)[:10]}...')
    table[int(segment['id'])] = numbering.panoptic_id(
        category_map[category_id], int(segment['id']),
        bool(segment.get('iscrowd', 0)))
  return table


def _tf():
  """TensorFlow, imported on first use: a converter's --help and argument errors
  answer at once instead of after seconds of loading."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf


def _bytes_feature(value: bytes) -> 'tf.train.Feature':
  tf = _tf()
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int_feature(value: int) -> 'tf.train.Feature':
  tf = _tf()
  return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))


def make_example(frame: Frame, sequence_id: str,
                 label_fn: Optional[LabelFn],
                 allowed_formats: Sequence[str] = ('PNG', 'JPEG')
                 ) -> Tuple['tf.train.Example', Optional[np.ndarray]]:
  """Builds the `tf.train.Example` of one frame.

  Args:
    frame: The frame; `frame.label_path` None writes no label.
    sequence_id: Its sequence id.
    label_fn: (frame, (height, width)) -> int32 panoptic [H, W]; validates.
    allowed_formats: PIL format names the image may have.

  Returns:
    (example, panoptic label or None).

  Raises:
    ValueError: Naming the file, for a corrupt or wrong-format image, a
      non-numeric frame id, or whatever `label_fn` rejects.
  """
  if not frame.frame_id.isdigit():
    raise ValueError(f'{frame.image_path}: frame id {frame.frame_id!r} is not a '
                     f'non-negative integer (the clip reader orders frames by it).')
  encoded, image = open_image_file(frame.image_path)
  if image.format not in allowed_formats:
    raise ValueError(f'{frame.image_path}: expected one of {list(allowed_formats)}, '
                     f'got {image.format}.')
  width, height = image.size
  feature = {
      common.KEY_ENCODED_IMAGE: _bytes_feature(encoded),
      common.KEY_IMAGE_FILENAME: _bytes_feature(
          f'{sequence_id}_{frame.file_stem or frame.frame_id}'.encode()),
      common.KEY_IMAGE_FORMAT: _bytes_feature(_IMAGE_FORMATS[image.format].encode()),
      common.KEY_IMAGE_HEIGHT: _int_feature(height),
      common.KEY_IMAGE_WIDTH: _int_feature(width),
      common.KEY_IMAGE_CHANNELS: _int_feature(3),
      common.KEY_SEQUENCE_ID: _bytes_feature(sequence_id.encode()),
      common.KEY_FRAME_ID: _bytes_feature(frame.frame_id.encode()),
  }
  panoptic = None
  if frame.label_path is not None and label_fn is not None:
    panoptic = np.asarray(label_fn(frame, (height, width)), np.int32)
    feature[common.KEY_ENCODED_LABEL] = _bytes_feature(
        panoptic.astype('<i4').tobytes())
    feature[common.KEY_LABEL_FORMAT] = _bytes_feature(b'raw')
  tf = _tf()
  return tf.train.Example(features=tf.train.Features(feature=feature)), panoptic


def assign_shards(sizes: Sequence[int], num_shards: int) -> List[List[int]]:
  """Sequence indices per shard: whole sequences, largest first to the lightest."""
  count = len(sizes) if num_shards <= 0 else min(num_shards, len(sizes))
  shards = [[] for _ in range(count)]
  loads = [0] * count
  for index in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
    target = min(range(count), key=lambda s: (loads[s], s))
    shards[target].append(index)
    loads[target] += sizes[index]
  return [sorted(s) for s in shards]


def write_split(sequences: Sequence[FrameSequence], split: str, output_dir: str, *,
                descriptor: dataset_lib.DatasetDescriptor,
                label_fn: Optional[LabelFn],
                num_shards: int = 10,
                allowed_formats: Sequence[str] = ('PNG', 'JPEG'),
                progress: Optional[bool] = None) -> SplitSummary:
  """Writes one split's sequences into TFRecord shards, all or nothing.

  Args:
    sequences: Sequences in output order, each with its frames in frame order.
    split: Split name, the shard file prefix.
    output_dir: Destination folder (created).
    descriptor: Data set descriptor (for the summary's classes).
    label_fn: Label function (see `make_example`); None writes no labels.
    num_shards: Requested shard count, capped at the number of sequences (a
      sequence never straddles shards); 0 = one shard per sequence.
    allowed_formats: PIL image formats accepted.
    progress: Show a progress bar; None = only on a terminal.

  Returns:
    The `SplitSummary`.

  Raises:
    ValueError: For an empty split (naming `split`) or any bad frame (naming
      the file); no shard of this split is then left in `output_dir`
      except those of an earlier complete conversion.
  """
  sequences = [s for s in sequences if s.frames]
  if not sequences:
    raise ValueError(f'Split {split!r} is empty: no frames to write into '
                     f'{output_dir}.')
  warn_frame_gaps(sequences, split)
  assignment = assign_shards([len(s.frames) for s in sequences], num_shards)
  os.makedirs(output_dir, exist_ok=True)
  token = uuid.uuid4().hex
  tf = _tf()
  final_paths, temp_paths = [], []
  classes_seen: Set[int] = set()
  num_frames = sum(len(s.frames) for s in sequences)
  bar = tqdm.tqdm(total=num_frames, desc=f'{descriptor.name} {split}',
                  unit='frame', disable=None if progress is None else not progress)
  try:
    for shard, members in enumerate(assignment):
      final = os.path.join(output_dir, shard_filename(split, shard, len(assignment)))
      temp = f'{final}.tmp-{token}'
      final_paths.append(final)
      temp_paths.append(temp)
      with tf.io.TFRecordWriter(temp) as writer:
        for index in members:
          sequence = sequences[index]
          for frame in sequence.frames:
            example, panoptic = make_example(frame, sequence.sequence_id, label_fn,
                                             allowed_formats)
            writer.write(example.SerializeToString())
            if panoptic is not None:
              classes_seen.update(
                  int(c) for c in np.unique(
                      panoptic // descriptor.panoptic_label_divisor))
            bar.update(1)
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
    bar.close()
    for temp in temp_paths:
      if os.path.exists(temp):
        os.remove(temp)
  classes_seen.discard(descriptor.ignore_label)
  return SplitSummary(split=split, num_frames=num_frames,
                      num_sequences=len(sequences),
                      shard_paths=tuple(final_paths),
                      classes_seen=tuple(sorted(classes_seen)),
                      descriptor=descriptor)


def run_converter_cli(argv: Optional[Sequence[str]], *, root_flag: str,
                      root_help: str,
                      convert_fn: Callable[[flags.FlagValues, str], SplitSummary],
                      define_extra_flags: Optional[Callable[[], None]] = None
                      ) -> None:
  """The CLI every converter shares: common flags, one split at a time, summary.

  Flags: `--<root_flag>`, `--output_dir` (both required), `--splits` (default
  train,val), `--num_shards` (default 10) and those of `define_extra_flags`.
  Defined when the CLI runs, not at import, so library users of a converter do
  not get its flags.

  Args:
    argv: Command line, or None for sys.argv.
    root_flag: Name of the data set root flag, e.g. 'vipseg_root'.
    root_help: Its help text.
    convert_fn: (flag values, split) -> `SplitSummary`.
    define_extra_flags: Defines converter-specific flags.
  """
  flags.DEFINE_string(root_flag, None, root_help)
  flags.DEFINE_string('output_dir', None, 'Where to write the TFRecords.')
  flags.DEFINE_list('splits', ['train', 'val'], 'Splits to convert.')
  flags.DEFINE_integer('num_shards', 10,
                       'Shards per split (capped at the number of sequences; 0 = '
                       'one per sequence).')
  flags.mark_flags_as_required([root_flag, 'output_dir'])
  if define_extra_flags is not None:
    define_extra_flags()

  def run(unused_argv) -> None:
    values = flags.FLAGS
    # A bad value or a bad file ends in one line naming it (exit 1), not in a
    # traceback with the file at its end.
    cli.quiet_tensorflow()
    with cli.one_line_errors(ValueError):
      if values.num_shards < 0:
        raise cli.UsageError(f'--num_shards must be >= 0 (0 = one shard per sequence); '
                             f'got {values.num_shards}')
      if not os.path.isdir(getattr(values, root_flag)):
        raise cli.UsageError(f'--{root_flag}={getattr(values, root_flag)} is not a folder')
      cli.check_writable_dir(values.output_dir, '--output_dir')
      cli.initialise_devices()
      summaries = [convert_fn(values, split) for split in values.splits]
    for summary in summaries:
      print(summary.describe())

  cli.run_absl(run, argv)
