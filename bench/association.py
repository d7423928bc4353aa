"""Association ablations on synthetic tracking scenarios (paper Tables 5-9).

Ground truth and predictions are generated in numpy (no TensorFlow). Every
scenario is a street-like video (sky, road, optional static occluders such as
poles or parked trucks, all stuff) with moving thing tracks (cars, people) drawn
in depth order (lanes overlap in the image, so nearer tracks hide farther ones).
Five families; the first four are lane scenes, each a stress test of one
mechanism, the fifth is KITTI-STEP's geometry:

- `traffic`: per lane, a stream of look-alike tracks entering through one image
  edge and leaving through the other (ego-motion past parked cars): many tracks
  end and many new ones start.
- `crossing`: pairs of same-class (look-alike) tracks in one lane moving towards
  each other; the far one is partly hidden by the near one while they pass (its
  top rows stay visible, so it is rarely fully hidden: see `--tables stats`).
- `occlusion`: static occluders 12-90 px wide that tracks pass behind: hidden for
  0 to ~20 frames depending on width and speed.
- `reentry`: tracks leave through an image edge, turn around out of view and come
  back 3-15 frames later.
- `ego`: a camera driving forward down a street (KITTI-STEP's set-up, with its
  camera calibration and frame rate): parked cars and pedestrians grow out of the
  vanishing point and leave through the side edges or the bottom, with oncoming
  cars and a lead car; nearer objects hide farther ones (see `_ego_motion_tracks`).
  The lane families were designed first; `ego` was added (with its parameters
  fixed before any association result on it) because KITTI-STEP's objects do not
  enter and leave through the same edges, which decides how often a departed
  object is a plausible match for a new one.

Predictions imitate clip-kMaX output in the associater's input contract: clips of
T frames (T = 1 online; T = 2 near-online, consecutive clips share one frame),
predicted independently per clip, clip-local ids randomly relabelled per clip and
constant across the clip's frames. Noise: every box edge jitters by up to
`--jitter_px` pixels per frame and clip; a tube is missed in a whole clip with
probability `--miss_rate`; segments with fewer than `--min_visible_px` visible
pixels are not detected. A missed object's visible pixels are predicted as road
(background), not as the object it hides. Appearance: each class has a
prototype; a track's identity is `normalise(prototype + spread * u)`
(same-class tracks look alike: cosine ~0.9 between them); each clip observes
`identity + noise` with the noise growing as the track gets occluded.

AQ is the official one (deeplab2_vkmax.evaluation.stq.STQuality), pooled over all
sequences of a seed, then mean +- std over seeds.

Tables (`--tables`, comma-separated; default all): `stats` (what the scenarios
contain), `table5` (association features, near-online and online), `occlusion`
(the gain from location per track, by how long the track was hidden), `table6`
(match space), `table7` (tau x alpha grid), `table8` (temperature T), `table9`
(lam).

Run: `python bench/association.py` (about 6 minutes on the shared 2-core
machine; `--seeds 1 --videos_per_family 1` for a quick look, `--tables table7`
for one table, `--families ego` for one family).
"""

import argparse
import dataclasses
import time
from typing import Dict, List, Tuple, Union

import numpy as np

from deeplab2_vkmax.association import video_associater
from deeplab2_vkmax.evaluation import stq

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


# Scenario generation ---------------------------------------------------------


def _identity(prototype: np.ndarray, spread: float, rng) -> np.ndarray:
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
                        x_at, _identity(prototypes[semantic],
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
                        _identity(prototypes[semantic], options.identity_spread, rng)))


