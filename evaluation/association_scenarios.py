"""Synthetic association scenarios: street-like videos, their ground truth and
clip-kMaX-like predictions, and the runner that scores the associater on them.

Numpy only. The ablation tables of `bench/association.py` (paper Tables 5-9) and
the association tests rest on these scenarios; the families, the noise model and
the appearance model are described in that script's docstring and in
docs/association.md.
"""

import dataclasses
from typing import Dict, List, Tuple, Union

import numpy as np

from deeplab2_vkmax.association import video_associater
from deeplab2_vkmax.evaluation import stq
from deeplab2_vkmax.protos import association_pb2
from deeplab2_vkmax.protos import fields

_DEFAULTS = fields.defaults(association_pb2.AssociationOptions)

DIVISOR = 10000
PERSON, CAR = 11, 13
ROAD, OCCLUDER, SKY = 0, 8, 10
NUM_CLASSES = 19
FAMILIES = ('traffic', 'crossing', 'occlusion', 'reentry', 'ego')


@dataclasses.dataclass
class Track:
  """One ground-truth object: a rectangle per frame.

  The lane families move a fixed-size rectangle along a piecewise-linear x(t)
  (`top`, `height`, `width` are ints); `ego` projects a 3-D box, so its `top`,
  `height` and `width` are float arrays [num_frames] too.
  """
  track_id: int
  semantic: int
  top: Union[int, np.ndarray]
  height: Union[int, np.ndarray]
  width: Union[int, np.ndarray]
  x_at: np.ndarray  # float [num_frames], left edge per frame (may be off-image).
  identity: np.ndarray  # float [D], unit appearance identity.

  def rect(self, f: int) -> Tuple[float, float, float, float]:
    """(top, bottom, left, right) at frame f; right and bottom exclusive."""
    top, height, width = (np.asarray(v)[f] if np.ndim(v) else v
                          for v in (self.top, self.height, self.width))
    return top, top + height, self.x_at[f], self.x_at[f] + width

  def depth(self, f: int) -> float:
    """Bottom row at frame f: larger = nearer the camera = drawn later."""
    return self.rect(f)[1]

  def area(self, f: int) -> float:
    """Full (unoccluded, unclipped) area in pixels at frame f."""
    top, bottom, left, right = self.rect(f)
    return (bottom - top) * (right - left)


@dataclasses.dataclass
class Scenario:
  height: int
  width: int
  num_frames: int
  tracks: List[Track]
  occluders: List[Tuple[int, int, int, int]]  # (top, bottom, left, right).


@dataclasses.dataclass
class Options:
  height: int = 120
  width: int = 400
  num_frames: int = 60
  embedding_dim: int = 64
  identity_spread: float = 0.3
  appearance_noise: float = 0.25
  jitter_px: int = 1
  miss_rate: float = 0.02
  min_visible_px: int = 40


def identity(prototype: np.ndarray, spread: float, rng) -> np.ndarray:
  u = rng.normal(size=prototype.shape)
  v = prototype + spread * u / np.linalg.norm(u)
  return v / np.linalg.norm(v)


def _object_size(semantic: int, rng) -> Tuple[int, int]:
  if semantic == CAR:
    return int(rng.integers(18, 30)), int(rng.integers(36, 60))
  return int(rng.integers(26, 40)), int(rng.integers(10, 16))


