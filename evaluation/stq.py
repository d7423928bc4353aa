"""Segmentation and Tracking Quality (STQ), numpy, vectorised, streaming.

Weber et al., "STEP: Segmenting and Tracking Every Pixel" (2021); definitions as
fixed in docs/evaluation.md and docs/stq.md, numbers identical to the official
numpy script (DeepLab2 `evaluation/numpy/segmentation_and_tracking_quality.py`):

  STQ = sqrt(SQ * AQ)

- SQ (reported as 'IoU'): mean IoU over classes of ONE confusion matrix summed over
  every frame of every sequence. Ground-truth pixels with the ignore label are
  dropped. Classes with union 0 are left out of the mean. Official quirk kept: when
  `ignore_label >= num_classes`, a prediction of `ignore_label` on a valid pixel
  lands in an extra "void" column; that void class then has a non-zero union and
  IoU 0, so it counts in the mean.
- AQ: per sequence, areas summed over all its frames: |g| per ground-truth track
  (pixels of a thing class, instance > 0), |p| per predicted id (pixels whose
  *predicted* class is a thing, wherever the ground truth is, as the official
  script), TPA(p, g) on pixels that are both. Ground-truth crowd pixels (thing
  class, instance 0) are removed from both sides. Class-agnostic:
  `AQ_seq_sum = sum_g 1/|g| sum_p TPA^2 / (|p| + |g| - TPA)`;
  `AQ = sum_seq AQ_seq_sum / total number of GT tracks` (track-weighted);
  `AQ_per_seq = AQ_seq_sum / tracks in that sequence`.

Per frame, one bincount over the pixels counts every (ground-truth id, predicted
id) pair (`_JointCounter`: id -> index tables kept across frames, so no sort);
everything else (confusion matrix, areas, intersections) is summed from those few
pairs. State per sequence: the confusion matrix and three sparse histograms kept
as sorted (key, count) arrays, merged with `np.unique`. All sums are integers and
the scores float64. No Python loop touches pixels or id pairs.
"""

import collections
from typing import Any, Dict, Hashable, Iterable, Optional, Sequence

import numpy as np

from deeplab2_vkmax.evaluation import metric_checks

_EPSILON = 1e-15


def _merge_histograms(a, b):
  """Sum of two (keys, counts) histograms."""
  keys = np.concatenate([a[0], b[0]])
  counts = np.concatenate([a[1], b[1]])
  merged_keys, inverse = np.unique(keys, return_inverse=True)
  merged_counts = np.bincount(inverse.reshape(-1), weights=counts,
                              minlength=len(merged_keys)).astype(np.int64)
  return merged_keys, merged_counts


def _lookup(histogram, keys: np.ndarray) -> np.ndarray:
  """Counts of `keys` (all present) in a (keys, counts) histogram."""
  return histogram[1][np.searchsorted(histogram[0], keys)]


# Panoptic ids below this bound get a dense id -> index table (a gather per
# frame, linear in pixels); a frame with a larger id is counted with np.unique.
_DENSE_ID_LIMIT = 1 << 22
_UNKNOWN = -(1 << 62)  # Table entry of an id not seen yet: makes any pair key < 0.
_MIN_JOINT_BINS = 1 << 16  # Joint tables up to max(this, pixels) bins stay dense.


def _distinct(values: np.ndarray) -> np.ndarray:
  """Sorted distinct values of a non-negative int64 array."""
  if values.size and int(values.max()) < _DENSE_ID_LIMIT:
    return np.flatnonzero(np.bincount(values))
  return np.unique(values)


class _IdTable:
  """Panoptic id -> `index * scale`, remembered from frame to frame.

  The last entry is always unknown: a gather with mode='clip' sends every id
  past the table there, so one gather finds both new ids and ids beyond it.
  """

  def __init__(self):
    self.ids = np.zeros(0, np.int64)
    self.scale = 1
    self._table = np.full(1, _UNKNOWN, np.int64)

  def gather(self, values: np.ndarray) -> np.ndarray:
    return np.take(self._table, values, mode='clip')

  def unknown(self, values: np.ndarray) -> np.ndarray:
    """Sorted distinct values not in the table."""
    return _distinct(values[self.gather(values) < 0])

  def add(self, new: np.ndarray) -> None:
    if len(new) and new[-1] + 1 >= self._table.size:
      size = min(max(new[-1] + 2, 2 * self._table.size), _DENSE_ID_LIMIT + 1)
      grown = np.full(size, _UNKNOWN, np.int64)
      grown[:self._table.size - 1] = self._table[:-1]
      self._table = grown
    self._table[new] = np.arange(len(self.ids), len(self.ids) + len(new)) * self.scale
    self.ids = np.concatenate([self.ids, new])

  def rescale(self, scale: int) -> None:
    known = self._table >= 0
    self._table[known] = self._table[known] // self.scale * scale
    self.scale = scale