def _background(scenario: Scenario) -> np.ndarray:
  frame = np.full((scenario.height, scenario.width), ROAD * DIVISOR, dtype=np.int32)
  frame[: scenario.height // 3] = SKY * DIVISOR
  return frame


def _paint_occluders(frame: np.ndarray, scenario: Scenario) -> None:
  for top, bottom, left, right in scenario.occluders:
    frame[top:bottom, left:right] = OCCLUDER * DIVISOR


def _paint(frame: np.ndarray, top, bottom, left, right, value) -> None:
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
      _paint(frame, *tr.rect(f), tr.semantic * DIVISOR + tr.track_id)
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
        _paint(frame, top + j[0], bottom + j[1], left + j[2], right + j[3], value)
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


# Evaluation ------------------------------------------------------------------

# Paper Table 5 rows: name -> (clip_length, use_stitching, memory_type).
# memory_type: 'naive' = appearance, 'location' = location, 'hila' = both.
TABLE5_NEAR_ONLINE = {
    'stitching only': (2, True, 'none'),
    'appearance only (naive-MB)': (2, False, 'naive'),
    'location only': (2, False, 'location'),
    'appearance + location (HiLA-MB w/o stitching)': (2, False, 'hila'),
    'stitching + appearance': (2, True, 'naive'),
    'stitching + location': (2, True, 'location'),
    'stitching + appearance + location (full HiLA-MB)': (2, True, 'hila'),
}
TABLE5_ONLINE = {
    'none': (1, False, 'none'),
    'appearance (naive-MB)': (1, False, 'naive'),
    'location': (1, False, 'location'),
    'appearance + location (HiLA-MB)': (1, False, 'hila'),
}
FULL_HILA = (2, True, 'hila')
TAUS = (1, 3, 10, 20)
ALPHAS = (0.6, 0.7, 0.8)
TEMPERATURES = (0.5, 1.0, 1.5)
LAMS = (0.0, 0.5, 0.7, 0.8, 0.9, 1.0)
TABLES = ('stats', 'table5', 'occlusion', 'table6', 'table7', 'table8', 'table9')


@dataclasses.dataclass(frozen=True)
class Labels:
  """The label encoding of a data set's ground truth and predictions."""
  num_classes: int = NUM_CLASSES
  thing_class_ids: Tuple[int, ...] = (PERSON, CAR)
  ignore_label: int = 255
  label_divisor: int = DIVISOR


SYNTHETIC_LABELS = Labels()  # This script's scenarios.


def new_metric(labels: Labels = SYNTHETIC_LABELS) -> stq.STQuality:
  return stq.STQuality(labels.num_classes, list(labels.thing_class_ids),
                       labels.ignore_label, labels.label_divisor, 1 << 24)


# run_variant results: (id(data), arguments) -> (data, result). Tables share
# variants (Table 5's rows reappear in the occlusion table, Table 7's default
# cell, Tables 8-9's default values); `data` is kept so its id stays unique.
_VARIANT_RESULTS = {}


def run_variant(data, clip_length, use_stitching, memory_type, *, tau=10,
                alpha=0.7, temperature=1.0, lam=0.8, labels=SYNTHETIC_LABELS):
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


def _mean_std(values) -> str:
  values = np.asarray(values, dtype=np.float64) * 100
  return f'{values.mean():.1f} +- {values.std():.1f}'


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--seeds', type=int, default=3)
  parser.add_argument('--videos_per_family', type=int, default=2)
  parser.add_argument('--families', default=','.join(FAMILIES),
                      help=f'comma-separated subset of {",".join(FAMILIES)}')
  parser.add_argument('--tables', default=','.join(TABLES),
                      help=f'comma-separated subset of {",".join(TABLES)} '
                           '(stats: scenario statistics; tableN: paper Table N)')
  for field in dataclasses.fields(Options):
    parser.add_argument(f'--{field.name}', type=field.type, default=field.default)
  args = parser.parse_args()
  tables = args.tables.split(',')
  unknown = sorted(set(tables) - set(TABLES))
  if unknown:
    parser.error(f'--tables: unknown {unknown}; valid: {",".join(TABLES)}.')
  families = args.families.split(',')
  unknown = sorted(set(families) - set(FAMILIES))
  if unknown:
    parser.error(f'--families: unknown {unknown}; valid: {",".join(FAMILIES)}.')
  options = Options(**{f.name: getattr(args, f.name)
                       for f in dataclasses.fields(Options)})
  tic = time.time()
  seeds = list(range(args.seeds))
  datasets = [make_data(seed, options, args.videos_per_family, families)
              for seed in seeds]

  print(f'\nScenarios: {len(families)} families ({",".join(families)}) x '
        f'{args.videos_per_family} videos x {options.num_frames} frames '
        f'({options.height}x{options.width}), seeds {seeds}; {options}\n')
  if 'stats' in tables:
    _scenario_statistics(datasets, options)
  if 'table5' in tables:
    print_table5(datasets)
  if 'table6' in tables:
    _table6(datasets)
  if 'occlusion' in tables:
    print_occlusion_table(datasets, options.min_visible_px)
  if 'table7' in tables:
    print_table7(datasets, seeds, families)
  if 'table8' in tables:
    _sweep(datasets, 'temperature', TEMPERATURES, 'Table 8: temperature T')
  if 'table9' in tables:
    _sweep(datasets, 'lam', LAMS, 'Table 9: moving-average weight lam')
  print(f'\n({time.time() - tic:.0f} s)')


def _runs(values) -> List[int]:
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
    gaps[key] = max(_runs(~detectable[seen[0]:seen[-1] + 1, k]),
                    default=0) if len(seen) else -1
  return gaps


def _scenario_statistics(datasets, options):
  """What the scenarios contain, per family, over all seeds and videos."""
  families = list(datasets[0])
  print('### Scenario statistics (all seeds and videos)\n')
  print('| family | tracks / video | visible things / frame (mean, max) | '
        'gaps / track | gap frames (mean, max) | gaps >= 5 frames | '
        'track lifetime, frames (mean) |')
  print('| --- | --- | --- | --- | --- | --- | --- |')
  for family in families:
    tracks, per_frame, gaps, lifetimes = [], [], [], []
    for data in datasets:
      for video in data[family]:
        detectable = (track_visibility(video.ground_truth)[1]
                      >= options.min_visible_px)
        tracks.append(int(detectable.any(axis=0).sum()))
        per_frame.extend(detectable.sum(axis=1).tolist())
        for k in range(detectable.shape[1]):
          seen = np.nonzero(detectable[:, k])[0]
          if not len(seen):
            continue
          lifetimes.append(seen[-1] - seen[0] + 1)
          # Gaps: runs of undetectable frames between detectable ones
          # (occluded, or out of view and back).
          gaps.extend(_runs(~detectable[seen[0]:seen[-1] + 1, k]))
    gaps = np.asarray(gaps)
    print(f'| {family} | {np.mean(tracks):.1f} | {np.mean(per_frame):.1f}, '
          f'{np.max(per_frame)} | {len(gaps) / max(sum(tracks), 1):.2f} | '
          f'{gaps.mean() if len(gaps) else 0:.1f}, {gaps.max() if len(gaps) else 0} | '
          f'{int((gaps >= 5).sum())} of {len(gaps)} | {np.mean(lifetimes):.0f} |')
  # Appearance: the generator's distributions, sampled.
  rng = np.random.default_rng(0)
  p = rng.normal(size=options.embedding_dim)
  p /= np.linalg.norm(p)
  identities = np.stack([_identity(p, options.identity_spread, rng)
                         for _ in range(200)])

  def observe(identity, visible_fraction):
    sigma = options.appearance_noise * (2.0 - visible_fraction)
    return identity + sigma * rng.normal(size=identity.shape) / np.sqrt(identity.size)

  def cos(a, b):
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))

  between = [cos(identities[i], identities[i + 1]) for i in range(0, 200, 2)]
  observed_between = [cos(observe(identities[i], 1.0), observe(identities[i + 1], 1.0))
                      for i in range(0, 200, 2)]
  print(f'\nAppearance: cos between two same-class tracks (identities) '
        f'{np.mean(between):.3f}; cos between two observations of one track: '
        + ', '.join(
            f'{np.mean([cos(observe(x, v), observe(x, v)) for x in identities]):.3f}'
            f' (both {v:.0%} visible)' for v in (1.0, 0.5, 0.0))
        + '; cos between observations of two same-class tracks (fully visible) '
        f'{np.mean(observed_between):.3f}.'
        f' Missed tubes: {options.miss_rate:.0%} per tube per clip, plus segments '
        f'under {options.min_visible_px} visible px.\n')