def make_scenario(family: str, options: Options, prototypes: Dict[int, np.ndarray],
                  rng) -> Scenario:
  """One synthetic video of the given family."""
  h, w, n = options.height, options.width, options.num_frames
  t = np.arange(n, dtype=np.float64)
  tracks: List[Track] = []
  occluders = []

  def add(semantic, top, size, x_at):
    tracks.append(Track(len(tracks) + 1, semantic, int(top), size[0], size[1],
                        x_at, identity(prototypes[semantic],
                                        options.identity_spread, rng)))

  lanes = np.linspace(h * 0.35, h * 0.75, 5).astype(int)  # top rows of lanes
  if family == 'traffic':
    # KITTI-like streams: each lane carries a queue of look-alike tracks that
    # enter through one image edge and leave through the other (ego-motion past
    # parked cars), so many tracks die and many new ones appear.
    for lane in lanes:
      semantic = CAR if rng.random() < 0.6 else PERSON
      speed = rng.uniform(2.0, 6.0)
      direction = rng.choice([-1, 1])
      entry = -w / speed  # the first tracks are already in view at frame 0.
      while entry < n:
        size = _object_size(semantic, rng)
        edge = -size[1] if direction > 0 else w
        add(semantic, lane + rng.integers(-2, 3), size,
            edge + direction * speed * (t - entry))
        entry += (size[1] + rng.uniform(10, 80)) / speed
  elif family == 'crossing':
    for lane in lanes:
      semantic = CAR if rng.random() < 0.6 else PERSON
      meet_frame = rng.uniform(0.2 * n, 0.8 * n)
      meet_x = rng.uniform(0.2 * w, 0.8 * w)
      for direction, depth_offset in ((1, 0), (-1, 3)):
        size = _object_size(semantic, rng)
        speed = direction * rng.uniform(1.5, 4.0)
        add(semantic, lane + depth_offset, size, meet_x + speed * (t - meet_frame))
  elif family == 'occlusion':
    for left in np.sort(rng.choice(np.arange(40, w - 100, 10), 3, replace=False)):
      width = int(rng.integers(12, 90))
      occluders.append((int(h * 0.2), h, int(left), int(left) + width))
    for lane in lanes:
      for _ in range(2):
        semantic = CAR if rng.random() < 0.6 else PERSON
        size = _object_size(semantic, rng)
        speed = rng.uniform(1.0, 5.0) * rng.choice([-1, 1])
        start = rng.uniform(0, w - size[1])
        add(semantic, lane + rng.integers(-2, 3), size, start + speed * t)
  elif family == 'reentry':
    for lane in lanes:
      for _ in range(2):
        semantic = CAR if rng.random() < 0.6 else PERSON
        size = _object_size(semantic, rng)
        speed = rng.uniform(2.0, 5.0)
        direction = rng.choice([-1, 1])
        start = rng.uniform(0.2 * w, 0.8 * w)
        # Out of view after it crosses the edge; turns around `away` frames later.
        edge = w if direction > 0 else -size[1]
        exit_frame = (edge - start) / (direction * speed)
        turn = exit_frame + rng.uniform(1.5, 7.5)  # back in view 3-15 frames later
        x_at = np.where(t < turn, start + direction * speed * t,
                        start + direction * speed * (2 * turn - t))
        add(semantic, lane + rng.integers(-2, 3), size, x_at)
  elif family == 'ego':
    _ego_motion_tracks(options, prototypes, rng, tracks)
  else:
    raise ValueError(f'family must be one of {FAMILIES}; received {family!r}.')
  return Scenario(h, w, n, tracks, occluders)


# `ego`: KITTI-STEP's camera driving forward. Geometry from the KITTI raw
# calibration of the colour camera image_02 (focal 721.5 px, principal point
# (609.6, 172.9) on 1242x375 frames), scaled to the scenario's frame size; camera
# 1.65 m above the road; 10 frames per second; right-hand traffic. Objects are
# 3-D boxes on the road plane (car 1.8 x 1.5 x 4.3 m, person 0.6 x 1.75 x 0.5 m,
# width x height x length along the road); a track's rectangle is the image box
# of its projected corners.
_KITTI = {'width': 1242, 'height': 375, 'focal': 721.5, 'cx': 609.6, 'cy': 172.9,
          'camera_height': 1.65}
_EGO_SIZES = {CAR: (1.8, 1.5, 4.3), PERSON: (0.6, 1.75, 0.5)}  # W, H, L in m.
_EGO_RANGE_M = 70.0  # farthest depth an actor starts at (~2x the detection range).
_EGO_NEAR_M = 1.0  # nearer than this (or behind the camera): out of the picture.


def project_ego_box(options: Options, semantic: int, lateral_m: np.ndarray,
                    depth_m: np.ndarray):
  """Image box per frame of an object on the road plane.

  Args:
    options: frame size.
    semantic: CAR or PERSON (sets the 3-D size).
    lateral_m: float [F], X of the box centre (right positive), metres.
    depth_m: float [F], Z of the box's near face, metres.

  Returns:
    (top, height, width, left), float [F] each; frames with the object nearer
    than `_EGO_NEAR_M` get a box far off the image.
  """
  fx = _KITTI['focal'] * options.width / _KITTI['width']
  fy = _KITTI['focal'] * options.height / _KITTI['height']
  cx = _KITTI['cx'] * options.width / _KITTI['width']
  cy = _KITTI['cy'] * options.height / _KITTI['height']
  width_m, height_m, length_m = _EGO_SIZES[semantic]
  near = np.maximum(depth_m, _EGO_NEAR_M)
  corners_z = np.stack([near, near, near + length_m, near + length_m])  # [4, F]
  corners_x = np.stack([lateral_m - width_m / 2, lateral_m + width_m / 2] * 2)
  xs = cx + fx * corners_x / corners_z
  left, right = xs.min(axis=0), xs.max(axis=0)
  # Ground contact of the near face is the lowest point; the highest point is
  # the near top edge for an object taller than the camera, else the far one.
  bottom = cy + fy * _KITTI['camera_height'] / near
  drop = _KITTI['camera_height'] - height_m
  top = np.minimum(cy + fy * drop / near, cy + fy * drop / (near + length_m))
  gone = depth_m < _EGO_NEAR_M
  return (top, bottom - top, right - left,
          np.where(gone, -10.0 * options.width, left))


