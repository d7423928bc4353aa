r"""Deterministic synthetic video panoptic data set in the KITTI-STEP layout.

The embedded default data set of the library: small enough to generate in a second
and to learn with a tiny CNN on a CPU, built so that video association matters.

Layout and encoding are exactly KITTI-STEP's (see `build_step_data`):

  <root>/images/{train,val}/<seq %04d>/<frame %06d>.png         RGB
  <root>/panoptic_maps/{train,val}/<seq %04d>/<frame %06d>.png  R = semantic id
      (255 = void), G = instance // 256, B = instance % 256 (0 on a thing = crowd)
  <root>/metadata.json   generation parameters + per-track ground truth metadata
  <root>/SYNTHETIC_COMPLETE.json   completion marker (parameters + format version)

Sequence ids are unique over splits (train 0000.., val after the train ones).

Classes (descriptor 'synthetic'): 0 road, 1 vegetation, 2 building, 3 sky, 4 car
(thing), 5 person (thing); ignore label 255; panoptic label divisor 1000.

Scene content of each sequence:
  * Stuff: sky on top (blue gradient), a building band with a skyline and a window
    grid (brown), road at the bottom (grey), 1-3 vegetation patches (textured green)
    on the building/road boundary.
  * Void: 1-2 dark blobs (label 255) and, in some sequences, the bottom rows (an
    ego-vehicle hood as in KITTI).
  * Things: cars (rounded rectangles, red family, dark window band) and persons
    (tall ellipses, purple family, skin-coloured head), moving with constant
    velocity plus small per-frame jitter, drawn far-to-near (depth = bottom row), so
    nearer objects occlude farther ones. Motion reflects only outside the image, so
    objects leave the frame and come back with constant on-screen velocity.
  * Every sequence contains, by construction: two look-alike cars (same colour)
    crossing each other (occlusion), an object that leaves and re-enters the frame,
    and random extra objects from small colour palettes (more look-alikes).
    A rare untracked object (instance 0, crowd) appears in about one sequence in
    four.
  * Mild per-frame Gaussian noise.

Each class keeps its own colour family and texture, so appearance is learnable, and
same-class instances may share a look, so identity must come from motion.

CLI:
  python -m deeplab2_vkmax.data.synthetic --output_dir=/tmp/synthetic [--seed=0]
"""

import dataclasses
import glob
import json
import os
import shutil
import threading
import uuid
from typing import Any, Dict, Iterator, List, Tuple

import numpy as np
from PIL import Image

from deeplab2_vkmax.data import dataset as dataset_lib
from deeplab2_vkmax.data import step_png

try:  # File locking guards concurrent generation; POSIX only.
  import fcntl
except ImportError:  # pragma: no cover - non-POSIX platforms.
  fcntl = None

_DESCRIPTOR = dataset_lib.get_dataset_descriptor('synthetic')
ROAD, VEGETATION, BUILDING, SKY, CAR, PERSON = range(_DESCRIPTOR.num_classes)
IGNORE_LABEL = _DESCRIPTOR.ignore_label  # 255
LABEL_DIVISOR = _DESCRIPTOR.panoptic_label_divisor  # 1000
FORMAT_VERSION = 1
MARKER_FILENAME = 'SYNTHETIC_COMPLETE.json'
METADATA_FILENAME = 'metadata.json'
SPLITS = ('train', 'val')

# Colour families (RGB). Palettes are small on purpose: same-class instances that
# draw the same colour are look-alikes.
_CAR_COLOURS = ((200, 30, 35), (225, 95, 30), (160, 20, 70), (235, 60, 60))
_PERSON_COLOURS = ((190, 50, 200), (140, 60, 225), (225, 90, 190))
_CAR_WINDOW = (40, 50, 85)
_PERSON_HEAD = (240, 200, 165)
_VOID_COLOUR = (25, 25, 25)

_process_lock = threading.Lock()