def print_table5(datasets, labels=SYNTHETIC_LABELS):
  """Paper Table 5: AQ per association feature set (tau = 10, alpha = 0.7)."""
  families = list(datasets[0])
  rows = {}
  for mode, variants in (('near-online', TABLE5_NEAR_ONLINE),
                         ('online', TABLE5_ONLINE)):
    print(f'### Table 5 ({"a" if mode == "near-online" else "b"}), {mode}: AQ '
          f'(tau = 10, alpha = 0.7; mean +- std over seeds, %)\n')
    print('| features | AQ all | ' + ' | '.join(families) + ' |')
    print('| --- | --- |' + ' --- |' * len(families))
    for name, (clip_length, stitching, memory) in variants.items():
      results = [run_variant(d, clip_length, stitching, memory, labels=labels)
                 for d in datasets]
      rows[(mode, memory, stitching)] = results
      cells = [_mean_std([r[0] for r in results])]
      cells += [_mean_std([r[1][f] for r in results]) for f in families]
      print(f'| {name} | ' + ' | '.join(cells) + ' |')
    print()

  print('### Gain from adding location to appearance (HiLA-MB minus naive-MB; '
        'AQ points, mean +- std over seeds)\n')
  print('| mode | all | ' + ' | '.join(families) + ' |')
  print('| --- | --- |' + ' --- |' * len(families))
  for label, mode, stitching in (('online', 'online', False),
                                 ('near-online, no stitching', 'near-online', False),
                                 ('near-online, with stitching', 'near-online', True)):
    hila = rows[(mode, 'hila', stitching)]
    naive = rows[(mode, 'naive', stitching)]
    cells = [_mean_std([h[0] - n[0] for h, n in zip(hila, naive)])]
    cells += [_mean_std([h[1][f] - n[1][f] for h, n in zip(hila, naive)])
              for f in families]
    print(f'| {label} | ' + ' | '.join(cells) + ' |')