class _JointCounter:
  """Pixel counts of (ground-truth id, predicted id) pairs, frame after frame.

  Ids repeat across the frames of a video, so the two id -> index tables are
  kept between frames and a frame costs two gathers, an add and one bincount
  over its pixels: no sort. The ground-truth table stores `index * P`, P a power
  of two above the number of predicted ids, so `gather(gt) + gather(pred)` is the
  pair's bin. The tables start over when the remembered ids would make more bins
  than a frame has pixels; ids too large for a table fall back to np.unique.
  """

  def __init__(self):
    self._reset()

  def _reset(self) -> None:
    self._gt, self._pred = _IdTable(), _IdTable()

  def count(self, y_true: np.ndarray, y_pred: np.ndarray, check):
    """(gt ids, predicted ids, pair gt index, pair predicted index, pair count).

    Args:
      y_true, y_pred: flat non-negative int64 panoptic ids.
      check: `check(new gt ids, new predicted ids)`, called before they are
        remembered; may raise.
    """
    key = self._gt.gather(y_true)
    key += self._pred.gather(y_pred)
    if key.size and int(key.min()) < 0:
      if not self._learn(y_true, y_pred, check):
        return _sparse_pair_counts(y_true, y_pred)
      key = self._gt.gather(y_true)
      key += self._pred.gather(y_pred)
    stride = self._gt.scale
    joint = np.bincount(key, minlength=len(self._gt.ids) * stride)
    keys = np.flatnonzero(joint)
    return (self._gt.ids, self._pred.ids, keys // stride, keys % stride,
            joint[keys].astype(np.int64))

  def _learn(self, y_true, y_pred, check) -> bool:
    """Adds a frame's new ids; False if the frame needs the sparse path."""
    new_gt, new_pred = self._gt.unknown(y_true), self._pred.unknown(y_pred)
    check(new_gt, new_pred)
    if max([*new_gt[-1:], *new_pred[-1:], 0]) >= _DENSE_ID_LIMIT:  # Both sorted.
      return False
    num_bins = lambda: (len(self._gt.ids) + len(new_gt)) * _power_of_two_above(
        len(self._pred.ids) + len(new_pred))
    max_bins = max(y_true.size, _MIN_JOINT_BINS)
    if num_bins() > max_bins:
      self._reset()  # The remembered ids outgrew a frame: start over from this one.
      new_gt, new_pred = _distinct(y_true), _distinct(y_pred)
      if num_bins() > max_bins:
        return False
    self._pred.add(new_pred)
    self._gt.rescale(_power_of_two_above(len(self._pred.ids)))
    self._gt.add(new_gt)
    return True


def _power_of_two_above(n: int) -> int:
  return 1 << max(int(n).bit_length(), 4)


def _sparse_pair_counts(y_true: np.ndarray, y_pred: np.ndarray):
  """_JointCounter.count's result by sorting: for very large or many ids."""
  gt_ids, gt_index = np.unique(y_true, return_inverse=True)
  pred_ids, pred_index = np.unique(y_pred, return_inverse=True)
  keys, counts = np.unique(gt_index.reshape(-1) * len(pred_ids) + pred_index.reshape(-1),
                           return_counts=True)
  return (gt_ids, pred_ids, keys // len(pred_ids), keys % len(pred_ids),
          counts.astype(np.int64))


def _sum_by(index: np.ndarray, counts: np.ndarray, length: int) -> np.ndarray:
  """int64 [length]: `counts` summed by `index` (exact: float64 holds 2**53)."""
  return np.bincount(index, weights=counts, minlength=length).astype(np.int64)


def _as_ids(values: np.ndarray, name: str) -> np.ndarray:
  """Flat int64 panoptic ids; negative ids are refused."""
  values = values.reshape(-1)
  if values.dtype.kind != 'u' and values.size and values.min() < 0:
    raise ValueError(f'{name} holds negative panoptic ids (minimum {values.min()}).')
  return values.astype(np.int64, copy=False)