@dataclasses.dataclass(frozen=True)
class SyntheticParams:
  """Generation parameters; the completion marker stores them.

  Attributes:
    seed: Random seed; equal parameters give byte-identical files.
    num_train_sequences: Number of train sequences.
    train_frames: Frames per train sequence.
    num_val_sequences: Number of val sequences.
    val_frames: Frames per val sequence.
    height: Image height in pixels.
    width: Image width in pixels.
    max_objects: Things per sequence (>= 3: two crossing look-alikes, one object
      that leaves and re-enters, the rest random).
  """

  seed: int = 0
  num_train_sequences: int = 4
  train_frames: int = 20
  num_val_sequences: int = 2
  val_frames: int = 12
  height: int = 64
  width: int = 128
  max_objects: int = 6

  def __post_init__(self):
    for field in ('num_train_sequences', 'num_val_sequences'):
      if getattr(self, field) < 1:
        raise ValueError(f'{field} must be >= 1, got {getattr(self, field)}.')
    for field in ('train_frames', 'val_frames'):
      if getattr(self, field) < 2:
        raise ValueError(f'{field} must be >= 2, got {getattr(self, field)}.')
    if self.height < 32 or self.width < 64:
      raise ValueError(f'height x width must be at least 32 x 64, got '
                       f'{self.height} x {self.width}.')
    if self.max_objects < 3:
      raise ValueError(f'max_objects must be >= 3, got {self.max_objects}.')

  def split_shape(self, split: str) -> Tuple[int, int]:
    """Returns (num_sequences, num_frames) of `split`."""
    if split not in SPLITS:
      raise ValueError(f'Unknown split {split!r}; expected one of {SPLITS}.')
    return (getattr(self, f'num_{split}_sequences'), getattr(self, f'{split}_frames'))

  def first_sequence_index(self, split: str) -> int:
    """Sequence ids are unique over splits: val numbering follows train."""
    return 0 if split == 'train' else self.num_train_sequences


@dataclasses.dataclass
class Track:
  """One thing of a sequence and its per-frame ground truth.

  Attributes:
    track_id: Id unique in the sequence (>= 1).
    class_id: CAR or PERSON.
    instance_id: Label instance id: `track_id`, or 0 for a crowd object.
    appearance_id: Index of the colour in the class palette; equal ids within a
      class are look-alikes.
    role: 'crossing', 'reentering', 'random' or 'crowd'.
    half_size: (half height, half width) of the shape in pixels.
    centres: Per-frame (y, x) centre, floats, may lie outside the image.
    in_frame_area: Per-frame pixel count of the shape inside the image.
    visible_area: Per-frame pixel count after occlusion by nearer things.
    occluded_by: Per-frame sorted track ids that cover part of this track.
  """

  track_id: int
  class_id: int
  instance_id: int
  appearance_id: int
  role: str
  half_size: Tuple[float, float]
  colour: Tuple[int, int, int]
  centres: List[Tuple[float, float]] = dataclasses.field(default_factory=list)
  in_frame_area: List[int] = dataclasses.field(default_factory=list)
  visible_area: List[int] = dataclasses.field(default_factory=list)
  occluded_by: List[List[int]] = dataclasses.field(default_factory=list)

  def to_json(self) -> Dict[str, Any]:
    out = dataclasses.asdict(self)
    out['centres'] = [[round(y, 3), round(x, 3)] for y, x in self.centres]
    return out


@dataclasses.dataclass
class SyntheticSequence:
  """One generated sequence.

  Attributes:
    sequence_id: '%04d' id, unique over splits.
    images: uint8 [F, H, W, 3].
    semantic: int32 [F, H, W], 255 = void.
    instance: int32 [F, H, W], 0 on stuff, void and crowd pixels.
    tracks: Per-thing metadata.
  """

  sequence_id: str
  images: np.ndarray
  semantic: np.ndarray
  instance: np.ndarray
  tracks: List[Track]

  @property
  def panoptic(self) -> np.ndarray:
    """int32 [F, H, W] panoptic labels, `semantic * 1000 + instance`."""
    return self.semantic * LABEL_DIVISOR + self.instance


# ----------------------------------------------------------------------------
# Track events, computed from the metadata (also used by the tests).


def left_and_reentered(track: Dict[str, Any]) -> bool:
  """Whether a track is in the image, then fully out, then in again."""
  inside = [a > 0 for a in track['in_frame_area']]
  first = inside.index(True) if True in inside else None
  if first is None:
    return False
  seen_out = False
  for flag in inside[first:]:
    if not flag:
      seen_out = True
    elif seen_out:
      return True
  return False


def occluded_frames(track: Dict[str, Any]) -> List[int]:
  """Frames where another thing covers part of the track inside the image."""
  return [f for f, ids in enumerate(track['occluded_by']) if ids]