GAP_BUCKETS = (('never detectable', -1, -1), ('not hidden', 0, 0),
               ('hidden 1-4 frames', 1, 4), ('hidden >= 5 frames', 5, 1 << 30))


def print_occlusion_table(datasets, min_visible_px, labels=SYNTHETIC_LABELS):
  """Location gain per track, by how long the track was hidden (paper Sec. 3.2).

  The paper argues location matters most when appearance is unreliable, after a
  long occlusion. Per-track AQ terms (the official AQ is their mean) are
  bucketed by the track's longest undetectable run between detections; mean
  per-track AQ per bucket over the tracks of all seeds, and the gain per seed,
  pooled over all families and for `ego` (KITTI-STEP's geometry) alone.
  """
  gaps = [{family: [longest_gaps(video.ground_truth, min_visible_px, labels)
                     for video in videos]
           for family, videos in data.items()} for data in datasets]
  scopes = [('all', list(datasets[0]))]
  if 'ego' in datasets[0] and len(datasets[0]) > 1:
    scopes.append(('ego', ['ego']))
  print('\n### Location gain by occlusion length (tau = 10, alpha = 0.7; mean '
        'per-track AQ % over the tracks of all seeds; gain per seed where the '
        'seed has such tracks)\n')
  print('| families | mode | track hidden | tracks | appearance only | '
        'appearance + location | gain from location | gain per seed |')
  print('| --- | --- | --- | --- | --- | --- | --- | --- |')
  modes = (('online', 1, False), ('near-online, no stitching', 2, False),
           ('near-online, with stitching', 2, True))
  per_track = {(label, memory): [run_variant(d, clip_length, stitching, memory,
                                             labels=labels)[3] for d in datasets]
               for label, clip_length, stitching in modes
               for memory in ('naive', 'hila')}
  for scope, families in scopes:
    for label, _, _ in modes:
      for bucket, low, high in GAP_BUCKETS:
        values = {'naive': [], 'hila': []}  # memory -> per seed [tracks]
        for seed, seed_gaps in enumerate(gaps):
          for memory, per_seed in values.items():
            per_seed.append(np.array(
                [aq for family in families
                 for v, video_gaps in enumerate(seed_gaps[family])
                 for key, aq in per_track[(label, memory)][seed][family][v].items()
                 if low <= video_gaps[key] <= high]) * 100)
        naive, hila = (np.concatenate(values[m]) for m in ('naive', 'hila'))
        if not len(naive):
          continue
        per_seed = ', '.join(f'{h.mean() - n.mean():.1f}' if len(n) else '-'
                             for n, h in zip(values['naive'], values['hila']))
        print(f'| {scope} | {label} | {bucket} | {len(naive)} | {naive.mean():.1f} | '
              f'{hila.mean():.1f} | {hila.mean() - naive.mean():.1f} | {per_seed} |')