def _ego_motion_tracks(options: Options, prototypes, rng, tracks: List[Track]) -> None:
  """Appends the `ego` family's tracks (parked cars, pedestrians, traffic).

  Per video: ego speed 0.4-1.1 m per frame (14-40 km/h at 10 fps). Each side of
  the road is lined with parked cars (probability 0.8 per side), 3.2-4.2 m from
  the camera axis, 1-10 m apart; pedestrians (Poisson, mean 3) walk along the
  sidewalks 5-7 m out at 0.8-1.5 m/s either way; oncoming cars (Poisson, mean 2)
  drive in the left lane 1.6-2.4 m out at 6-14 m/s; a lead car (probability 0.5)
  drives ahead in the ego lane, 8-30 m away, at the ego speed +- 1.5 m/s (it
  keeps at least 6 m).
  Static things grow out of the vanishing point and leave through the side edges
  or the bottom, as in KITTI-STEP; all same-class actors look alike.
  """
  n = options.num_frames
  t = np.arange(n, dtype=np.float64)
  speed = rng.uniform(0.4, 1.1)
  road_end = _EGO_RANGE_M + speed * n
  actors = []  # (semantic, lateral [F], depth [F])
  for side in (-1, 1):
    if rng.random() < 0.8:
      z = rng.uniform(0.0, 6.0)
      while z < road_end:
        actors.append((CAR, np.full(n, side * rng.uniform(3.2, 4.2)), z - speed * t))
        z += _EGO_SIZES[CAR][2] + rng.uniform(1.0, 10.0)
  for _ in range(rng.poisson(3)):
    walk = rng.uniform(0.08, 0.15) * rng.choice([-1, 1])
    actors.append((PERSON, np.full(n, rng.choice([-1, 1]) * rng.uniform(5.0, 7.0)),
                   rng.uniform(3.0, road_end) + (walk - speed) * t))
  for _ in range(rng.poisson(2)):
    closing = speed + rng.uniform(0.6, 1.4)
    actors.append((CAR, np.full(n, -rng.uniform(1.6, 2.4)),
                   rng.uniform(15.0, _EGO_RANGE_M + closing * n) - closing * t))
  if rng.random() < 0.5:
    actors.append((CAR, np.full(n, rng.uniform(-0.4, 0.4)), np.maximum(
        rng.uniform(8.0, 30.0) + rng.uniform(-0.15, 0.15) * t, 6.0)))
  for semantic, lateral, depth in actors:
    top, height, width, left = project_ego_box(options, semantic, lateral, depth)
    tracks.append(Track(len(tracks) + 1, semantic, top, height, width, left,
                        identity(prototypes[semantic], options.identity_spread, rng)))


