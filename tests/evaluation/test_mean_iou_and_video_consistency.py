"""MeanIoU (VSPW) and VideoConsistency: hand-computed values, merging."""

import numpy as np
import pytest

from deeplab2_vkmax.evaluation import mean_iou
from deeplab2_vkmax.evaluation import video_consistency


def test_miou_hand_computed_ignore_and_classes_in_mean():
  gt = np.array([[0, 0, 1, 1, 255]])
  pred = np.array([[0, 1, 1, 2, 0]])
  metric = mean_iou.MeanIoU(num_classes=3)
  metric.update_state(gt, pred)
  # class 0: 1 / 2; class 1: 1 / 3; class 2 is only predicted: not in the mean.
  assert metric.result()['mIoU'] == pytest.approx((1 / 2 + 1 / 3) / 2)
  union = mean_iou.MeanIoU(num_classes=3, classes_in_mean='union_nonzero')
  union.update_state(gt, pred)
  assert union.result()['mIoU'] == pytest.approx((1 / 2 + 1 / 3 + 0) / 3)


def test_miou_vspw_remap_and_perfect_prediction():
  raw = np.array([[1, 1, 2, 2, 0, 255]])  # 0 = others and 255 = void both dropped.
  np.testing.assert_array_equal(mean_iou.vspw_remap(raw), [[0, 0, 1, 1, 254, 254]])
  metric = mean_iou.MeanIoU(num_classes=124, vspw_remap=True)
  metric.update_state(raw, np.array([[0, 0, 1, 1, 7, 99]]))
  assert metric.result()['mIoU'] == pytest.approx(1.0)


def test_miou_merge_state_of_halves_equals_one_pass():
  rng = np.random.default_rng(0)
  frames = [(rng.integers(0, 6, (8, 8)), rng.integers(0, 5, (8, 8))) for _ in range(6)]
  whole, halves = mean_iou.MeanIoU(5), [mean_iou.MeanIoU(5), mean_iou.MeanIoU(5)]
  for index, (gt, pred) in enumerate(frames):
    whole.update_state(gt, pred)
    halves[index % 2].update_state(gt, pred)
  halves[0].merge_state(halves[1])
  assert halves[0].result()['mIoU'] == pytest.approx(whole.result()['mIoU'])


def _videos():
  # Video a (4 frames, 2 px): windows i = 0, 1 only (the official loop skips i = 2).
  gt_a = np.array([[[1, 1]], [[1, 2]], [[1, 2]], [[1, 2]]])
  pred_a = np.array([[[1, 1]], [[1, 1]], [[2, 2]], [[2, 2]]])
  # Video b (3 frames): window 0 has no consistent GT pixel (NaN, left out).
  gt_b = np.array([[[1, 1]], [[2, 2]], [[3, 3]]])
  return [('a', gt_a, pred_a), ('b', gt_b, gt_b)]


def test_vc_hand_computed_with_the_official_loop():
  metric = video_consistency.VideoConsistency(2)
  for sequence_id, gt, pred in _videos():
    for frame in range(len(gt)):
      metric.update_state(gt[frame], pred[frame], sequence_id)
  result = metric.result()
  # a: window 0 acc 1/1, window 1 acc 0/2; window 2 (acc 1) skipped. b: NaN.
  assert result['VC2'] == pytest.approx(0.5)
  assert result['windows_per_seq'] == [2, 1]
  assert np.isnan(result['VC_per_seq'][1])


def test_vc_perfect_prediction_and_merge_state():
  rng = np.random.default_rng(3)
  # Mostly static labels with a few flickering pixels: every window has consistent GT.
  videos = []
  for i in range(4):
    gt = np.repeat(rng.integers(0, 2, (1, 4, 4)), 10, axis=0)
    gt[np.arange(10), rng.integers(0, 4, 10), rng.integers(0, 4, 10)] ^= 1
    videos.append((i, gt))
  whole = video_consistency.VideoConsistency(8)
  halves = [video_consistency.VideoConsistency(8), video_consistency.VideoConsistency(8)]
  for index, gt in videos:
    whole.update_state(gt, gt, index)
    halves[index % 2].update_state(gt, np.where(gt == 0, 5, 6), index)  # Renamed classes.
  halves[0].merge_state(halves[1])
  assert whole.result()['VC8'] == pytest.approx(1.0)
  assert halves[0].result()['VC8'] == pytest.approx(1.0)