def look_alike_pairs(tracks: List[Dict[str, Any]]) -> List[Tuple[int, int]]:
  """Pairs of track ids of one class that share their appearance."""
  pairs = []
  for i, a in enumerate(tracks):
    for b in tracks[i + 1:]:
      if (a['class_id'] == b['class_id'] and
          a['appearance_id'] == b['appearance_id']):
        pairs.append((a['track_id'], b['track_id']))
  return pairs


# ----------------------------------------------------------------------------
# Generation.


def _reflect(position: float, low: float, high: float) -> float:
  """Folds `position` into [low, high] (triangle wave): a bounce off the bounds."""
  span = high - low
  offset = (position - low) % (2.0 * span)
  return low + (offset if offset <= span else 2.0 * span - offset)


def _shape_mask(class_id: int, centre: Tuple[float, float],
                half_size: Tuple[float, float], ys: np.ndarray,
                xs: np.ndarray) -> np.ndarray:
  """Boolean [H, W] mask of a car (rounded rectangle) or person (ellipse)."""
  cy, cx = centre
  hh, hw = half_size
  dy = np.abs(ys - cy)
  dx = np.abs(xs - cx)
  if class_id == CAR:
    radius = 0.45 * hh
    # Distance to the inner rectangle shrunk by the corner radius.
    ey = np.maximum(dy - (hh - radius), 0.0)
    ex = np.maximum(dx - (hw - radius), 0.0)
    return (dy <= hh) & (dx <= hw) & (ey * ey + ex * ex <= radius * radius)
  return (dy / hh) ** 2 + (dx / hw) ** 2 <= 1.0


