"""The synthetic association scenarios the ablation tables (bench/association.py) rest on."""

import numpy as np
import pytest

from deeplab2_vkmax.evaluation import association_scenarios


@pytest.fixture(name='bench', scope='module')
def bench_fixture():
  return association_scenarios


def _prototypes(bench, rng):
  return {c: (lambda p: p / np.linalg.norm(p))(rng.normal(size=8))
          for c in (bench.PERSON, bench.CAR)}


def test_ego_box_is_a_pinhole_projection_on_the_road(bench):
  options = bench.Options(height=375, width=1242)  # KITTI's own frame size.
  depth = np.array([5.0, 10.0, 40.0])
  # A pedestrian straight ahead: taller (1.75 m) than the camera (1.65 m), so its
  # box spans the near face; feet on the road plane.
  top, height, width, left = bench.project_ego_box(options, bench.PERSON,
                                                   np.zeros(3), depth)
  np.testing.assert_allclose(top + height, 172.9 + 721.5 * 1.65 / depth)
  np.testing.assert_allclose(height, 721.5 * 1.75 / depth)
  np.testing.assert_allclose(width, 721.5 * 0.6 / depth)
  np.testing.assert_allclose(left + width / 2, 609.6)  # centred on the axis
  # A parked car on the right: farther = smaller and nearer the vanishing point.
  _, height, width, left = bench.project_ego_box(options, bench.CAR,
                                                 np.full(3, 3.5), depth)
  assert np.all(np.diff(height) < 0) and np.all(np.diff(width) < 0)
  assert np.all(np.diff(left) < 0) and left[-1] > 609.6
  # Behind the camera: off the image.
  _, _, width, left = bench.project_ego_box(options, bench.CAR, np.zeros(1),
                                            np.array([-2.0]))
  assert left[0] + width[0] < 0


def test_ground_truth_paints_nearer_tracks_over_farther_ones(bench):
  options = bench.Options()
  rng = np.random.default_rng(3)
  scenario = bench.make_scenario('ego', options, _prototypes(bench, rng), rng)
  gt = bench.render_ground_truth(scenario) % bench.DIVISOR
  checked = 0
  for f in range(0, scenario.num_frames, 7):
    order = bench.depth_order(scenario, f)
    masks = []
    for track in order:
      mask = np.zeros((options.height, options.width), np.int32)
      bench.paint(mask, *track.rect(f), 1)  # pylint: disable=protected-access
      masks.append(mask.astype(bool))
    for near_rank in range(len(order)):
      for far_rank in range(near_rank):
        both = masks[near_rank] & masks[far_rank]
        if both.any():
          # Where both are drawn, the farther one never shows.
          assert not np.any(gt[f][both] == order[far_rank].track_id)
          checked += 1
    # Bottom rows decide: nearer = larger bottom row.
    depths = [track.depth(f) for track in order]
    assert depths == sorted(depths)
  assert checked > 10


def test_ego_objects_grow_out_of_the_vanishing_point_and_leave_by_the_sides(bench):
  options = bench.Options()
  cx = 609.6 * options.width / 1242
  rng = np.random.default_rng(0)
  protos = _prototypes(bench, rng)
  grew = 0
  for _ in range(3):
    scenario = bench.make_scenario('ego', options, protos, rng)
    gt = bench.render_ground_truth(scenario) % bench.DIVISOR
    counts = np.stack([np.bincount(frame.ravel(), minlength=len(scenario.tracks) + 1)
                       for frame in gt])[:, 1:]
    for track in scenario.tracks:
      seen = np.flatnonzero(counts[:, track.track_id - 1] >= options.min_visible_px)
      if track.semantic != bench.CAR or len(seen) < 2 or seen[0] == 0:
        continue
      first, last = seen[0], seen[-1]
      centre = [track.rect(f)[2] / 2 + track.rect(f)[3] / 2 for f in (first, last)]
      # Static and oncoming cars approach: first seen small and near the centre.
      if track.area(last) > track.area(first):
        assert abs(centre[0] - cx) < abs(centre[1] - cx) + 1
        assert abs(centre[0] - cx) < options.width / 4
        grew += 1
  assert grew >= 10


def test_make_data_family_subset_matches_the_full_run(bench):
  options = bench.Options(num_frames=6, height=60, width=200)
  full = bench.make_data(1, options, 1)
  assert tuple(full) == bench.FAMILIES
  subset = bench.make_data(1, options, 1, families=('ego', 'crossing'))
  assert list(subset) == ['crossing', 'ego']
  for family in subset:
    np.testing.assert_array_equal(subset[family][0].ground_truth,
                                  full[family][0].ground_truth)
  with pytest.raises(ValueError, match='unknown families'):
    bench.make_data(1, options, 1, families=('highway',))


def test_longest_gap_counts_frames_hidden_behind_an_occluder(bench):
  # A 10x10 car moving 5 px per frame behind a pole at columns 40-60: fully
  # hidden for x in [40, 50] (frames 8-10); frames 7 and 11 show 5 columns (50 px).
  frames = 16
  track = bench.Track(1, bench.CAR, 10, 10, 10, 5.0 * np.arange(frames), np.ones(4))
  scenario = bench.Scenario(40, 100, frames, [track], [(0, 40, 40, 60)])
  video = bench.Video(scenario, bench.render_ground_truth(scenario), {})
  assert bench.longest_gaps(video.ground_truth, 40) == {bench.CAR * bench.DIVISOR + 1: 3}
  # Never hidden without the pole.
  scenario.occluders.clear()
  video = bench.Video(scenario, bench.render_ground_truth(scenario), {})
  assert bench.longest_gaps(video.ground_truth, 40) == {bench.CAR * bench.DIVISOR + 1: 0}
  # Under min_visible_px in every frame: in the ground truth, never detectable.
  assert bench.longest_gaps(video.ground_truth, 101) == {bench.CAR * bench.DIVISOR + 1: -1}


def test_run_variant_per_track_terms_average_to_the_pooled_aq(bench):
  options = bench.Options(num_frames=8, height=60, width=200)
  data = bench.make_data(0, options, 1, families=('occlusion', 'ego'))
  aq, per_family, _, per_track = bench.run_variant(data, 2, True, 'hila')
  terms = [v for videos in per_track.values() for video in videos for v in video.values()]
  assert aq == pytest.approx(np.mean(terms))
  assert per_family['ego'] == pytest.approx(np.mean(list(per_track['ego'][0].values())))
  # Memoised per data object and arguments, and only for equal arguments.
  assert bench.run_variant(data, 2, True, 'hila') is bench.run_variant(data, 2, True, 'hila')
  assert bench.run_variant(data, 2, True, 'hila', tau=1) is not bench.run_variant(
      data, 2, True, 'hila')
  # Every counted track has a gap entry.
  gaps = bench.longest_gaps(data['ego'][0].ground_truth, options.min_visible_px)
  assert set(gaps) == set(per_track['ego'][0])



def test_track_visibility_counts_thing_pixels_per_frame(bench):
  labels = bench.Labels(num_classes=3, thing_class_ids=(1,), label_divisor=1000)
  # Frame 0: track 1001 has 2 px, crowd (1000) and stuff (2003) are not tracks;
  # frame 1: track 1001 hidden, track 1002 has 3 px.
  gt = np.array([[[1001, 1001, 1000, 2003]], [[1002, 1002, 1002, 0]]])
  keys, visible = bench.track_visibility(gt, labels)
  assert keys.tolist() == [1001, 1002]
  assert visible.tolist() == [[2, 0], [0, 3]]
