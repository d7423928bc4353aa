"""VPQ and image PQ: hand-computed values, reference loop, invariances, merging."""

import numpy as np
import pytest

from deeplab2_vkmax.evaluation import panoptic_quality
from deeplab2_vkmax.evaluation import video_panoptic_quality as vpq_lib

# Classes: 0 stuff, 1 thing, 2 stuff; 255 void; divisor 1000.
ARGS = dict(num_classes=3, thing_class_ids=[1], ignore_label=255, label_divisor=1000)
VOID = 255000


def test_pq_hand_computed_crowd_void_and_false_positive():
  #       stuff 0 (4 px)   thing track    void         crowd (thing, instance 0)
  gt = np.array([[0, 0, 0, 0, 1001, 1001, 1001, VOID, VOID, 1000]])
  pred = np.array([[0, 0, 0, 2000, 1005, 1005, 1005, 1007, 1007, 1007]])
  metric = panoptic_quality.PanopticQuality(**ARGS)
  metric.update_state(gt, pred)
  result = metric.result()
  # class 0: IoU 3 / (3 + 4 - 3) = 0.75. class 1: exact, 1.0; pred 1007 lies 2/3 on
  # void + same-class crowd, so it is no FP. class 2: one FP -> 0 / 0.5 = 0.
  np.testing.assert_allclose(result['PQ_per_class'], [0.75, 1.0, 0.0])
  assert result['PQ'] == pytest.approx((0.75 + 1.0 + 0.0) / 3)
  assert result['PQ_thing'] == pytest.approx(1.0)
  assert result['PQ_stuff'] == pytest.approx(0.375)
  assert result['TP'].tolist() == [1, 1, 0]
  assert result['FP'].tolist() == [0, 0, 1]
  assert result['FN'].tolist() == [0, 0, 0]


def test_void_pixels_leave_the_union_and_crowd_is_never_matched():
  gt = np.array([[1001, 1001, VOID, VOID, 1000, 1000]])
  pred = np.array([[1003, 1003, 1003, 1003, 1009, 1009]])
  metric = panoptic_quality.PanopticQuality(**ARGS)
  metric.update_state(gt, pred)
  result = metric.result()
  # IoU = 2 / (4 + 2 - 2 - 2) = 1; pred 1009 covers only crowd: no TP, no FP.
  assert result['TP'].tolist() == [0, 1, 0] and result['FP'].tolist() == [0, 0, 0]
  assert result['PQ'] == pytest.approx(1.0)


def test_class_confusion_gives_a_false_negative_and_a_false_positive():
  gt = np.array([[1001, 1001, 0, 0]])
  pred = np.array([[2000, 2000, 0, 0]])
  metric = panoptic_quality.PanopticQuality(**ARGS)
  metric.update_state(gt, pred)
  result = metric.result()
  assert result['FN'].tolist() == [0, 1, 0] and result['FP'].tolist() == [0, 0, 1]
  np.testing.assert_allclose(result['PQ_per_class'], [1.0, 0.0, 0.0])


def test_iou_of_exactly_one_half_does_not_match():
  gt = np.array([[0, 0, 0, 0]])
  pred = np.array([[0, 0, 2000, 2000]])  # IoU 2 / 4 = 0.5.
  metric = panoptic_quality.PanopticQuality(**ARGS)
  metric.update_state(gt, pred)
  assert metric.result()['TP'].sum() == 0


def _switch_video():
  """Two frames; the thing's predicted id switches in frame 1; stuff is perfect."""
  gt = np.array([[[0, 0, 1001, 1001]], [[0, 0, 1001, 1001]]])
  pred = np.array([[[0, 0, 1001, 1001]], [[0, 0, 1002, 1002]]])
  return gt, pred