def _background(rng: np.random.Generator, height: int,
                width: int) -> Tuple[np.ndarray, np.ndarray]:
  """Static stuff layout and texture of one sequence.

  Returns:
    image float32 [H, W, 3] and semantic int32 [H, W].
  """
  scale = height / 64.0
  ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
  semantic = np.full((height, width), ROAD, np.int32)
  image = np.zeros((height, width, 3), np.float32)

  sky_end = int(round(height * rng.uniform(0.22, 0.30)))
  road_start = int(round(height * rng.uniform(0.48, 0.56)))

  # Building band with a skyline: blocks of varying roof height.
  block_width = max(4, int(width / 8))
  roofs = np.zeros(width, np.int32)
  block_tints = []
  for start in range(0, width, block_width):
    roof = sky_end + int(rng.integers(-3, 4) * scale)
    roofs[start:start + block_width] = max(2, roof)
    block_tints.append(rng.uniform(-15, 15))
  building = (ys >= roofs[None, :]) & (ys < road_start)
  semantic[ys < road_start] = SKY
  semantic[building] = BUILDING

  # Sky: blue, lighter towards the top.
  t = ys / max(1, road_start)
  sky_rgb = np.stack([150 - 50 * t, 195 - 35 * t, 240 - 20 * t], axis=-1)
  # Building: brown, per-block tint, dark window grid.
  tint = np.array(block_tints, np.float32)[(xs // block_width).astype(np.int32)]
  building_rgb = np.stack([140 + tint, 95 + tint * 0.6, 75 + tint * 0.4], axis=-1)
  window_step = max(4, int(round(6 * scale)))
  windows = ((ys - roofs[None, :]) % window_step >= window_step - 2) & (
      xs % window_step < window_step // 2)
  building_rgb[windows] = (60, 50, 45)
  # Road: grey with fixed fine grain.
  road_rgb = np.array([85, 85, 92], np.float32) + rng.normal(
      0, 5, (height, width, 1)).astype(np.float32)

  image[:] = road_rgb
  image[semantic == SKY] = sky_rgb[semantic == SKY]
  image[semantic == BUILDING] = building_rgb[semantic == BUILDING]

  # Vegetation patches on the building / road boundary, blotchy green texture.
  grain = rng.uniform(-30, 30, (height, width)).astype(np.float32)
  for _ in range(int(rng.integers(1, 4))):
    cy = road_start + rng.uniform(-4, 2) * scale
    cx = rng.uniform(0, width)
    ry = rng.uniform(4, 8) * scale
    rx = rng.uniform(6, 14) * scale
    patch = ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 <= 1.0
    semantic[patch] = VEGETATION
    image[patch] = np.stack(
        [50 + 0.3 * grain, 130 + grain, 40 + 0.3 * grain], axis=-1)[patch]

  # Void: dark blobs (signs, unlabelled clutter) and sometimes an ego hood.
  for _ in range(int(rng.integers(1, 3))):
    vh = rng.uniform(2, 4) * scale
    vw = rng.uniform(3, 7) * scale
    cy = rng.uniform(vh, height - vh)
    cx = rng.uniform(vw, width - vw)
    blob = (np.abs(ys - cy) <= vh) & (np.abs(xs - cx) <= vw)
    semantic[blob] = IGNORE_LABEL
    image[blob] = _VOID_COLOUR
  if rng.uniform() < 0.5:
    hood = ys >= height - max(1, int(round(2 * scale)))
    semantic[hood] = IGNORE_LABEL
    image[hood] = _VOID_COLOUR
  return image, semantic


def _make_tracks(rng: np.random.Generator, height: int, width: int,
                 num_frames: int, max_objects: int,
                 road_top: int) -> List[Track]:
  """Creates the scenario: crossing look-alike cars, a re-entering object, extras."""
  scale = height / 64.0
  tracks: List[Track] = []

  def half_size(class_id: int) -> Tuple[float, float]:
    if class_id == CAR:
      return (rng.uniform(5, 6.5) * scale, rng.uniform(10, 13) * scale)
    return (rng.uniform(8, 9.5) * scale, rng.uniform(2.6, 3.4) * scale)

  def ground_y(hh: float) -> float:
    """Centre row so that the bottom of the shape stands on the road."""
    low = road_top + 0.5 * hh
    high = height - hh - 1
    return float(rng.uniform(low, max(low, high)))

  def add(class_id, role, appearance_id, size, y0, x0, vy, vx, margin=None):
    track_id = len(tracks) + 1
    palette = _CAR_COLOURS if class_id == CAR else _PERSON_COLOURS
    track = Track(
        track_id=track_id, class_id=class_id,
        instance_id=0 if role == 'crowd' else track_id,
        appearance_id=appearance_id, role=role, half_size=size,
        colour=palette[appearance_id])
    if margin is None:
      # Bounce far enough out that a bounce never happens between two frames that
      # both show the object: on-screen motion keeps its direction.
      margin = size[1] + abs(vx) * rng.uniform(1.0, 2.0) + 2.0 * scale
    jitter = rng.normal(0, 0.35, (num_frames, 2))
    for f in range(num_frames):
      y = np.clip(y0 + vy * f + jitter[f, 0], road_top - size[0], height - 1)
      x = _reflect(x0 + vx * f, -margin, width - 1 + margin) + jitter[f, 1]
      track.centres.append((float(y), float(x)))
    tracks.append(track)

  # 1-2: look-alike cars crossing each other around the middle of the sequence.
  appearance = int(rng.integers(len(_CAR_COLOURS)))
  size_a, size_b = half_size(CAR), half_size(CAR)
  y_a = ground_y(size_a[0])
  y_b = float(np.clip(y_a + rng.choice([-1, 1]) * rng.uniform(2.5, 4) * scale,
                      road_top, height - size_b[0] - 1))
  x_a = rng.uniform(0.08, 0.22) * width
  x_b = rng.uniform(0.78, 0.92) * width
  meet = max(1.0, (num_frames - 1) * rng.uniform(0.4, 0.6))
  closing_speed = (x_b - x_a) / meet
  share = rng.uniform(0.4, 0.6)
  add(CAR, 'crossing', appearance, size_a, y_a, x_a, 0.0, share * closing_speed)
  add(CAR, 'crossing', appearance, size_b, y_b, x_b, 0.0,
      -(1 - share) * closing_speed)

  # 3: an object at an edge moving outwards fast: leaves, bounces off-screen,
  # comes back.
  class_id = CAR if rng.uniform() < 0.5 else PERSON
  size = half_size(class_id)
  palette_size = len(_CAR_COLOURS if class_id == CAR else _PERSON_COLOURS)
  direction = rng.choice([-1.0, 1.0])
  speed = rng.uniform(4.0, 7.0) * scale
  # Fully out after 0.6-1.5 frames, then 2-4 frames out of sight before returning.
  exit_x = width - 1 + size[1] - speed * rng.uniform(0.6, 1.5)
  start_x = exit_x if direction > 0 else width - 1 - exit_x
  add(class_id, 'reentering', int(rng.integers(palette_size)), size,
      ground_y(size[0]), start_x, rng.uniform(-0.1, 0.1), direction * speed,
      margin=size[1] + speed * rng.uniform(1.0, 2.0))

  # Extras: random class, palette colour, position and velocity; one may be crowd.
  crowd_index = (int(rng.integers(3, max_objects))
                 if max_objects > 3 and rng.uniform() < 0.25 else -1)
  for index in range(3, max_objects):
    class_id = CAR if rng.uniform() < 0.45 else PERSON
    size = half_size(class_id)
    palette_size = len(_CAR_COLOURS if class_id == CAR else _PERSON_COLOURS)
    role = 'crowd' if index == crowd_index else 'random'
    vx = rng.choice([-1.0, 1.0]) * rng.uniform(1.0, 4.0) * scale
    add(class_id, role, int(rng.integers(palette_size)), size,
        ground_y(size[0]), rng.uniform(0, width), rng.uniform(-0.15, 0.15), vx)
  return tracks


def generate_sequence(params: SyntheticParams, split: str,
                      sequence_index: int) -> SyntheticSequence:
  """Generates one sequence; a pure function of (params, split, index).

  Args:
    params: Generation parameters.
    split: 'train' or 'val'.
    sequence_index: Index of the sequence within the split.

  Returns:
    The `SyntheticSequence` (images, labels and track metadata).
  """
  num_sequences, num_frames = params.split_shape(split)
  if not 0 <= sequence_index < num_sequences:
    raise ValueError(f'sequence_index {sequence_index} outside [0, '
                     f'{num_sequences}) for split {split!r}.')
  height, width = params.height, params.width
  rng = np.random.default_rng(
      [params.seed, SPLITS.index(split), sequence_index, FORMAT_VERSION])
  background, background_semantic = _background(rng, height, width)
  road_rows = np.nonzero((background_semantic == ROAD).any(axis=1))[0]
  road_top = int(road_rows[0]) if road_rows.size else height // 2
  tracks = _make_tracks(rng, height, width, num_frames, params.max_objects,
                        road_top)
  # Far to near: the lower the bottom edge, the nearer; ties by track id.
  order = sorted(range(len(tracks)), key=lambda i: (
      tracks[i].centres[0][0] + tracks[i].half_size[0], tracks[i].track_id))

  ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
  images = np.zeros((num_frames, height, width, 3), np.uint8)
  semantic = np.zeros((num_frames, height, width), np.int32)
  instance = np.zeros((num_frames, height, width), np.int32)
  noise_rng = np.random.default_rng(
      [params.seed, SPLITS.index(split), sequence_index, FORMAT_VERSION, 1])
  for f in range(num_frames):
    image = background.copy()
    sem = background_semantic.copy()
    inst = np.zeros((height, width), np.int32)
    owner = np.zeros((height, width), np.int32)  # Track id incl. crowd, 0 = none.
    covered: Dict[int, set] = {t.track_id: set() for t in tracks}
    masks = {}
    for i in order:
      track = tracks[i]
      mask = _shape_mask(track.class_id, track.centres[f], track.half_size, ys, xs)
      masks[track.track_id] = mask
      for under in np.unique(owner[mask]):
        if under:
          covered[int(under)].add(track.track_id)
      cy, cx = track.centres[f]
      hh, _ = track.half_size
      colour = np.array(track.colour, np.float32)
      image[mask] = colour
      if track.class_id == CAR:
        band = mask & (ys < cy - 0.2 * hh) & (ys > cy - 0.75 * hh)
        image[band] = _CAR_WINDOW
      else:
        head = mask & (ys < cy - 0.55 * hh)
        image[head] = _PERSON_HEAD
      sem[mask] = track.class_id
      inst[mask] = track.instance_id
      owner[mask] = track.track_id
    for track in tracks:
      track.in_frame_area.append(int(masks[track.track_id].sum()))
      track.visible_area.append(int((owner == track.track_id).sum()))
      track.occluded_by.append(sorted(covered[track.track_id]))
    image += noise_rng.normal(0.0, 3.0, image.shape).astype(np.float32)
    images[f] = np.clip(np.round(image), 0, 255).astype(np.uint8)
    semantic[f] = sem
    instance[f] = inst
  sequence_id = '%04d' % (params.first_sequence_index(split) + sequence_index)
  return SyntheticSequence(sequence_id, images, semantic, instance, tracks)


# ----------------------------------------------------------------------------
# Writing, first-use generation, reading back.


def write_synthetic_dataset(output_dir: str, params: SyntheticParams) -> Dict[str, Any]:
  """Writes the whole data set under `output_dir` (no completion marker).

  Args:
    output_dir: Destination root; created if missing.
    params: Generation parameters.

  Returns:
    The metadata dict also written to `<output_dir>/metadata.json`:
    {'params': {...}, 'format_version': int, 'sequences': {split: {seq_id:
    {'num_frames': F, 'tracks': [Track.to_json(), ...]}}}}.
  """
  metadata = {'params': dataclasses.asdict(params),
              'format_version': FORMAT_VERSION,
              'sequences': {}}
  for split in SPLITS:
    metadata['sequences'][split] = {}
    num_sequences, _ = params.split_shape(split)
    for index in range(num_sequences):
      sequence = generate_sequence(params, split, index)
      image_dir = os.path.join(output_dir, 'images', split, sequence.sequence_id)
      label_dir = os.path.join(output_dir, 'panoptic_maps', split,
                               sequence.sequence_id)
      os.makedirs(image_dir, exist_ok=True)
      os.makedirs(label_dir, exist_ok=True)
      for f in range(sequence.images.shape[0]):
        name = '%06d.png' % f
        Image.fromarray(sequence.images[f]).save(os.path.join(image_dir, name),
                                                 format='PNG')
        rgb = step_png.encode_panoptic_rgb(sequence.semantic[f], sequence.instance[f])
        Image.fromarray(rgb).save(os.path.join(label_dir, name), format='PNG')
      metadata['sequences'][split][sequence.sequence_id] = {
          'num_frames': int(sequence.images.shape[0]),
          'tracks': [t.to_json() for t in sequence.tracks]}
  with open(os.path.join(output_dir, METADATA_FILENAME), 'w') as f:
    json.dump(metadata, f, indent=1, sort_keys=True)
  return metadata


def _marker_content(params: SyntheticParams) -> Dict[str, Any]:
  return {'format_version': FORMAT_VERSION, 'params': dataclasses.asdict(params)}


def _is_complete(root: str, params: SyntheticParams) -> bool:
  try:
    with open(os.path.join(root, MARKER_FILENAME)) as f:
      return json.load(f) == _marker_content(params)
  except (OSError, ValueError):
    return False


class _FileLock:
  """Exclusive lock on a sibling file: processes via flock, threads via a mutex."""

  def __init__(self, path: str):
    self._path = path
    self._file = None

  def __enter__(self):
    _process_lock.acquire()
    if fcntl is not None:
      self._file = open(self._path, 'a')
      fcntl.flock(self._file, fcntl.LOCK_EX)
    return self

  def __exit__(self, *unused):
    if self._file is not None:
      fcntl.flock(self._file, fcntl.LOCK_UN)
      self._file.close()
    _process_lock.release()


def ensure_synthetic_dataset(root: str, **params: Any) -> str:
  """Generates the synthetic data set under `root` unless already there.

  Generation writes into a temporary sibling directory and renames it into place,
  so `root` is either absent, a complete data set, or (after a parameter change)
  replaced as a whole. A lock file next to `root` serialises concurrent callers
  (threads and processes); the completion marker records the parameters, so a
  different parameter set regenerates.

  Args:
    root: Data set directory.
    **params: `SyntheticParams` fields (seed, num_train_sequences, train_frames,
      num_val_sequences, val_frames, height, width, max_objects).

  Returns:
    `root`.

  Raises:
    ValueError: For unknown parameters, or if `root` exists, is not empty and is
      not a synthetic data set (it is never deleted then).
  """
  valid = {f.name for f in dataclasses.fields(SyntheticParams)}
  unknown = sorted(set(params) - valid)
  if unknown:
    raise ValueError(f'Unknown synthetic parameters {unknown}; expected some of '
                     f'{sorted(valid)}.')
  config = SyntheticParams(**params)
  root = os.path.abspath(root)
  if _is_complete(root, config):
    return root
  parent, name = os.path.split(root)
  os.makedirs(parent, exist_ok=True)
  with _FileLock(os.path.join(parent, f'.{name}.lock')):
    if _is_complete(root, config):  # Another caller finished meanwhile.
      return root
    if os.path.isdir(root) and os.listdir(root) and not os.path.exists(
        os.path.join(root, MARKER_FILENAME)):
      raise ValueError(f'{root} exists, is not empty and holds no '
                       f'{MARKER_FILENAME}: refusing to overwrite it.')
    tmp = os.path.join(parent, f'.{name}.tmp-{os.getpid()}-{uuid.uuid4().hex}')
    try:
      write_synthetic_dataset(tmp, config)
      with open(os.path.join(tmp, MARKER_FILENAME), 'w') as f:
        json.dump(_marker_content(config), f, sort_keys=True)
      stale = None
      if os.path.exists(root):
        stale = os.path.join(parent, f'.{name}.stale-{uuid.uuid4().hex}')
        os.rename(root, stale)
      os.rename(tmp, root)
      if stale is not None:
        shutil.rmtree(stale, ignore_errors=True)
    finally:
      if os.path.exists(tmp):
        shutil.rmtree(tmp, ignore_errors=True)
  return root


def load_metadata(root: str) -> Dict[str, Any]:
  """Reads `<root>/metadata.json` (see `write_synthetic_dataset`)."""
  with open(os.path.join(root, METADATA_FILENAME)) as f:
    return json.load(f)


def ground_truth_sequences(
    root: str, split: str,
    label_divisor: int = LABEL_DIVISOR) -> Iterator[Tuple[str, np.ndarray]]:
  """Yields (sequence_id, int32 [F, H, W] panoptic labels) of a KITTI-STEP tree.

  Reads `<root>/panoptic_maps/<split>/<seq>/*.png` in sequence and frame order; works
  for the synthetic set and for real KITTI-STEP alike.

  Args:
    root: KITTI-STEP style root.
    split: Split folder name.
    label_divisor: Panoptic label divisor.

  Raises:
    ValueError: If the split folder is missing or empty.
  """
  split_dir = os.path.join(root, 'panoptic_maps', split)
  if not os.path.isdir(split_dir):
    raise ValueError(f'No panoptic maps folder {split_dir}.')
  sequences = sorted(d for d in os.listdir(split_dir)
                     if os.path.isdir(os.path.join(split_dir, d)))
  if not sequences:
    raise ValueError(f'{split_dir} holds no sequence folders.')
  for sequence_id in sequences:
    folder = os.path.join(split_dir, sequence_id)
    frames = sorted(n for n in os.listdir(folder) if n.endswith('.png'))
    yield sequence_id, np.stack(
        [step_png.read_panoptic_png(os.path.join(folder, n), label_divisor) for n in frames])


def main(argv=None) -> None:
  """CLI entry point (absl flags)."""
  import time  # pylint: disable=g-import-not-at-top
  from absl import app, flags  # pylint: disable=g-import-not-at-top,g-multiple-import

  defaults = SyntheticParams()
  flags.DEFINE_string('output_dir', None, 'Destination root.', required=True)
  for field in dataclasses.fields(SyntheticParams):
    flags.DEFINE_integer(field.name, getattr(defaults, field.name), field.name)

  def run(unused_argv):
    values = {f.name: flags.FLAGS[f.name].value
              for f in dataclasses.fields(SyntheticParams)}
    start = time.perf_counter()
    root = ensure_synthetic_dataset(flags.FLAGS.output_dir, **values)
    print(f'Synthetic data set ready at {root} '
          f'({time.perf_counter() - start:.2f} s).')

  app.run(run, argv=argv)


if __name__ == '__main__':
  main()


def ensure_synthetic_records(params, split: str) -> str:
  """The TFRecord pattern of a synthetic split, generated and converted on first use.

  Args:
    params: `SyntheticDataOptions` (root folder, seed, sizes).
    split: 'train' or 'val'.
  """
  from deeplab2_vkmax.data import build_step_data  # pylint: disable=g-import-not-at-top
  frame_size = tuple(params.frame_size) or None
  root = ensure_synthetic_dataset(
      params.root_dir, seed=params.seed,
      num_train_sequences=params.num_train_sequences,
      num_val_sequences=params.num_val_sequences,
      train_frames=params.train_frames_per_sequence,
      val_frames=params.val_frames_per_sequence,
      **({'height': frame_size[0], 'width': frame_size[1]} if frame_size else {}))
  record_dir = os.path.join(root, 'tfrecord')
  pattern = os.path.join(record_dir, f'{split}-*.tfrecord')
  if not glob.glob(pattern):
    build_step_data.convert_split(root, split, record_dir, num_shards=1,
                                  dataset_name='synthetic')
  return pattern
