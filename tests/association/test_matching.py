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
