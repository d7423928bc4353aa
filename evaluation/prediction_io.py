"""Predictions in the official submission formats, written and read back.

- KITTI-STEP (`kitti_step`): `<dir>/<sequence>/<frame %06d>.png`, RGB PNG with
  R = semantic class, G = instance // 256, B = instance % 256 (the panoptic_maps
  encoding of the data set; void = semantic `ignore_label`).
- VIPSeg (`vipseg`): `<dir>/pred.json` = {"annotations": [{"video_id",
  "annotations": [{"file_name", "image_id", "segments_info": [{"id",
  "category_id"}]}]}]} and `<dir>/pan_pred/<video>/<frame %08d>.png`, RGB id maps
  with id = R + 256 G + 256^2 B, 0 = void. Ids are per video, 1, 2, ... in first
  appearance order, so one predicted tube keeps one id in every frame;
  `category_id` is the 0-based semantic class.
- VSPW (`vspw`): `<dir>/<video>/<frame %08d>.png`, 8-bit class map, 0..num_classes-1,
  255 = void (what the official mIoU / VC scripts compare with the remapped GT).

Readers return panoptic maps `semantic * label_divisor + instance` again (VIPSeg:
thing instance = the VIPSeg id, stuff instance 0), which the metrics score exactly
like the written prediction: segments keep their pixels, class and tube identity.
Numpy and PIL only.
"""

import json
import os
from typing import Any, Dict, Iterator, List, Sequence, Tuple

import numpy as np
from PIL import Image

from deeplab2_vkmax.data import step_png

FORMATS = ('kitti_step', 'vipseg', 'vspw')


def _save_png(path: str, array: np.ndarray) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path)


def _load_png(path: str) -> np.ndarray:
  with Image.open(path) as image:
    return np.asarray(image)


class KittiStepWriter:
  """KITTI-STEP submission PNGs."""

  def __init__(self, output_dir: str, *, label_divisor: int, ignore_label: int, **unused):
    del unused
    self.output_dir = output_dir
    self._label_divisor = label_divisor

  def write(self, sequence_id: str, frame_id: int, panoptic: np.ndarray) -> None:
    """Writes one frame int [H, W] of panoptic ids."""
    semantic, instance = np.divmod(np.asarray(panoptic, np.int64), self._label_divisor)
    try:
      rgb = step_png.encode_panoptic_rgb(semantic, instance)
    except ValueError as e:
      raise ValueError(f'frame {sequence_id}/{frame_id}: {e} (the KITTI-STEP RGB '
                       'encoding)') from None
    _save_png(os.path.join(self.output_dir, str(sequence_id), f'{frame_id:06d}.png'), rgb)

  def finish(self) -> Dict[str, Any]:
    return {}


def read_kitti_step(path: str, label_divisor: int) -> np.ndarray:
  """A KITTI-STEP PNG -> int32 [H, W] panoptic ids."""
  return step_png.decode_panoptic_rgb(_load_png(path), label_divisor)


