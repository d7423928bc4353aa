"""STQ: hand-computed exact values, invariances and streaming (docs/evaluation.md)."""

import numpy as np
import pytest

from deeplab2_vkmax.evaluation import stq

# 3 classes: 0 stuff, 1 thing, 2 stuff; KITTI-like ignore label and divisor.
DIVISOR, IGNORE = 1000, 255


def _metric(**kwargs):
  return stq.STQuality(num_classes=3, thing_class_ids=[1], ignore_label=IGNORE,
                       label_divisor=DIVISOR, offset=1 << 20, **kwargs)


def _result(gt, pred, **kwargs):
  metric = _metric(**kwargs)
  metric.update_state(np.array(gt), np.array(pred), 'seq')
  return metric.result()


def test_id_switch():
  # One GT track of 4 pixels over 2 frames, prediction switches id in frame 2:
  # AQ = (1/4) * (2 * 2^2 / (2 + 4 - 2)) = 0.5; IoU = 1.
  gt = [[[0, 1001, 1001, 0]], [[0, 1001, 1001, 0]]]
  pred = [[[0, 1001, 1001, 0]], [[0, 1002, 1002, 0]]]
  result = _result(gt, pred)
  assert result['AQ'] == pytest.approx(0.5)
  assert result['IoU'] == pytest.approx(1.0)
  assert result['STQ'] == pytest.approx(np.sqrt(0.5))
  assert result['Length_per_seq'] == [2]
  assert result['ID_per_seq'] == ['seq']


def test_class_confusion():
  # IoU: class 0 = 1/2, class 1 = 1/3, class 2 = 0/1 -> 5/18.
  # AQ: |g| = 2, the predicted thing 1001 covers pixels 1-2 (|p| = 2, pixel 1 is
  # stuff in GT and still counts), TPA = 1: (1/2) * 1 / 3 = 1/6.
  result = _result([[0, 0, 1001, 1001]], [[0, 1001, 1001, 2000]])
  assert result['IoU'] == pytest.approx(5 / 18)
  assert result['AQ'] == pytest.approx(1 / 6)
  assert result['STQ'] == pytest.approx(np.sqrt(5 / 108))


def test_crowd_removed_from_gt_and_prediction():
  # GT thing pixels with instance 0 are crowd: the prediction 1005 there is not a
  # false positive, so AQ = 1 (it would be 0.5 counting |p| = 4).
  result = _result([[1000, 1000, 1001, 1001]], [[1005, 1005, 1005, 1005]])
  assert result['AQ'] == pytest.approx(1.0)
  assert result['IoU'] == pytest.approx(1.0)


def test_ignore_label():
  ignore = IGNORE * DIVISOR
  # Stuff predicted on an ignored pixel: no false positive for class 2.
  result = _result([[ignore, 0, 1001, 1001]], [[2000, 0, 1001, 1001]])
  assert result['STQ'] == pytest.approx(1.0)
  # A predicted thing on an ignored pixel still counts in |p| (official script):
  # (1/2) * 2^2 / (3 + 2 - 2) = 2/3.
  result = _result([[ignore, 0, 1001, 1001]], [[1001, 0, 1001, 1001]])
  assert result['IoU'] == pytest.approx(1.0)
  assert result['AQ'] == pytest.approx(2 / 3)
  # Official quirk: predicting the ignore label on a valid pixel adds a void
  # class with IoU 0 to the mean: (0 [class 0] + 1 [class 1] + 0 [void]) / 3.
  result = _result([[0, 1001]], [[ignore, 1001]])
  assert result['IoU'] == pytest.approx(1 / 3)


def test_aq_is_track_weighted_across_sequences():
  metric = _metric()
  # Sequence a: 1 track, AQ sum 0.5. Sequence b: 2 tracks, both perfect (sum 2).
  metric.update_state(np.array([[1001, 1001]]), np.array([[1001, 1002]]), 'a')
  metric.update_state(np.array([[1001, 1002]]), np.array([[1007, 1003]]), 'b')
  result = metric.result()
  assert result['AQ'] == pytest.approx(2.5 / 3)  # not the mean of 0.5 and 1.
  np.testing.assert_allclose(result['AQ_per_seq'], [0.5, 1.0])
  np.testing.assert_allclose(result['STQ_per_seq'], [np.sqrt(0.5), 1.0])
  assert result['ID_per_seq'] == ['a', 'b']


def _random_sequence(rng, frames=4, size=(12, 16)):
  gt = rng.choice(np.array([0, 2000, 1000, 1001, 1002, 1003, IGNORE * DIVISOR]),
                  size=(frames,) + size)
  pred = rng.choice(np.array([0, 2000, 1001, 1002, 1004, 1005]), size=(frames,) + size)
  return gt, pred


def test_perfect_prediction_is_one():
  gt, _ = _random_sequence(np.random.default_rng(0))
  pred = np.where(gt == IGNORE * DIVISOR, 0, gt)
  result = _result(gt, pred)
  assert result['STQ'] == pytest.approx(1.0)
  assert result['AQ'] == pytest.approx(1.0)
  assert result['IoU'] == pytest.approx(1.0)