def _drop_empty(keys: np.ndarray, counts: np.ndarray):
  """A (keys, counts) histogram without the zero counts."""
  kept = counts > 0
  return keys[kept], counts[kept].astype(np.int64)


class _SequenceState:
  """Accumulated statistics of one sequence."""

  def __init__(self, confusion_size: int):
    empty = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
    self.confusion = np.zeros((confusion_size, confusion_size), dtype=np.int64)
    self.gt_areas = empty
    self.pred_areas = empty
    self.intersections = empty
    self.length = 0
    self.crowd_track_id: Optional[int] = None  # vipseg_first_segment_crowd only.

  def merge(self, other: '_SequenceState') -> None:
    self.confusion += other.confusion
    self.gt_areas = _merge_histograms(self.gt_areas, other.gt_areas)
    self.pred_areas = _merge_histograms(self.pred_areas, other.pred_areas)
    self.intersections = _merge_histograms(self.intersections, other.intersections)
    self.length += other.length
    if self.crowd_track_id is None:
      self.crowd_track_id = other.crowd_track_id


class STQuality:
  """Streaming STQ over any number of sequences.

  Example:
    metric = STQuality(num_classes=19, thing_class_ids=[11, 13], ignore_label=255,
                       label_divisor=1000, offset=256 * 256 * 256)
    for sequence_id, gt, pred in frames:
      metric.update_state(gt, pred, sequence_id)
    scores = metric.result()
  """

  def __init__(self, num_classes: int, thing_class_ids: Sequence[int],
               ignore_label: int, label_divisor: int, offset: int, *,
               vipseg_first_segment_crowd: bool = False):
    """Creates the metric.

    Args:
      num_classes: number of semantic classes (ignore label excluded).
      thing_class_ids: semantic classes that are things.
      ignore_label: ground-truth semantic label that is ignored (e.g. 255).
      label_divisor: panoptic encoding `semantic * label_divisor + instance`.
      offset: key multiplier for (gt id, pred id) pairs; must be larger than every
        thing panoptic id, i.e. >= num_classes * label_divisor.
      vipseg_first_segment_crowd: VIPSeg parity. VIPSeg's official STQ script
        renumbers segments per video in first-appearance order from 0, so the
        first segment of a video gets instance 0 and, if it is a thing, is
        dropped as crowd. With this option the ground-truth segment with the
        smallest panoptic id (ignore label excluded) in the first frame of each
        sequence plays that segment: if it is a thing track, its pixels are
        treated as crowd in every frame of the sequence. Encode ground-truth ids
        in VIPSeg's first-appearance order for exact parity.

    Raises:
      ValueError: inconsistent arguments.
    """
    metric_checks.check_panoptic_arguments(num_classes, thing_class_ids, label_divisor)
    if offset < num_classes * label_divisor:
      raise ValueError(f'offset must be >= num_classes * label_divisor = '
                       f'{num_classes * label_divisor}; received {offset}.')
    self._num_classes = int(num_classes)
    self._thing_class_ids = np.asarray(sorted(set(thing_class_ids)), dtype=np.int64)
    self._ignore_label = int(ignore_label)
    self._label_divisor = int(label_divisor)
    self._offset = int(offset)
    self._vipseg_first_segment_crowd = bool(vipseg_first_segment_crowd)
    if ignore_label >= num_classes:
      # Extra row/column `num_classes` collects the ignore label.
      self._confusion_size = num_classes + 1
      self._include_rows = np.arange(num_classes)
    else:
      self._confusion_size = num_classes
      self._include_rows = np.array([c for c in range(num_classes) if c != ignore_label],
                                    dtype=np.int64)
    # Semantic value -> confusion index; anything else is rejected.
    self._is_thing_lut = np.zeros(self._confusion_size, dtype=bool)
    self._is_thing_lut[self._thing_class_ids] = True
    self._sequences: 'collections.OrderedDict[Hashable, _SequenceState]' = (
        collections.OrderedDict())
    self._joint = _JointCounter()

  def reset_states(self) -> None:
    """Forgets every accumulated sequence."""
    self._sequences = collections.OrderedDict()

  def _semantic_index(self, semantic: np.ndarray, name: str) -> np.ndarray:
    """Maps semantic labels to confusion indices; ignore -> num_classes if outside."""
    if self._ignore_label >= self._num_classes:
      semantic = np.where(semantic == self._ignore_label, self._num_classes, semantic)
    if semantic.size and (semantic.min() < 0 or semantic.max() >= self._confusion_size):
      raise ValueError(f'{name} holds semantic classes outside [0, '
                       f'{self._num_classes}) and not the ignore label '
                       f'{self._ignore_label}: received range [{semantic.min()}, '
                       f'{semantic.max()}].')
    return semantic

  def _check_new_ids(self, new_gt: np.ndarray, new_pred: np.ndarray) -> None:
    self._semantic_index(new_gt // self._label_divisor, 'y_true')
    self._semantic_index(new_pred // self._label_divisor, 'y_pred')

  def update_state(self, y_true: np.ndarray, y_pred: np.ndarray,
                   sequence_id: Hashable = 0) -> None:
    """Accumulates one frame [H, W] or several frames [T, H, W] of a sequence.

    Args:
      y_true: int ground-truth panoptic map(s), `semantic * label_divisor +
        instance`.
      y_pred: int predicted panoptic map(s), same shape.
      sequence_id: any hashable; frames with the same id form one sequence.

    Raises:
      ValueError: shapes differ or are not 2-D/3-D, or classes are out of range.
    """
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    if y_true.shape != y_pred.shape or y_true.ndim not in (2, 3):
      raise ValueError(f'y_true and y_pred must both be [H, W] or [T, H, W]; '
                       f'received {y_true.shape} and {y_pred.shape}.')
    num_frames = 1 if y_true.ndim == 2 else y_true.shape[0]
    y_true = _as_ids(y_true, 'y_true')
    y_pred = _as_ids(y_pred, 'y_pred')
    gt_ids, pred_ids, pair_gt, pair_pred, count = self._joint.count(
        y_true, y_pred, self._check_new_ids)
    semantic_true = self._semantic_index(gt_ids // self._label_divisor, 'y_true')
    semantic_pred = self._semantic_index(pred_ids // self._label_divisor, 'y_pred')

    state = self._sequences.get(sequence_id)
    if state is None:
      state = _SequenceState(self._confusion_size)
      self._sequences[sequence_id] = state
      if self._vipseg_first_segment_crowd:
        first_frame = np.unique(y_true[:y_true.size // num_frames])
        valid = first_frame[first_frame // self._label_divisor != self._ignore_label]
        state.crowd_track_id = int(valid.min()) if valid.size else -1
    state.length += num_frames

    # Every statistic below is a sum over the (gt id, predicted id, pixel count)
    # triples: after the joint count no work is per pixel.
    size = self._confusion_size
    state.confusion += _sum_by(semantic_true[pair_gt] * size + semantic_pred[pair_pred],
                               count, size * size).reshape(size, size)

    gt_thing = self._is_thing_lut[semantic_true]
    is_crowd = gt_thing & (gt_ids % self._label_divisor == 0)
    if state.crowd_track_id is not None and state.crowd_track_id >= 0:
      is_crowd |= gt_thing & (gt_ids == state.crowd_track_id)
    gt_track = gt_thing & ~is_crowd
    pred_thing = self._is_thing_lut[semantic_pred]
    # Predicted areas count every pixel whose GT is not crowd, wherever the GT is.
    counted = ~is_crowd[pair_gt] & pred_thing[pair_pred]
    pred_area = _sum_by(pair_pred[counted], count[counted], len(pred_ids))
    gt_area = _sum_by(pair_gt, count, len(gt_ids))
    both = gt_track[pair_gt] & pred_thing[pair_pred]
    state.gt_areas = _merge_histograms(
        state.gt_areas, _drop_empty(gt_ids[gt_track], gt_area[gt_track]))
    state.pred_areas = _merge_histograms(
        state.pred_areas, _drop_empty(pred_ids[pred_thing], pred_area[pred_thing]))
    state.intersections = _merge_histograms(state.intersections, (
        gt_ids[pair_gt[both]] * self._offset + pred_ids[pair_pred[both]], count[both]))

  def merge_state(self, others: Iterable['STQuality']) -> None:
    """Adds the states of other STQuality objects (e.g. from parallel workers).

    Sequences with the same id are summed, so one sequence may be split across
    workers by frames (with `vipseg_first_segment_crowd`, only the worker that saw
    the sequence's first frame knows the crowd segment: split by sequence then).

    Args:
      others: STQuality objects built with the same arguments.
    """
    if isinstance(others, STQuality):
      others = [others]
    for other in others:
      if (other._num_classes, other._label_divisor, other._offset,
          other._ignore_label) != (self._num_classes, self._label_divisor,
                                   self._offset, self._ignore_label) or not (
                                       np.array_equal(other._thing_class_ids,
                                                      self._thing_class_ids)):
        raise ValueError('merge_state needs STQuality objects with the same '
                         'num_classes, thing_class_ids, ignore_label, label_divisor '
                         'and offset.')
      for sequence_id, theirs in other._sequences.items():
        mine = self._sequences.get(sequence_id)
        if mine is None:
          mine = _SequenceState(self._confusion_size)
          self._sequences[sequence_id] = mine
        mine.merge(theirs)

  def _mean_iou(self, confusion: np.ndarray) -> float:
    kept = np.zeros_like(confusion)
    kept[self._include_rows] = confusion[self._include_rows]
    intersections = np.diag(kept).astype(np.float64)
    unions = kept.sum(axis=0) + kept.sum(axis=1) - intersections
    num_present = np.count_nonzero(unions)
    if num_present == 0:
      return 0.0
    return float(np.sum(intersections / np.maximum(unions, _EPSILON)) / num_present)

  def _association_terms(self, state: _SequenceState) -> np.ndarray:
    """float64 [num gt tracks]: each track's AQ term, in `gt_areas` key order."""
    keys, tpa = state.intersections
    num_tracks = len(state.gt_areas[0])
    if not keys.size:
      return np.zeros(num_tracks, dtype=np.float64)
    gt_ids = keys // self._offset
    pred_ids = keys % self._offset
    gt_area = _lookup(state.gt_areas, gt_ids).astype(np.float64)
    pred_area = _lookup(state.pred_areas, pred_ids).astype(np.float64)
    tpa = tpa.astype(np.float64)
    return np.bincount(np.searchsorted(state.gt_areas[0], gt_ids),
                       weights=tpa * tpa / (gt_area + pred_area - tpa) / gt_area,
                       minlength=num_tracks).astype(np.float64)

  def _association_sum(self, state: _SequenceState) -> float:
    return float(np.sum(self._association_terms(state)))

  def association_per_track(self) -> Dict[Hashable, Dict[int, float]]:
    """Each ground-truth track's association quality, per sequence.

    AQ(g) = 1/|g| * sum over predicted ids p of TPA(p, g) * IoU_id(p, g), the
    per-track term of docs/evaluation.md; `result()['AQ']` is the mean of these over
    every track of every sequence. For diagnostics: which tracks lose their id.

    Returns:
      {sequence id: {ground-truth panoptic id (semantic * label_divisor +
      instance): AQ(g)}}, sequences in first-seen order.
    """
    return {
        sequence_id: dict(zip(state.gt_areas[0].tolist(),
                              self._association_terms(state).tolist()))
        for sequence_id, state in self._sequences.items()}

  def result(self) -> Dict[str, Any]:
    """Computes STQ over every sequence seen so far.

    Returns:
      dict with
        'STQ', 'AQ', 'IoU': floats over all sequences (AQ track-weighted, IoU from
          the summed confusion matrix);
        'STQ_per_seq', 'AQ_per_seq', 'IoU_per_seq': float64 arrays [S];
        'ID_per_seq': list [S] of sequence ids, first-seen order;
        'Length_per_seq': list [S] of frame counts.
    """
    states = list(self._sequences.values())
    num_tracks = np.array([len(s.gt_areas[0]) for s in states], dtype=np.float64)
    aq_sums = np.array([self._association_sum(s) for s in states], dtype=np.float64)
    iou_per_seq = np.array([self._mean_iou(s.confusion) for s in states],
                           dtype=np.float64)
    total_confusion = np.zeros((self._confusion_size, self._confusion_size),
                               dtype=np.int64)
    for s in states:
      total_confusion += s.confusion
    aq = float(np.sum(aq_sums) / max(np.sum(num_tracks), _EPSILON))
    iou = self._mean_iou(total_confusion)
    aq_per_seq = aq_sums / np.maximum(num_tracks, _EPSILON)
    return {
        'STQ': float(np.sqrt(aq * iou)),
        'AQ': aq,
        'IoU': iou,
        'STQ_per_seq': np.sqrt(aq_per_seq * iou_per_seq),
        'AQ_per_seq': aq_per_seq,
        'IoU_per_seq': iou_per_seq,
        'ID_per_seq': list(self._sequences.keys()),
        'Length_per_seq': [s.length for s in states],
    }