class VipsegWriter:
  """VIPSeg `pred.json` + `pan_pred/` id PNGs."""

  def __init__(self, output_dir: str, *, label_divisor: int, ignore_label: int, **unused):
    del unused
    self.output_dir = output_dir
    self._label_divisor = label_divisor
    self._ignore_label = ignore_label
    self._videos: Dict[str, List[Dict[str, Any]]] = {}
    self._ids: Dict[str, Dict[int, int]] = {}  # video -> panoptic id -> VIPSeg id.

  def write(self, sequence_id: str, frame_id: int, panoptic: np.ndarray) -> None:
    video = str(sequence_id)
    ids = self._ids.setdefault(video, {})
    values, inverse = np.unique(panoptic, return_inverse=True)
    vipseg_ids = np.zeros(len(values), np.int64)
    segments = []
    for index, value in enumerate(values.tolist()):
      category = value // self._label_divisor
      if category == self._ignore_label:
        continue  # Void stays 0.
      vipseg_ids[index] = ids.setdefault(value, len(ids) + 1)
      segments.append({'id': int(vipseg_ids[index]), 'category_id': int(category)})
    id_map = vipseg_ids[inverse.reshape(panoptic.shape)]
    rgb = np.stack([id_map % 256, id_map // 256 % 256, id_map // 65536], -1).astype(np.uint8)
    name = f'{frame_id:08d}'
    _save_png(os.path.join(self.output_dir, 'pan_pred', video, name + '.png'), rgb)
    self._videos.setdefault(video, []).append(
        {'file_name': name + '.png', 'image_id': name, 'segments_info': segments})

  def finish(self) -> Dict[str, Any]:
    """The `pred.json` entries of the videos this writer saw ({'annotations': [...]})."""
    return {'annotations': [{'video_id': video, 'annotations': frames}
                            for video, frames in self._videos.items()]}


def write_vipseg_json(output_dir: str, parts: Sequence[Dict[str, Any]]) -> str:
  """Merges `VipsegWriter.finish()` parts (e.g. one per worker) into `pred.json`."""
  annotations = [video for part in parts for video in part.get('annotations', [])]
  path = os.path.join(output_dir, 'pred.json')
  os.makedirs(output_dir, exist_ok=True)
  with open(path, 'w') as f:
    json.dump({'annotations': annotations}, f)
  return path


def read_vipseg(output_dir: str, *, label_divisor: int, ignore_label: int,
                thing_class_ids: Sequence[int]) -> Iterator[Tuple[str, str, np.ndarray]]:
  """Reads `pred.json` + `pan_pred/` back: yields (video, image_id, panoptic [H, W]).

  Raises:
    ValueError: an id in a PNG missing from `segments_info`, or a thing id that
      does not fit below `label_divisor`.
  """
  with open(os.path.join(output_dir, 'pred.json')) as f:
    prediction = json.load(f)
  things = set(thing_class_ids)
  for video in prediction['annotations']:
    for frame in video['annotations']:
      rgb = _load_png(os.path.join(output_dir, 'pan_pred', video['video_id'],
                                   frame['file_name'])).astype(np.int64)
      id_map = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
      lut = {0: ignore_label * label_divisor}
      for segment in frame['segments_info']:
        category, segment_id = segment['category_id'], segment['id']
        if category in things and segment_id >= label_divisor:
          raise ValueError(f'VIPSeg id {segment_id} does not fit below label_divisor '
                           f'{label_divisor}.')
        lut[segment_id] = category * label_divisor + (segment_id if category in things else 0)
      values, inverse = np.unique(id_map, return_inverse=True)
      missing = [v for v in values.tolist() if v not in lut]
      if missing:
        raise ValueError(f'{video["video_id"]}/{frame["file_name"]}: ids {missing} are not in '
                         'segments_info.')
      panoptic = np.array([lut[v] for v in values.tolist()], np.int64)[inverse]
      yield video['video_id'], frame['image_id'], panoptic.reshape(id_map.shape)


class VspwWriter:
  """VSPW class PNGs."""

  def __init__(self, output_dir: str, *, label_divisor: int, ignore_label: int, **unused):
    del unused
    self.output_dir = output_dir
    self._label_divisor = label_divisor
    self._ignore_label = ignore_label

  def write(self, sequence_id: str, frame_id: int, panoptic: np.ndarray) -> None:
    semantic = panoptic // self._label_divisor
    semantic = np.where(semantic == self._ignore_label, 255, semantic)
    if semantic.max() > 255:
      raise ValueError(f'frame {sequence_id}/{frame_id}: class {semantic.max()} > 255.')
    _save_png(os.path.join(self.output_dir, str(sequence_id), f'{frame_id:08d}.png'),
              semantic.astype(np.uint8))

  def finish(self) -> Dict[str, Any]:
    return {}


def read_vspw(path: str) -> np.ndarray:
  """A VSPW class PNG -> int32 [H, W] classes (255 = void)."""
  return _load_png(path).astype(np.int32)


_WRITERS = {'kitti_step': KittiStepWriter, 'vipseg': VipsegWriter, 'vspw': VspwWriter}


def make_writer(format_name: str, output_dir: str, *, label_divisor: int, ignore_label: int):
  """A writer with `write(sequence_id, frame_id, panoptic)` and `finish()`.

  Raises:
    ValueError: unknown format (the message lists the valid ones).
  """
  if format_name not in _WRITERS:
    raise ValueError(f'unknown prediction format "{format_name}"; expected one of '
                     f'{list(_WRITERS)}.')
  return _WRITERS[format_name](output_dir, label_divisor=label_divisor,
                               ignore_label=ignore_label)