def print_table7(datasets, seeds, families, labels=SYNTHETIC_LABELS):
  """Paper Table 7: tau x alpha grid, near-online."""
  grid_variants = {'naive-MB': (2, False, 'naive'), 'HiLA-MB': FULL_HILA}
  print('\n### Table 7: tau x alpha grid, near-online (AQ %, mean over seeds)\n')
  print('| memory | ' + ' | '.join(f'{tau} / {alpha}' for alpha in ALPHAS
                                    for tau in TAUS)
        + ' | grid mean | grid std | std without tau = 1 |')
  print('| --- |' + ' --- |' * (len(TAUS) * len(ALPHAS) + 3))
  grids, family_grids = {}, {}
  for name, (clip_length, stitching, memory) in grid_variants.items():
    results = [[[run_variant(d, clip_length, stitching, memory, tau=tau, alpha=alpha,
                             labels=labels)
                 for d in datasets] for tau in TAUS] for alpha in ALPHAS]
    grid = np.array([[[r[0] for r in row] for row in per_alpha]
                     for per_alpha in results]) * 100  # [A, T, S]
    grids[name] = grid
    family_grids[name] = {
        f: np.array([[[r[1][f] for r in row] for row in per_alpha]
                     for per_alpha in results]) * 100 for f in families}
    cells = [f'{grid[a, t].mean():.1f}' for a in range(len(ALPHAS))
             for t in range(len(TAUS))]
    # Std over the 12 cells per seed, then averaged over seeds (the paper's
    # table-wise std is over the cells of one run).
    per_seed_std = grid.reshape(-1, len(seeds)).std(axis=0)
    without_1 = grid[:, 1:].reshape(-1, len(seeds)).std(axis=0)
    cells += [f'{grid.mean():.1f}',
              f'{per_seed_std.mean():.2f} (per seed: '
              + ', '.join(f'{x:.2f}' for x in per_seed_std) + ')',
              f'{without_1.mean():.2f}']
    print(f'| {name} | ' + ' | '.join(cells) + ' |')
  # The paper's column-wise statistics (fixed tau, alpha varied) and the mean
  # over alphas per tau: where the grid std comes from.
  print('\nPer tau (mean over alphas and seeds / std over alphas, mean over seeds):\n')
  print('| memory | ' + ' | '.join(f'tau = {tau}' for tau in TAUS) + ' |')
  print('| --- |' + ' --- |' * len(TAUS))
  for name, grid in grids.items():
    print(f'| {name} | ' + ' | '.join(
        f'{grid[:, t].mean():.1f} / {grid[:, t].std(axis=0).mean():.2f}'
        for t in range(len(TAUS))) + ' |')
  print('\nPer family (grid mean / grid std over the 12 cells, std per seed '
        'averaged over seeds; then the mean over alphas per tau):\n')
  print('| family | memory | grid mean | grid std | '
        + ' | '.join(f'tau = {tau}' for tau in TAUS) + ' |')
  print('| --- | --- | --- | --- |' + ' --- |' * len(TAUS))
  for family in families:
    for name in grids:
      g = family_grids[name][family]
      print(f'| {family} | {name} | {g.mean():.1f} | '
            f'{g.reshape(-1, len(seeds)).std(axis=0).mean():.2f} | '
            + ' | '.join(f'{g[:, t].mean():.1f}' for t in range(len(TAUS))) + ' |')


def _table6(datasets):
  """Paper Table 6: memory match space M x N, near-online."""
  print('\n### Table 6: memory match space M x N per step, near-online\n')
  print('| memory | tau | mean | max |')
  print('| --- | --- | --- | --- |')
  for name, (clip_length, stitching, memory), taus in (
      ('naive-MB (all pairs)', (2, False, 'naive'), (1000, 1, 10)),
      ('HiLA-MB (hierarchical)', FULL_HILA, (1000, 1, 10))):
    for tau in taus:
      stats = [s for d in datasets
               for s in run_variant(d, clip_length, stitching, memory, tau=tau)[2]]
      steps = np.array([s['num_clips'] for s in stats], dtype=np.float64)
      means = np.array([s['match_space_size_mean'] for s in stats])
      mean = np.sum(means * steps) / steps.sum()
      peak = max(s['match_space_size_max'] for s in stats)
      print(f'| {name} | {tau} | {mean:.1f} | {peak:.0f} |')


def _sweep(datasets, parameter, values, title):
  """Paper Tables 8-9: full HiLA-MB near-online with one parameter varied."""
  families = list(datasets[0])
  print(f'\n### {title}, full HiLA-MB near-online (tau = 10, alpha = 0.7; '
        f'AQ %, mean +- std over seeds)\n')
  print(f'| {parameter} | AQ all | ' + ' | '.join(families) + ' |')
  print('| --- | --- |' + ' --- |' * len(families))
  for value in values:
    results = [run_variant(d, *FULL_HILA, **{parameter: value}) for d in datasets]
    cells = [_mean_std([r[0] for r in results])]
    cells += [_mean_std([r[1][f] for r in results]) for f in families]
    print(f'| {value} | ' + ' | '.join(cells) + ' |')


if __name__ == '__main__':
  main()