def test_vpq_id_switch_hand_computed():
  gt, pred = _switch_video()
  metric = vpq_lib.VideoPanopticQuality(**ARGS, window_sizes=[1, 2])
  metric.update_state(gt, pred, 'a')
  result = metric.result()
  # n=1: both classes perfect. n=2: the thing tube (4 px) meets each predicted tube
  # on 2 px: IoU 0.5, no match -> 1 FN + 2 FP, PQ_1 = 0; stuff still 1.
  assert result['VPQ_per_window'] == {1: pytest.approx(1.0), 2: pytest.approx(0.5)}
  assert result['VPQ'] == pytest.approx(0.75)
  assert result['VPQ_thing'] == pytest.approx(0.5)
  assert result['VPQ_stuff'] == pytest.approx(1.0)
  assert '{1,2}' in metric.format_result(result)


def test_window_longer_than_every_video_is_left_out_of_the_mean():
  gt, pred = _switch_video()
  metric = vpq_lib.VideoPanopticQuality(**ARGS, window_sizes='video_kmax')
  metric.update_state(gt, pred, 'a')
  result = metric.result()
  assert np.isnan(result['VPQ_per_window'][4]) and np.isnan(result['VPQ_per_window'][6])
  assert result['VPQ'] == pytest.approx(0.75)


def test_window_presets_and_printed_window_set():
  for name, sizes in (('vipseg', (1, 2, 4, 6, 8)), ('video_kmax', (1, 2, 4, 6)),
                      ('cityscapes_vps', (1, 2, 3, 4))):
    metric = vpq_lib.VideoPanopticQuality(**ARGS, window_sizes=name)
    assert metric.window_sizes == sizes
    window_set = '{' + ','.join(map(str, sizes)) + '}'
    assert window_set in repr(metric) and window_set in metric.describe()
    assert name in metric.describe()
  with pytest.raises(ValueError, match='unknown VPQ window preset'):
    vpq_lib.VideoPanopticQuality(**ARGS, window_sizes='kitti')


