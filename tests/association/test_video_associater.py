"""Tracker scenarios for VideoAssociater (persist, occlude, expire, cross, stuff)."""

import numpy as np
import pytest

from deeplab2_vkmax.association import video_associater

DIVISOR = 1000
CAR, PERSON, ROAD, SKY = 13, 11, 0, 10
THINGS = (PERSON, CAR)


def _render(objects, height, width, frame_index):
  """Frame [H, W] of GT ids: stuff background, objects painted in list order.

  `objects`: list of (gt_id, class, (y0, y1, x0, x1), embedding).
  """
  frame = np.full((height, width), ROAD * DIVISOR, dtype=np.int64)
  frame[0, 0] = SKY * DIVISOR + 0  # a stuff pixel that must pass through.
  del frame_index
  return frame, objects


def run_video(scene, clip_length, height=40, width=100, seed=0, **kwargs):
  """Runs the associater over `scene` (list over frames of object lists).

  Every clip gets its own random clip-local instance ids, so the associater can
  only link objects across clips through stitching and memory.

  Returns:
    (outputs, associater): outputs = list of emitted int32 [H, W] frames;
    objects of frame t keep their GT ids in `scene[t]`.
  """
  rng = np.random.default_rng(seed)
  assoc = video_associater.VideoAssociater(
      label_divisor=DIVISOR, thing_class_ids=THINGS,
      **kwargs)
  num_frames = len(scene)
  stride = max(clip_length - 1, 1)
  outputs = []
  start = 0
  while start + clip_length <= num_frames:
    frames = range(start, start + clip_length)
    gt_ids = sorted({o[0] for t in frames for o in scene[t]})
    local = dict(zip(gt_ids, rng.permutation(len(gt_ids)) + 1))
    clip = np.full((clip_length, height, width), ROAD * DIVISOR, dtype=np.int32)
    embeddings = {}
    for k, t in enumerate(frames):
      clip[k, 0, 0] = SKY * DIVISOR
      for gt_id, cls, (y0, y1, x0, x1), emb in scene[t]:
        panoptic_id = cls * DIVISOR + local[gt_id]
        clip[k, y0:y1, x0:x1] = panoptic_id
        embeddings[panoptic_id] = np.asarray(emb, dtype=np.float32)
    outputs.extend(assoc.update(clip, embeddings))
    start += stride
  return outputs, assoc