def _background(scenario: Scenario) -> np.ndarray:
  frame = np.full((scenario.height, scenario.width), ROAD * DIVISOR, dtype=np.int32)
  frame[: scenario.height // 3] = SKY * DIVISOR
  return frame


def _paint_occluders(frame: np.ndarray, scenario: Scenario) -> None:
  for top, bottom, left, right in scenario.occluders:
    frame[top:bottom, left:right] = OCCLUDER * DIVISOR


def paint(frame: np.ndarray, top, bottom, left, right, value) -> None:
  h, w = frame.shape
  top, bottom = max(int(top), 0), min(int(bottom), h)
  left, right = max(int(round(left)), 0), min(int(round(right)), w)
  if top < bottom and left < right:
    frame[top:bottom, left:right] = value


def depth_order(scenario: Scenario, f: int) -> List[Track]:
  """Tracks far to near at frame f (painting order; ties keep track order)."""
  return sorted(scenario.tracks, key=lambda tr: tr.depth(f))


def render_ground_truth(scenario: Scenario) -> np.ndarray:
  """int32 [F, H, W] ground-truth panoptic video (track id = instance)."""
  frames = np.empty((scenario.num_frames, scenario.height, scenario.width), np.int32)
  for f in range(scenario.num_frames):
    frame = _background(scenario)
    for tr in depth_order(scenario, f):
      paint(frame, *tr.rect(f), tr.semantic * DIVISOR + tr.track_id)
    _paint_occluders(frame, scenario)
    frames[f] = frame
  return frames


def predict_clips(scenario: Scenario, ground_truth: np.ndarray, clip_length: int,
                  options: Options, rng):
  """Noisy per-clip predictions in the associater's input contract.

  Returns:
    list of (panoptic int32 [T, H, W], {panoptic id: embedding [D]}).
  """
  stride = max(clip_length - 1, 1)
  keys, counts = track_visibility(ground_truth)
  visible = np.zeros((scenario.num_frames, len(scenario.tracks) + 1), np.int64)
  visible[:, keys % DIVISOR] = counts  # Column = track id.
  full_area = np.array([[0] + [tr.area(f) for tr in scenario.tracks]
                        for f in range(scenario.num_frames)], np.float64)  # [F, K+1]
  clips = []
  for start in range(0, scenario.num_frames - clip_length + 1, stride):
    frames = range(start, start + clip_length)
    local_ids = rng.permutation(DIVISOR - 1)[:len(scenario.tracks)] + 1
    missed = rng.random(len(scenario.tracks)) < options.miss_rate
    panoptic = np.empty((clip_length, scenario.height, scenario.width), np.int32)
    detected = {}  # track id -> Track
    for k, f in enumerate(frames):
      frame = _background(scenario)
      for tr in depth_order(scenario, f):
        j = rng.integers(-options.jitter_px, options.jitter_px + 1, 4)
        top, bottom, left, right = tr.rect(f)
        hidden = visible[f, tr.track_id] < options.min_visible_px
        if missed[tr.track_id - 1] or hidden:
          # A missed object's visible pixels become background: a segmenter
          # labels what it sees, it does not reveal the object behind.
          value = ROAD * DIVISOR
        else:
          value = tr.semantic * DIVISOR + local_ids[tr.track_id - 1]
          detected[tr.track_id] = tr
        paint(frame, top + j[0], bottom + j[1], left + j[2], right + j[3], value)
      _paint_occluders(frame, scenario)
      panoptic[k] = frame
    embeddings = {}
    for tr in detected.values():
      visible_fraction = np.max(visible[list(frames), tr.track_id]
                                / np.maximum(full_area[list(frames), tr.track_id], 1))
      sigma = options.appearance_noise * (2.0 - min(visible_fraction, 1.0))
      noise = rng.normal(size=tr.identity.shape) / np.sqrt(tr.identity.size)
      embeddings[tr.semantic * DIVISOR + int(local_ids[tr.track_id - 1])] = (
          tr.identity + sigma * noise)
    clips.append((panoptic, embeddings))
  return clips


@dataclasses.dataclass(frozen=True)
class Labels:
  """The label encoding of a data set's ground truth and predictions."""
  num_classes: int = NUM_CLASSES
  thing_class_ids: Tuple[int, ...] = (PERSON, CAR)
  ignore_label: int = 255
  label_divisor: int = DIVISOR


SYNTHETIC_LABELS = Labels()  # The scenarios' own encoding.


def new_metric(labels: Labels = SYNTHETIC_LABELS) -> stq.STQuality:
  return stq.STQuality(labels.num_classes, list(labels.thing_class_ids),
                       labels.ignore_label, labels.label_divisor, 1 << 24)


# run_variant results: (id(data), arguments) -> (data, result). Tables share
# variants (Table 5's rows reappear in the occlusion table, Table 7's default
# cell, Tables 8-9's default values); `data` is kept so its id stays unique.
_VARIANT_RESULTS = {}


def run_variant(data, clip_length, use_stitching, memory_type, *, tau=_DEFAULTS['tau'],
                alpha=_DEFAULTS['alpha'], temperature=_DEFAULTS['temperature'],
                lam=_DEFAULTS['lam'], labels=SYNTHETIC_LABELS):
  """AQ pooled over the sequences of every family in `data`, and per-video statistics.

  Results are memoised per `data` object and arguments: do not change `data`
  after a call.

  Args:
    data: {family: [video]}; a video has `ground_truth` (int [F, H, W]) and
      `clips` ({clip length: [(panoptic [T, H, W], {id: embedding})]}, clips
      covering the frames in order, near-online ones sharing one frame).

  Returns:
    (AQ, {family: AQ}, list of statistics dicts,
     {family: [{gt panoptic id: the track's AQ term}, one dict per video]}).
  """
  key = (id(data), clip_length, use_stitching, memory_type, tau, alpha,
         temperature, lam, labels)
  if key in _VARIANT_RESULTS:
    return _VARIANT_RESULTS[key][1]
  assoc = video_associater.VideoAssociater(
      label_divisor=labels.label_divisor,
      thing_class_ids=list(labels.thing_class_ids), use_stitching=use_stitching,
      memory_type=memory_type, tau=tau, alpha=alpha, temperature=temperature,
      lam=lam)
  pooled, per_family, stats, per_track = new_metric(labels), {}, [], {}
  for family in data:
    metric = new_metric(labels)
    for v, video in enumerate(data[family]):
      assoc.reset()
      frame = 0
      for panoptic, embeddings in video.clips[clip_length]:
        for out in assoc.update(panoptic, embeddings):
          for m in (metric, pooled):
            m.update_state(video.ground_truth[frame], out, f'{family}/{v}')
          frame += 1
      stats.append(assoc.statistics())
    per_family[family] = metric.result()['AQ']
    tracks = metric.association_per_track()
    per_track[family] = [tracks[f'{family}/{v}'] for v in range(len(data[family]))]
  result = pooled.result()['AQ'], per_family, stats, per_track
  _VARIANT_RESULTS[key] = (data, result)
  return result


@dataclasses.dataclass
class Video:
  scenario: Scenario
  ground_truth: np.ndarray  # int32 [F, H, W]
  clips: Dict[int, list]  # clip length -> predict_clips output


def make_data(seed: int, options: Options, videos_per_family: int,
              families=FAMILIES):
  """{family: [Video]} for one seed, for `families` (a subset of FAMILIES).

  Every family is generated, in FAMILIES order from one random stream (so the
  four lane families are the videos of the tables recorded before `ego` was
  added), and the subset is returned: a family's videos do not depend on
  `families`.
  """
  unknown = sorted(set(families) - set(FAMILIES))
  if unknown:
    raise ValueError(f'unknown families {unknown}; valid: {FAMILIES}.')
  rng = np.random.default_rng(seed)
  prototypes = {}
  for semantic in (PERSON, CAR):
    p = rng.normal(size=options.embedding_dim)
    prototypes[semantic] = p / np.linalg.norm(p)
  data = {}
  for family in FAMILIES:
    data[family] = []
    for _ in range(videos_per_family):
      scenario = make_scenario(family, options, prototypes, rng)
      gt = render_ground_truth(scenario)
      clips = {t: predict_clips(scenario, gt, t, options, rng) for t in (1, 2)}
      data[family].append(Video(scenario, gt, clips))
  return {family: data[family] for family in FAMILIES if family in families}


def true_runs(values) -> List[int]:
  """Lengths of the runs of True in a bool sequence."""
  runs, length = [], 0
  for v in list(values) + [False]:
    if v:
      length += 1
    elif length:
      runs.append(length)
      length = 0
  return runs


def track_visibility(ground_truth: np.ndarray, labels: Labels = SYNTHETIC_LABELS):
  """Visible pixels per frame of every ground-truth thing track.

  Args:
    ground_truth: int [F, H, W] panoptic video.
    labels: its encoding.

  Returns:
    (keys int64 [K] panoptic ids of the tracks (instance > 0),
     visible int64 [F, K] pixel counts).
  """
  gt = np.asarray(ground_truth, np.int64).reshape(len(ground_truth), -1)
  is_thing = (np.isin(gt // labels.label_divisor, labels.thing_class_ids)
              & (gt % labels.label_divisor > 0))
  keys, index = np.unique(gt[is_thing], return_inverse=True)
  frames = np.nonzero(is_thing)[0]
  visible = np.bincount(frames * len(keys) + index.reshape(-1),
                        minlength=len(gt) * len(keys)).reshape(len(gt), len(keys))
  return keys, visible


def longest_gaps(ground_truth: np.ndarray, min_visible_px: int,
                 labels: Labels = SYNTHETIC_LABELS) -> Dict[int, int]:
  """{gt panoptic id: longest run of undetectable frames between detections}.

  Detectable = at least `min_visible_px` visible pixels. Every track with pixels
  in the video (the ones AQ counts); 0 = never hidden between its first and last
  detectable frame; -1 = never detectable.
  """
  keys, visible = track_visibility(ground_truth, labels)
  detectable = visible >= min_visible_px
  gaps = {}
  for k, key in enumerate(keys.tolist()):
    seen = np.flatnonzero(detectable[:, k])
    gaps[key] = max(true_runs(~detectable[seen[0]:seen[-1] + 1, k]),
                    default=0) if len(seen) else -1
  return gaps