def test_relabelling_predicted_ids_leaves_score_unchanged():
  rng = np.random.default_rng(1)
  gt, pred = _random_sequence(rng)
  relabel = {1001: 1077, 1002: 1003, 1004: 1001, 1005: 1999}
  relabelled = pred.copy()
  for old, new in relabel.items():
    relabelled[pred == old] = new
  a, b = _result(gt, pred), _result(gt, relabelled)
  for key in ('STQ', 'AQ', 'IoU'):
    assert a[key] == pytest.approx(b[key], abs=1e-12)
  assert 0.0 < a['STQ'] < 1.0


@pytest.mark.parametrize('split', ['by_frame', 'by_sequence'])
def test_merge_state_of_halves_equals_one_pass(split):
  rng = np.random.default_rng(2)
  data = [(seq,) + _random_sequence(rng) for seq in ('s0', 's1', 's2')]
  whole, first, second = _metric(), _metric(), _metric()
  for seq, gt, pred in data:
    whole.update_state(gt, pred, seq)
  for i, (seq, gt, pred) in enumerate(data):
    if split == 'by_frame':
      first.update_state(gt[:2], pred[:2], seq)
      for t in range(2, len(gt)):  # frame by frame ([H, W] inputs).
        second.update_state(gt[t], pred[t], seq)
    else:
      (first if i < 2 else second).update_state(gt, pred, seq)
  first.merge_state([second])
  a, b = whole.result(), first.result()
  for key in ('STQ', 'AQ', 'IoU'):
    assert a[key] == pytest.approx(b[key], abs=1e-12)
  for key in ('STQ_per_seq', 'AQ_per_seq', 'IoU_per_seq'):
    np.testing.assert_allclose(a[key], b[key], atol=1e-12)
  assert a['Length_per_seq'] == b['Length_per_seq'] == [4, 4, 4]
  first.reset_states()
  assert first.result()['ID_per_seq'] == []


def test_vipseg_first_segment_crowd():
  # First frame's smallest GT id is thing 1001: with the option it is crowd.
  gt = [[[1001, 1001, 1002, 1002]], [[1001, 1001, 1002, 1002]]]
  pred = [[[1001, 1001, 1002, 1002]], [[1003, 1003, 1002, 1002]]]
  assert _result(gt, pred)['AQ'] == pytest.approx((0.5 + 1.0) / 2)
  assert _result(gt, pred, vipseg_first_segment_crowd=True)['AQ'] == pytest.approx(1.0)
  # A stuff first segment changes nothing.
  gt0 = [[[0, 1001, 1001, 1002]]]
  assert (_result(gt0, gt0, vipseg_first_segment_crowd=True)['AQ']
          == pytest.approx(1.0))


def test_errors_name_values():
  with pytest.raises(ValueError, match=r'offset must be >= .* = 3000; received 100'):
    stq.STQuality(3, [1], IGNORE, DIVISOR, 100)
  metric = _metric()
  with pytest.raises(ValueError, match=r'\(2, 3\) and \(3, 2\)'):
    metric.update_state(np.zeros((2, 3)), np.zeros((3, 2)))
  with pytest.raises(ValueError, match=r'y_pred .* range \[7, 7\]'):
    metric.update_state(np.zeros((2, 2)), np.full((2, 2), 7000))


def _loop_reference(sequences, num_classes=3, things=(1,)):
  """Direct transcription of docs/evaluation.md with dicts and loops (slow, obvious)."""
  confusion = np.zeros((num_classes + 1, num_classes + 1))
  aq_sum, tracks = 0.0, 0
  for gt, pred in sequences:
    gt, pred = gt.reshape(-1), pred.reshape(-1)
    gs, ps = gt // DIVISOR, pred // DIVISOR
    for g, p in zip(gs, ps):
      if g != IGNORE:
        confusion[g, num_classes if p == IGNORE else p] += 1
    crowd = np.isin(gs, things) & (gt % DIVISOR == 0)
    g_area, p_area, tpa = {}, {}, {}
    for i in range(gt.size):
      if crowd[i]:
        continue
      g_thing, p_thing = gs[i] in things, ps[i] in things
      if g_thing:
        g_area[gt[i]] = g_area.get(gt[i], 0) + 1
      if p_thing:
        p_area[pred[i]] = p_area.get(pred[i], 0) + 1
      if g_thing and p_thing:
        tpa[gt[i], pred[i]] = tpa.get((gt[i], pred[i]), 0) + 1
    for (g, p), t in tpa.items():
      aq_sum += t * t / (g_area[g] + p_area[p] - t) / g_area[g]
    tracks += len(g_area)
  inter = np.diag(confusion)
  union = confusion.sum(0) + confusion.sum(1) - inter
  iou = np.sum(inter[union > 0] / union[union > 0]) / np.count_nonzero(union)
  return aq_sum / tracks, iou