def track_of(output, box):
  """Output panoptic id at the centre pixel of `box`."""
  y0, y1, x0, x1 = box
  return int(output[(y0 + y1) // 2, (x0 + x1) // 2])


def _unit(i, dim=8):
  v = np.zeros(dim)
  v[i] = 1.0
  return v


@pytest.mark.parametrize('clip_length', [1, 2, 3])
def test_object_persists(clip_length):
  scene = [[(1, CAR, (10, 20, 5 + 2 * t, 20 + 2 * t), _unit(0)),
            (2, PERSON, (25, 35, 60, 70), _unit(1))] for t in range(13)]
  outputs, assoc = run_video(scene, clip_length)
  assert len(outputs) == 13
  cars = {track_of(o, scene[t][0][2]) for t, o in enumerate(outputs)}
  people = {track_of(o, scene[t][1][2]) for t, o in enumerate(outputs)}
  assert len(cars) == 1 and len(people) == 1
  assert cars.pop() // DIVISOR == CAR and people.pop() // DIVISOR == PERSON
  assert assoc.statistics()['ids_created'] == 2


def _occlusion_scene(gap_frames, num_visible=5):
  """A parked car visible, hidden for `gap_frames`, visible again."""
  box = (10, 20, 30, 45)
  scene = []
  for t in range(num_visible + gap_frames + num_visible):
    hidden = num_visible <= t < num_visible + gap_frames
    scene.append([] if hidden else [(1, CAR, box, _unit(0))])
  return scene, box


@pytest.mark.parametrize('clip_length', [1, 2])
@pytest.mark.parametrize('memory_type', ['hila', 'naive'])
def test_return_within_tau_keeps_id(clip_length, memory_type):
  tau = 10
  # Hidden for tau - 1 steps: last seen at step s, back at step s + tau.
  scene, box = _occlusion_scene(gap_frames=tau - 1)
  outputs, assoc = run_video(scene, clip_length, tau=tau, memory_type=memory_type)
  ids = {track_of(o, box) for o, objs in zip(outputs, scene) if objs}
  assert len(ids) == 1
  # Online, every frame-to-frame link goes through memory; near-online, only the
  # return after the gap (the rest is stitched).
  expected = 9 if clip_length == 1 else 1
  assert assoc.statistics()['reidentifications'] == expected


@pytest.mark.parametrize('clip_length', [1, 2])
def test_return_exactly_at_horizon_and_after(clip_length):
  tau = 4
  scene, box = _occlusion_scene(gap_frames=tau)  # back at step s + tau + 1.
  outputs, _ = run_video(scene, clip_length, tau=tau)
  ids = [track_of(o, box) for o, objs in zip(outputs, scene) if objs]
  assert len(set(ids[:5])) == 1 and len(set(ids[5:])) == 1
  assert ids[0] != ids[-1]
  assert ids[-1] % DIVISOR > ids[0] % DIVISOR  # fresh, larger id.


def _clips_with_missed_tube(missed_clips, clip_length=2, num_clips=10):
  """A car moving right, detected in every clip except `missed_clips`.

  Returns:
    list of (panoptic [T, 20, 60], embeddings) and the car box per video frame.
  """
  stride = max(clip_length - 1, 1)
  box_at = lambda t: (5, 12, 2 + 2 * t, 12 + 2 * t)
  clips = []
  for c in range(num_clips):
    clip = np.full((clip_length, 20, 60), ROAD * DIVISOR, dtype=np.int32)
    if c not in missed_clips:
      for k in range(clip_length):
        y0, y1, x0, x1 = box_at(c * stride + k)
        clip[k, y0:y1, x0:x1] = CAR * DIVISOR + 3 + c % 2  # clip-local id.
    clips.append((clip, {CAR * DIVISOR + 3 + c % 2: _unit(0)}))
  return clips, box_at


@pytest.mark.parametrize('memory_type', ['hila', 'naive', 'location'])
def test_near_online_tau_one_bridges_one_missed_clip(memory_type):
  # Clip 4 (frames 4-5) misses the car: frame 4 was emitted by clip 3 with the
  # car, frame 5 without it; clip 5 detects it again from its shared frame 5,
  # one frame after it was last seen, so tau = 1 keeps the id.
  clips, box_at = _clips_with_missed_tube({4})
  assoc = video_associater.VideoAssociater(
      label_divisor=DIVISOR, thing_class_ids=THINGS, tau=1,
      memory_type=memory_type)
  outputs = [o for clip, emb in clips for o in assoc.update(clip, emb)]
  ids = [track_of(o, box_at(t)) for t, o in enumerate(outputs)]
  assert ids[5] == ROAD * DIVISOR  # the missed frame.
  assert len(set(ids[:5] + ids[6:])) == 1
  assert assoc.statistics()['reidentifications'] == 1


@pytest.mark.parametrize('clip_length,missed', [(2, {4, 5}), (1, {4})])
def test_tau_one_does_not_bridge_a_two_frame_gap(clip_length, missed):
  # Near-online, two missed clips: last seen on frame 4, back on shared frame 6.
  # Online, one missed frame: last seen on frame 3, back on frame 5.
  clips, box_at = _clips_with_missed_tube(missed, clip_length)
  assoc = video_associater.VideoAssociater(
      label_divisor=DIVISOR, thing_class_ids=THINGS,
      tau=1)
  outputs = [o for clip, emb in clips for o in assoc.update(clip, emb)]
  ids = [track_of(o, box_at(t)) for t, o in enumerate(outputs)]
  gap = max(missed) + 1 if clip_length == 2 else max(missed)
  assert len(set(ids[:min(missed)])) == 1
  assert len(set(ids[gap + 1:])) == 1
  assert ids[0] != ids[-1]


def test_query_box_taken_on_the_shared_frame():
  # Clip 4 misses a parked car; clip 5 sees it on its shared frame 5 where it
  # was, then (a bad mask) far away on frame 6. Eq. (5) must use the frame-5
  # box, the observation next to the memory's: f = 1 there, ~0.3 on frame 6.
  box, far = (5, 12, 2, 12), (5, 12, 48, 58)
  assoc = video_associater.VideoAssociater(
      label_divisor=DIVISOR, thing_class_ids=THINGS, tau=10)
  outputs = []
  for c in range(6):
    clip = np.full((2, 20, 60), ROAD * DIVISOR, dtype=np.int32)
    if c != 4:
      for k, (y0, y1, x0, x1) in enumerate((box, far if c == 5 else box)):
        clip[k, y0:y1, x0:x1] = CAR * DIVISOR + 1
    outputs.extend(assoc.update(clip, {CAR * DIVISOR + 1: _unit(0)}))
  assert track_of(outputs[6], far) == track_of(outputs[4], box)
  assert assoc.statistics()['ids_created'] == 1


def test_location_memory_needs_no_embeddings():
  clips, box_at = _clips_with_missed_tube({4})
  assoc = video_associater.VideoAssociater(
      label_divisor=DIVISOR, thing_class_ids=THINGS, tau=1,
      memory_type='location', use_stitching=False)
  outputs = [o for clip, _ in clips for o in assoc.update(clip)]
  ids = {track_of(o, box_at(t)) for t, o in enumerate(outputs) if t != 5}
  assert len(ids) == 1


@pytest.mark.parametrize('clip_length', [1, 2])
def test_crossing_look_alikes_keep_ids(clip_length):
  """Identical embeddings, crossing behind an occluder: location decides."""
  same = _unit(3)
  scene = []
  for t in range(20):
    a = (10, 20, 4 + 4 * t, 14 + 4 * t)  # moving right.
    b = (12, 22, 86 - 4 * t, 96 - 4 * t)  # moving left.
    hidden = 8 <= t < 12  # both behind a pole while they pass each other.
    scene.append([] if hidden else [(1, CAR, a, same), (2, CAR, b, same)])
  outputs, _ = run_video(scene, clip_length, tau=10)
  a_ids = {track_of(o, objs[0][2]) for o, objs in zip(outputs, scene) if objs}
  b_ids = {track_of(o, objs[1][2]) for o, objs in zip(outputs, scene) if objs}
  assert len(a_ids) == 1 and len(b_ids) == 1 and a_ids != b_ids


def test_crossing_look_alikes_swap_without_location():
  """The same online scene with naive-MB (appearance only) loses the ids."""
  same = _unit(3)
  scene = []
  for t in range(20):
    a = (10, 20, 4 + 4 * t, 14 + 4 * t)
    b = (12, 22, 86 - 4 * t, 96 - 4 * t)
    scene.append([] if 8 <= t < 12 else [(1, CAR, a, same), (2, CAR, b, same)])
  outputs, _ = run_video(scene, 1, tau=10, memory_type='naive')
  a_ids = {track_of(o, objs[0][2]) for o, objs in zip(outputs, scene) if objs}
  assert len(a_ids) == 2


def test_stuff_and_crowd_untouched():
  scene = [[(1, CAR, (10, 20, 10, 20), _unit(0))] for _ in range(4)]
  outputs, _ = run_video(scene, 2)
  for o in outputs:
    assert o[0, 0] == SKY * DIVISOR
    assert o[30, 90] == ROAD * DIVISOR
  assoc = video_associater.VideoAssociater(label_divisor=DIVISOR,
                                           thing_class_ids=THINGS)
  clip = np.full((1, 8, 8), CAR * DIVISOR, dtype=np.int32)  # crowd: instance 0.
  clip[0, :4] = ROAD * DIVISOR + 7  # stuff with a non-zero instance.
  out = assoc.update(clip, {ROAD * DIVISOR + 7: np.ones(3)})[0]
  np.testing.assert_array_equal(out, clip[0])
  assert assoc.statistics()['ids_created'] == 0


def test_ids_never_reused_and_respect_horizon():
  rng = np.random.default_rng(1)
  tau = 3
  scene, alive = [], {}
  next_gt = 1
  for t in range(60):
    for gt in list(alive):
      if rng.random() < 0.2:
        del alive[gt]
    if rng.random() < 0.5 and len(alive) < 4:
      slot = min(set(range(4)) - {s for s, _ in alive.values()})
      alive[next_gt] = (slot, rng.normal(size=8))
      next_gt += 1
    scene.append([(gt, CAR, (2, 8, 2 + 10 * s, 8 + 10 * s), e)
                  for gt, (s, e) in alive.items()])
  outputs, _ = run_video(scene, 1, height=10, width=40, tau=tau)
  first_seen, last_seen = {}, {}
  for t, o in enumerate(outputs):
    for tid in np.unique(o[o // DIVISOR == CAR]) % DIVISOR:
      if tid in last_seen:
        assert t - last_seen[tid] <= tau, 'id came back after the horizon'
      first_seen.setdefault(tid, t)
      last_seen[tid] = t
  order = sorted(first_seen, key=lambda k: (first_seen[k], k))
  assert order == sorted(order)  # ids handed out increasing, never recycled.
  assert min(order) == 1


@pytest.mark.parametrize('clip_length', [1, 2])
def test_memory_bounded_on_long_stream(clip_length):
  tau = 5
  assoc = video_associater.VideoAssociater(
      label_divisor=1 << 16, thing_class_ids=THINGS,
      tau=tau)
  rng = np.random.default_rng(0)
  embeddings = rng.normal(size=(4, 8))
  clip = np.zeros((clip_length, 4, 4), dtype=np.int32)
  emitted = 0
  # Memory keeps what the next clip could still match: objects last seen within
  # tau frames of its first frame. Online that frame is new (objects of the last
  # tau frames); near-online it is the last emitted frame (tau + 1 frames).
  bound = tau if clip_length == 1 else tau + 1
  for step in range(10_000):
    # A new object every step: absent from the shared frame (no stitching), random
    # appearance (memory matches are rare), so the memory fills up to the horizon.
    clip[:] = 0
    clip[-1, :2, :2] = CAR * (1 << 16) + 1
    emitted += len(assoc.update(
        clip, {CAR * (1 << 16) + 1: embeddings[step % 4] + rng.normal(size=8) * 5}))
    assert len(assoc.memory) <= bound
  stats = assoc.statistics()
  assert emitted == 10_000 + (clip_length - 1)
  assert stats['memory_size_max'] == bound
  assert stats['ids_created'] > 5_000
  assert stats['num_frames'] == emitted


@pytest.mark.parametrize('clip_length,num_frames', [(1, 7), (2, 7), (3, 9), (4, 10)])
def test_each_frame_emitted_exactly_once(clip_length, num_frames):
  assoc = video_associater.VideoAssociater(
      label_divisor=DIVISOR, thing_class_ids=THINGS,
      memory_type='none')
  # Frame t is all stuff class t: the emitted stream must read 0, 1, 2, ...
  stride = max(clip_length - 1, 1)
  emitted = []
  for start in range(0, num_frames - clip_length + 1, stride):
    clip = (np.arange(start, start + clip_length)[:, None, None] * DIVISOR
            + np.zeros((1, 3, 3), dtype=np.int64)).astype(np.int32)
    out = assoc.update(clip)
    assert len(out) == (clip_length if start == 0 else max(clip_length - 1, 1))
    emitted.extend(int(o[0, 0]) // DIVISOR for o in out)
  assert emitted == list(range(len(emitted)))
  assert len(emitted) == num_frames


def test_reset_restarts_ids():
  scene = [[(1, CAR, (1, 5, 1, 5), _unit(0))] for _ in range(3)]
  first, assoc = run_video(scene, 2)
  assoc.reset()
  clip = np.zeros((2, 40, 100), dtype=np.int32)
  clip[:, 1:5, 1:5] = CAR * DIVISOR + 9
  again = assoc.update(clip, {CAR * DIVISOR + 9: np.ones(8)})
  assert track_of(again[0], (1, 5, 1, 5)) == track_of(first[0], (1, 5, 1, 5))


def test_errors_name_values():
  assoc = video_associater.VideoAssociater(label_divisor=4,
                                           thing_class_ids=THINGS)
  with pytest.raises(ValueError, match=r'must be \[T, H, W\].*\(4, 4\)'):
    assoc.update(np.zeros((4, 4), dtype=np.int32), {})
  clip = np.zeros((2, 4, 4), dtype=np.int32)
  clip[:, 0, :3] = CAR * 4 + np.arange(1, 4)[None]
  with pytest.raises(ValueError, match=r'missing for panoptic ids \[53, 54, 55\]'):
    assoc.update(clip, {})
  assert len(assoc.update(clip, {CAR * 4 + i: np.eye(2)[0] for i in range(1, 4)})) == 2
  # T is the first clip's; a video's clips all have it.
  assert assoc.clip_length == 2 and assoc.use_stitching
  with pytest.raises(ValueError, match=r'\[T=2, H, W\].*\(3, 4, 4\)'):
    assoc.update(np.zeros((3, 4, 4), dtype=np.int32), {})
  moved = np.roll(clip, 3, axis=1)  # no overlap with the previous clip.
  with pytest.raises(OverflowError, match='label_divisor=4'):
    assoc.update(moved, {CAR * 4 + i: np.eye(2)[1] for i in range(1, 4)})
  assoc.reset()  # A new video may have another T: online clips, no stitching.
  assert len(assoc.update(np.zeros((1, 4, 4), dtype=np.int32), {})) == 1
  assert assoc.clip_length == 1 and not assoc.use_stitching
  with pytest.raises(ValueError, match="memory_type must be one of"):
    video_associater.VideoAssociater(label_divisor=10,
                                     thing_class_ids=THINGS, memory_type='idol')


def test_statistics_match_space():
  scene, _ = _occlusion_scene(gap_frames=2)
  _, assoc = run_video(scene, 2, tau=10)
  stats = assoc.statistics()
  # The car returns once: one step with M = 1 memory object, N = 1 candidate.
  assert stats['match_space_size_max'] == 1.0
  assert stats['reidentifications'] == 1
  # 12 frames, 11 clips; shared frames 1-4 and 7-10 hold the car (frame 7 is
  # first seen as clip 6's new frame, re-identified there from memory).
  assert stats['stitched'] == 8


def test_memory_never_links_different_classes():
  box, emb = (10, 20, 10, 20), _unit(0)
  scene = [[(1, PERSON, box, emb)], [(2, CAR, box, emb)], [(2, CAR, box, emb)]]
  outputs, assoc = run_video(scene, 1)  # f = 1 > alpha, but classes differ.
  assert track_of(outputs[0], box) % DIVISOR != track_of(outputs[1], box) % DIVISOR
  assert track_of(outputs[1], box) == track_of(outputs[2], box)
  assert assoc.statistics()['ids_created'] == 2
