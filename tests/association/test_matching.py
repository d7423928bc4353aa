"""Pure matching functions (matching.py): boxes, overlaps, Eq. (5), Hungarian."""

import numpy as np
import pytest

from deeplab2_vkmax.association import matching


def test_boxes_from_masks_normalised_pixel_edges():
  index_map = np.full((10, 20), -1)
  index_map[2:5, 4:10] = 0
  index_map[:, :] = np.where(np.arange(20)[None] >= 19, 2, index_map)
  boxes, present = matching.boxes_from_masks(index_map, 3)
  np.testing.assert_allclose(boxes[0], [4 / 20, 2 / 10, 10 / 20, 5 / 10])
  np.testing.assert_allclose(boxes[2], [19 / 20, 0.0, 1.0, 1.0])
  np.testing.assert_array_equal(present, [True, False, True])
  np.testing.assert_array_equal(boxes[1], 0.0)


def test_dense_segment_index_table_and_sort_paths_agree():
  rng = np.random.default_rng(0)
  ids = np.array([13001, 11002, 13007])
  label = rng.choice(np.array([0, 13001, 11002, 13007, 5000]), size=(6, 7))
  small = matching.dense_segment_index(label, ids)
  huge = matching.dense_segment_index(label + (1 << 40) * (label > 0),
                                      ids + (1 << 40))
  np.testing.assert_array_equal(small, huge)
  expected = np.select([label == i for i in ids], [0, 1, 2], default=-1)
  np.testing.assert_array_equal(small, expected)


def test_overlap_scores_iou_and_dice_exact():
  a = np.array([[0, 0, 0, 0, -1]])  # one segment of area 4
  b = np.array([[0, 0, -1, -1, 0]])  # one segment of area 3, overlap 2
  np.testing.assert_allclose(matching.overlap_scores(a, 1, b, 1, 'iou'), [[2 / 5]])
  np.testing.assert_allclose(matching.overlap_scores(a, 1, b, 1, 'dice'), [[4 / 7]])
  with pytest.raises(ValueError, match="'giou'"):
    matching.overlap_scores(a, 1, b, 1, 'giou')


def test_mutual_best_matches():
  scores = np.array([[0.6, 0.5],    # prev A: best is X (0.6)
                     [0.3, 0.0],    # prev B: best is X, but X prefers A
                     [0.0, 0.0]])   # prev C: nothing
  rows, cols = matching.mutual_best_matches(scores)
  assert rows.tolist() == [0] and cols.tolist() == [0]  # Y left unmatched.
  rows, _ = matching.mutual_best_matches(scores, threshold=0.6)
  assert rows.size == 0


def test_hungarian_class_gate_before_and_threshold_after_assignment():
  similarity = np.array([[0.9, 0.8], [0.85, 0.1]])
  rows, cols = matching.hungarian_matches(similarity, 0.5)
  assert list(zip(rows, cols)) == [(0, 1), (1, 0)]  # global optimum 1.65.
  rows, cols = matching.hungarian_matches(similarity, 0.82)
  assert list(zip(rows, cols)) == [(1, 0)]  # 0.8 fails alpha, not re-assigned.
  # (1, 0) is another class: excluded before the assignment, which then pairs
  # (0, 0) and (1, 1); alpha drops (1, 1).
  allowed = np.array([[True, True], [False, True]])
  rows, cols = matching.hungarian_matches(similarity, 0.5, allowed)
  assert list(zip(rows, cols)) == [(0, 0)]
  rows, cols = matching.hungarian_matches(similarity, 0.0, np.zeros((2, 2), bool))
  assert rows.size == 0


def test_hila_similarity_eq5():
  qb = np.array([[0.1, 0.1, 0.3, 0.4]])
  mb = np.array([[0.2, 0.1, 0.3, 0.2], [0.1, 0.1, 0.3, 0.4]])
  qe = np.array([[1.0, 0.0]])
  me = np.array([[1.0, 1.0], [0.0, 2.0]])
  d2 = 0.1 ** 2 + 0.2 ** 2
  got = matching.hila_similarity(qb, qe, mb, me, temperature=0.5)
  np.testing.assert_allclose(got, [[np.exp(-d2 / 0.5) / np.sqrt(2), 0.0]], atol=1e-12)
  got = matching.hila_similarity(qb, qe, mb, me, temperature=0.5, distance='l2')
  np.testing.assert_allclose(got[0, 0], np.exp(-np.sqrt(d2) / 0.5) / np.sqrt(2))


