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

State per sequence: a confusion matrix (`np.bincount` on `gt * S + pred`) and three
sparse histograms kept as sorted (key, count) arrays (GT ids, predicted ids,
`gt * offset + pred` pairs), merged with `np.unique`. No Python loop touches pixels
or id pairs.
"""

import collections
from typing import Any, Dict, Hashable, Iterable, Optional, Sequence

import numpy as np

from deeplab2_vkmax.evaluation import metric_checks

_EPSILON = 1e-15


def _histogram(values: np.ndarray):
  """(sorted distinct values, counts) of an int64 array."""
  return np.unique(values, return_counts=True)


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
    metric = STQuality(num_classes=19, things_list=[11, 13], ignore_label=255,
                       label_divisor=1000, offset=256 * 256 * 256)
    for sequence_id, gt, pred in frames:
      metric.update_state(gt, pred, sequence_id)
    scores = metric.result()
  """

  def __init__(self, num_classes: int, things_list: Sequence[int],
               ignore_label: int, label_divisor: int, offset: int, *,
               vipseg_first_segment_crowd: bool = False):
    """Creates the metric.

    Args:
      num_classes: number of semantic classes (ignore label excluded).
      things_list: semantic classes that are things.
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
    metric_checks.check_panoptic_arguments(num_classes, things_list, label_divisor)
    if offset < num_classes * label_divisor:
      raise ValueError(f'offset must be >= num_classes * label_divisor = '
                       f'{num_classes * label_divisor}; received {offset}.')
    self._num_classes = int(num_classes)
    self._things_list = np.asarray(sorted(set(things_list)), dtype=np.int64)
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
    self._is_thing_lut[self._things_list] = True
    self._sequences: 'collections.OrderedDict[Hashable, _SequenceState]' = (
        collections.OrderedDict())

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
    y_true = y_true.reshape(-1).astype(np.int64)
    y_pred = y_pred.reshape(-1).astype(np.int64)
    semantic_true = self._semantic_index(y_true // self._label_divisor, 'y_true')
    semantic_pred = self._semantic_index(y_pred // self._label_divisor, 'y_pred')

    state = self._sequences.get(sequence_id)
    if state is None:
      state = _SequenceState(self._confusion_size)
      self._sequences[sequence_id] = state
      if self._vipseg_first_segment_crowd:
        first_frame = y_true[:y_true.size // num_frames]
        valid = first_frame[first_frame // self._label_divisor != self._ignore_label]
        state.crowd_track_id = int(valid.min()) if valid.size else -1
    state.length += num_frames

    size = self._confusion_size
    state.confusion += np.bincount(semantic_true * size + semantic_pred,
                                   minlength=size * size).reshape(size, size)

    gt_thing = self._is_thing_lut[semantic_true]
    is_crowd = gt_thing & (y_true % self._label_divisor == 0)
    if state.crowd_track_id is not None and state.crowd_track_id >= 0:
      is_crowd |= gt_thing & (y_true == state.crowd_track_id)
    gt_mask = gt_thing & ~is_crowd
    pred_mask = self._is_thing_lut[semantic_pred] & ~is_crowd
    both = gt_mask & pred_mask
    state.gt_areas = _merge_histograms(state.gt_areas, _histogram(y_true[gt_mask]))
    state.pred_areas = _merge_histograms(state.pred_areas, _histogram(y_pred[pred_mask]))
    state.intersections = _merge_histograms(
        state.intersections, _histogram(y_true[both] * self._offset + y_pred[both]))

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
                                       np.array_equal(other._things_list,
                                                      self._things_list)):
        raise ValueError('merge_state needs STQuality objects with the same '
                         'num_classes, things_list, ignore_label, label_divisor '
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
