"""VideoStitcher: mutual-best overlap matching on the shared frame."""

import numpy as np
import pytest

from deeplab2_vkmax.association import video_stitcher


def _stitcher(score='iou', threshold=0.0):
  return video_stitcher.VideoStitcher(label_divisor=1000, thing_class_ids=[11, 13],
                                      score=score, threshold=threshold)


def test_stitcher_mutual_best_same_class_only():
  previous = np.zeros((4, 10), dtype=np.int32)
  previous[:, 0:4] = 13005  # car A
  previous[:, 6:10] = 11009  # person B
  current = np.zeros((4, 10), dtype=np.int32)
  current[:, 0:3] = 13001  # car, IoU 0.75 with A
  current[:, 3:5] = 13002  # car, IoU 0.2 with A: A prefers 13001
  current[:, 6:10] = 13003  # a car where the person was: never stitched
  stitcher = _stitcher()
  assert stitcher.match(current) == {}  # nothing remembered yet.
  stitcher.remember(previous)
  assert stitcher.match(current) == {13001: 13005}


def test_stitcher_iou_vs_dice_threshold():
  previous = np.zeros((1, 10), dtype=np.int32)
  previous[0, 0:4] = 13005
  current = np.zeros((1, 10), dtype=np.int32)
  current[0, 2:5] = 13001  # inter 2, areas 4 and 3: IoU 0.4, dice 4/7
  for score, expected in (('iou', {}), ('dice', {13001: 13005})):
    stitcher = _stitcher(score, threshold=0.5)
    stitcher.remember(previous)
    assert stitcher.match(current) == expected


def test_stitcher_rejects_negative_threshold_and_forgets_on_reset():
  with pytest.raises(ValueError, match='received -0.1'):
    _stitcher(threshold=-0.1)
  stitcher = _stitcher()
  frame = np.full((2, 2), 13001, dtype=np.int32)
  stitcher.remember(frame)
  assert stitcher.match(frame) == {13001: 13001}
  stitcher.reset()
  assert stitcher.match(frame) == {}


def test_stitcher_forgets_pixels_of_the_frame_before():
  # The remembered index map is reused between clips: pixels of the older frame
  # must not survive into the next match.
  older = np.zeros((2, 8), dtype=np.int32)
  older[:, 0:4] = 13005
  newer = np.zeros((2, 8), dtype=np.int32)
  newer[:, 4:8] = 13006
  stitcher = _stitcher()
  stitcher.remember(older)
  stitcher.remember(newer)
  current = np.zeros((2, 8), dtype=np.int32)
  current[:, 0:4] = 13001  # where only the older frame had a car
  current[:, 5:8] = 13002
  assert stitcher.match(current) == {13002: 13006}