def test_location_similarity_is_the_box_factor_of_eq5():
  qb = np.array([[0.1, 0.1, 0.3, 0.4], [0.0, 0.0, 1.0, 1.0]])
  mb = np.array([[0.2, 0.1, 0.3, 0.2], [0.1, 0.1, 0.3, 0.4]])
  d2 = 0.1 ** 2 + 0.2 ** 2
  got = matching.location_similarity(qb, mb, temperature=2.0)
  np.testing.assert_allclose(got[0], [np.exp(-d2 / 2.0), 1.0], atol=1e-12)
  far = 0.1 ** 2 + 0.1 ** 2 + 0.7 ** 2 + 0.6 ** 2  # box 2 vs memory box 1.
  np.testing.assert_allclose(got[1, 1], np.exp(-far / 2.0))
  with pytest.raises(ValueError, match='temperature must be > 0; received 0'):
    matching.location_similarity(qb, mb, temperature=0)
  with pytest.raises(ValueError, match="received 'l1'"):
    matching.location_similarity(qb, mb, distance='l1')


@pytest.mark.parametrize('thing_class_ids', [[11, 13], list(range(2, 40, 2))])
def test_thing_pixels_matches_a_dense_reference(thing_class_ids):
  # Two runs of thing classes (range comparisons) and 19 runs (class lookup).
  rng = np.random.default_rng(1)
  values = np.array([0, 5000, 11000, 11003, 11999, 12004, 13001, 13002, 38007,
                     10000, 39001])
  panoptic = rng.choice(values, size=(2, 9, 11)).astype(np.int32)
  ids, positions, segment = matching.thing_pixels(panoptic, 1000, thing_class_ids)
  flat = panoptic.reshape(-1)
  is_thing = np.isin(flat // 1000, thing_class_ids) & (flat % 1000 > 0)
  np.testing.assert_array_equal(ids, np.unique(flat[is_thing]))
  np.testing.assert_array_equal(positions, np.flatnonzero(is_thing))
  np.testing.assert_array_equal(ids[segment], flat[positions])
  # Huge ids take the sort path and give the same answer.
  spread = flat.astype(np.int64) << 24  # id span far above the table limit
  big_ids, big_positions, big_segment = matching.thing_pixels(spread, 1 << 50, [0])
  np.testing.assert_array_equal(big_ids, np.unique(spread[spread > 0]))
  np.testing.assert_array_equal(big_positions, np.flatnonzero(spread > 0))
  np.testing.assert_array_equal(big_ids[big_segment], spread[big_positions])


def test_thing_pixels_empty_and_crowd_only():
  crowd = np.full((3, 4), 13000, dtype=np.int32)
  for panoptic in (crowd, np.zeros((0, 4), np.int32), crowd * 0 + 5000):
    ids, positions, segment = matching.thing_pixels(panoptic, 1000, [11, 13])
    assert ids.size == positions.size == segment.size == 0


def test_boxes_from_pixels_per_frame_equals_boxes_from_masks():
  rng = np.random.default_rng(2)
  index_maps = rng.integers(-1, 4, size=(3, 7, 13))
  index_maps[1] = -1  # an empty frame
  flat = index_maps.reshape(-1)
  positions = np.flatnonzero(flat >= 0)
  boxes, present = matching.boxes_from_pixels(positions, flat[positions], 4, 7, 13,
                                              num_frames=3)
  for f in range(3):
    expected_boxes, expected_present = matching.boxes_from_masks(index_maps[f], 4)
    np.testing.assert_array_equal(boxes[f], expected_boxes)
    np.testing.assert_array_equal(present[f], expected_present)
  assert not present[1].any()