def _random_video(rng, num_frames=7, shape=(12, 16)):
  """Blocky random panoptic video: 2 stuff classes, things with persistent ids, void, crowd."""
  coarse = rng.integers(0, 7, size=(num_frames, shape[0] // 4, shape[1] // 4))
  table = np.array([0, 2000, 1001, 1002, 1003, 1000, VOID])
  gt = table[np.kron(coarse, np.ones((1, 4, 4), int))]
  return gt


def _perturb(rng, gt):
  """A prediction: ground truth with random pixel noise and one id switch."""
  pred = np.where(gt == VOID, 0, gt)
  noise = rng.random(gt.shape) < 0.15
  pred = np.where(noise, rng.choice([0, 2000, 1001, 1002, 1004], size=gt.shape), pred)
  pred[len(gt) // 2:][pred[len(gt) // 2:] == 1003] = 1008
  return pred


def _reference_vpq(videos, window_sizes):
  """Loop transcription of docs/evaluation.md (stacked frames, dict of pair areas)."""
  vpq_n = []
  for n in window_sizes:
    stats = np.zeros((4, 3))
    for gt, pred in videos:
      for t in range(len(gt) - n + 1):
        g, p = gt[t:t + n].ravel(), pred[t:t + n].ravel()
        pairs = {}
        for a, b in zip(g, p):
          pairs[(a, b)] = pairs.get((a, b), 0) + 1
        g_area = {a: np.sum(g == a) for a in set(g)}
        p_area = {b: np.sum(p == b) for b in set(p)}
        matched_g, matched_p = set(), set()
        for (a, b), inter in pairs.items():
          if a == VOID or a // 1000 != b // 1000 or (a // 1000 == 1 and a % 1000 == 0):
            continue
          iou = inter / (p_area[b] + g_area[a] - inter - pairs.get((VOID, b), 0))
          if iou > 0.5:
            stats[0, a // 1000] += 1
            stats[3, a // 1000] += iou
            matched_g.add(a)
            matched_p.add(b)
        for a in g_area:
          if a != VOID and a != 1000 and a not in matched_g:
            stats[2, a // 1000] += 1
        for b in p_area:
          if b in matched_p:
            continue
          ignored = pairs.get((VOID, b), 0) + (pairs.get((1000, b), 0) if b // 1000 == 1 else 0)
          if ignored / p_area[b] <= 0.5:
            stats[1, b // 1000] += 1
    present = stats[0] + stats[1] + stats[2] > 0
    pq = stats[3][present] / (stats[0] + stats[1] / 2 + stats[2] / 2)[present]
    vpq_n.append(pq.mean())
  return float(np.mean(vpq_n))


def test_vpq_equals_a_loop_transcription_of_the_definition():
  rng = np.random.default_rng(0)
  videos = [(gt, _perturb(rng, gt)) for gt in (_random_video(rng), _random_video(rng, 5))]
  metric = vpq_lib.VideoPanopticQuality(**ARGS, window_sizes=[1, 2, 4])
  for index, (gt, pred) in enumerate(videos):
    for frame in range(len(gt)):  # Streaming, frame by frame.
      metric.update_state(gt[frame], pred[frame], index)
  assert metric.result()['VPQ'] == pytest.approx(_reference_vpq(videos, [1, 2, 4]), abs=1e-12)
  assert all(len(buffer) <= 4 for buffer in metric._buffers.values())


def test_perfect_prediction_scores_one_and_relabelling_changes_nothing():
  rng = np.random.default_rng(1)
  gt = _random_video(rng)
  metric = vpq_lib.VideoPanopticQuality(**ARGS, window_sizes='vipseg')
  metric.update_state(gt, gt, 'v')
  assert metric.result()['VPQ'] == pytest.approx(1.0)
  noisy = _perturb(rng, gt)
  relabelled = noisy.copy()
  for old, new in ((1001, 1017), (1002, 1001), (1004, 1002), (1008, 1033)):
    relabelled[noisy == old] = new
  scores = []
  for prediction in (noisy, relabelled):
    metric = vpq_lib.VideoPanopticQuality(**ARGS, window_sizes='vipseg')
    metric.update_state(gt, prediction, 'v')
    scores.append(metric.result()['VPQ'])
  assert scores[0] == pytest.approx(scores[1]) and scores[0] < 1.0


def test_merge_state_of_two_halves_equals_one_pass():
  rng = np.random.default_rng(2)
  videos = [(gt, _perturb(rng, gt)) for gt in (_random_video(rng) for _ in range(4))]
  whole = vpq_lib.VideoPanopticQuality(**ARGS)
  halves = [vpq_lib.VideoPanopticQuality(**ARGS) for _ in range(2)]
  image_whole = panoptic_quality.PanopticQuality(**ARGS)
  image_halves = [panoptic_quality.PanopticQuality(**ARGS) for _ in range(2)]
  for index, (gt, pred) in enumerate(videos):
    whole.update_state(gt, pred, index)
    halves[index % 2].update_state(gt, pred, index)
    image_whole.update_state(gt, pred)
    image_halves[index % 2].update_state(gt, pred)
  halves[0].merge_state([halves[1]])
  image_halves[0].merge_state(image_halves[1])
  assert halves[0].result()['VPQ'] == pytest.approx(whole.result()['VPQ'], abs=1e-12)
  assert image_halves[0].result()['PQ'] == pytest.approx(image_whole.result()['PQ'], abs=1e-12)
  with pytest.raises(ValueError, match='split work by video'):
    halves[0].merge_state(whole)


def test_errors_name_the_bad_values():
  with pytest.raises(ValueError, match='outside'):
    metric = panoptic_quality.PanopticQuality(**ARGS)
    metric.update_state(np.array([[7000]]), np.array([[0]]))
  with pytest.raises(ValueError, match=r'\[H, W\] or \[T, H, W\]'):
    vpq_lib.VideoPanopticQuality(**ARGS).update_state(np.zeros((2, 2)), np.zeros((2, 3)))