def test_matches_loop_reference_on_random_sequences():
  rng = np.random.default_rng(3)
  sequences = [_random_sequence(rng, frames=3, size=(9, 11)) for _ in range(3)]
  metric = _metric()
  for k, (gt, pred) in enumerate(sequences):
    metric.update_state(gt, pred, k)
  aq, iou = _loop_reference(sequences)
  result = metric.result()
  assert result['AQ'] == pytest.approx(aq, abs=1e-12)
  assert result['IoU'] == pytest.approx(iou, abs=1e-12)


def _sliding_id_sequence(rng, frames=8, size=(9, 11)):
  """Thing ids drawn from windows that slide with time: new ids every frame."""
  gt, pred = [], []
  for t in range(frames):
    gt_ids = np.concatenate([[0, 2000, 1000, IGNORE * DIVISOR],
                             1000 + np.arange(1 + 3 * t, 7 + 3 * t)])
    pred_ids = np.concatenate([[0, 2000], 1000 + np.arange(1 + 4 * t, 9 + 4 * t)])
    gt.append(rng.choice(gt_ids, size=size))
    pred.append(rng.choice(pred_ids, size=size))
  return np.stack(gt), np.stack(pred)


@pytest.mark.parametrize('path', ['dense', 'restart', 'sparse'])
def test_every_counting_path_matches_loop_reference(path, monkeypatch):
  # dense: id tables kept across frames; restart: they outgrow the frame and
  # start over (a frame of 99 pixels fits 200 bins, eight frames of new ids do
  # not); sparse: ids too large for a table, counted by sorting.
  calls = {'restart': 0, 'sparse': 0}
  reset, sparse = stq._JointCounter._reset, stq._sparse_pair_counts
  def counted_reset(self):
    calls['restart'] += 1
    reset(self)
  def counted_sparse(*args):
    calls['sparse'] += 1
    return sparse(*args)
  monkeypatch.setattr(stq._JointCounter, '_reset', counted_reset)
  monkeypatch.setattr(stq, '_sparse_pair_counts', counted_sparse)
  if path == 'restart':
    monkeypatch.setattr(stq, '_MIN_JOINT_BINS', 200)
  if path == 'sparse':
    monkeypatch.setattr(stq, '_DENSE_ID_LIMIT', 1000)
  rng = np.random.default_rng(7)
  sequences = [_sliding_id_sequence(rng) for _ in range(2)]
  metric = _metric()
  for k, (gt, pred) in enumerate(sequences):
    for t in range(len(gt)):
      metric.update_state(gt[t], pred[t], k)
  assert (calls['restart'] > 1) == (path == 'restart')  # 1: the constructor's.
  assert (calls['sparse'] > 0) == (path == 'sparse')
  aq, iou = _loop_reference(sequences)
  result = metric.result()
  assert result['AQ'] == pytest.approx(aq, abs=1e-12)
  assert result['IoU'] == pytest.approx(iou, abs=1e-12)


def test_input_types_and_negative_ids():
  gt = np.array([[1001, 1001, 0, 2000]])
  pred = np.array([[1005, 1005, 0, 2000]])
  expected = _result(gt, pred)
  for dtype in (np.int32, np.uint32, np.uint16, np.float64):
    got = _result(gt.astype(dtype), pred.astype(dtype))
    assert (got['AQ'], got['IoU']) == (expected['AQ'], expected['IoU']), dtype
  with pytest.raises(ValueError, match=r'y_pred holds negative panoptic ids \(minimum -3\)'):
    _metric().update_state(gt, np.array([[1005, -3, 0, 2000]]))


def test_association_per_track_terms_average_to_aq():
  # Track 1001 keeps one id (AQ 1); track 1002 switches id halfway (AQ 0.5, as
  # in test_id_switch); sequence 'b' has one track never predicted (AQ 0).
  gt = [[[1001, 1002, 1002, 0]], [[1001, 1002, 1002, 0]]]
  pred = [[[1007, 1003, 1003, 0]], [[1007, 1004, 1004, 0]]]
  metric = _metric()
  metric.update_state(np.array(gt), np.array(pred), 'a')
  metric.update_state(np.array([[1005, 0]]), np.array([[0, 0]]), 'b')
  per_track = metric.association_per_track()
  assert list(per_track) == ['a', 'b']
  assert per_track['a'] == pytest.approx({1001: 1.0, 1002: 0.5})
  assert per_track['b'] == {1005: 0.0}
  terms = [v for seq in per_track.values() for v in seq.values()]
  assert metric.result()['AQ'] == pytest.approx(np.mean(terms))


def test_association_per_track_matches_aq_on_random_sequences():
  rng = np.random.default_rng(5)
  metric = _metric()
  for k in range(3):
    metric.update_state(*_random_sequence(rng, frames=3, size=(9, 11)), k)
  terms = [v for seq in metric.association_per_track().values() for v in seq.values()]
  assert metric.result()['AQ'] == pytest.approx(np.mean(terms), abs=1e-12)
