"""Panoptic Quality (PQ) of images and the segment matching VPQ shares, numpy.

Kirillov et al., "Panoptic Segmentation" (CVPR 2019), Eq. (1); the matching rule
as fixed in docs/evaluation.md and docs/stq.md (the official panopticapi /
VPQ scripts' behaviour):

- a (ground-truth, predicted) segment pair matches iff same category, the GT is
  not crowd and `IoU = inter / (|p| + |g| - inter - |p ∩ VOID|) > 0.5`;
- TP adds its IoU to the class, FN = unmatched non-crowd GT segments, FP =
  unmatched predicted segments except those with more than half of their area
  on VOID plus same-class crowd;
- `PQ_c = sum IoU / (TP + FP / 2 + FN / 2)`, PQ = mean over classes with
  TP + FP + FN > 0 (also things-only and stuff-only).

Encoding: `panoptic = semantic * label_divisor + instance`. Ground-truth pixels
whose semantic class is `ignore_label` are VOID; a thing pixel with instance 0 is
crowd. Predicted pixels of class `ignore_label` are unlabelled (no segment).

Everything is a histogram of (gt id, pred id) pairs: one `np.bincount` on
combined dense keys per frame, `np.unique` on the short pair lists after that.
No Python loop touches pixels or segments.
"""

from typing import Any, Dict, Iterable, Sequence, Tuple

import numpy as np

from deeplab2_vkmax.evaluation import metric_checks

# Key multiplier of (gt id, pred id) pairs; panoptic ids must stay below it.
PAIR_OFFSET = 2 ** 32
# Above this id value the per-frame compaction sorts (np.unique) instead of bincount.
_DENSE_ID_LIMIT = 1 << 24

# Rows of the per-class statistics array [4, num_classes].
TP, FP, FN, IOU = 0, 1, 2, 3

Histogram = Tuple[np.ndarray, np.ndarray]  # (sorted int64 keys, int64 counts)


def _compact(values: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
  """(sorted distinct values, index of each value in them) of a non-negative int64 array."""
  top = int(values.max())
  if top < _DENSE_ID_LIMIT:
    present = np.bincount(values, minlength=top + 1) > 0
    lut = np.cumsum(present) - 1
    return np.flatnonzero(present), lut[values]
  ids, inverse = np.unique(values, return_inverse=True)
  return ids, inverse.reshape(-1)


def pair_histogram(y_true: np.ndarray, y_pred: np.ndarray) -> Histogram:
  """Histogram of (gt id, pred id) pairs of one frame.

  Args:
    y_true: int [H, W] (any shape) ground-truth panoptic ids, >= 0.
    y_pred: int, same shape, predicted panoptic ids, >= 0.

  Returns:
    (keys, counts): sorted int64 keys `gt * PAIR_OFFSET + pred` of the pairs that
    occur and their pixel counts.

  Raises:
    ValueError: shapes differ, or an id is negative or >= PAIR_OFFSET.
  """
  y_true = np.asarray(y_true).reshape(-1).astype(np.int64, copy=False)
  y_pred = np.asarray(y_pred).reshape(-1).astype(np.int64, copy=False)
  if y_true.shape != y_pred.shape:
    raise ValueError(f'y_true and y_pred differ in size: {y_true.size} vs {y_pred.size}.')
  if not y_true.size:
    return np.zeros(0, np.int64), np.zeros(0, np.int64)
  for name, values in (('y_true', y_true), ('y_pred', y_pred)):
    low, high = int(values.min()), int(values.max())
    if low < 0 or high >= PAIR_OFFSET:
      raise ValueError(f'{name} panoptic ids must be in [0, 2^32); received range '
                       f'[{low}, {high}].')
  gt_ids, gt_index = _compact(y_true)
  pred_ids, pred_index = _compact(y_pred)
  num_pred = len(pred_ids)
  counts = np.bincount(gt_index * num_pred + pred_index,
                       minlength=len(gt_ids) * num_pred)
  nonzero = np.flatnonzero(counts)
  keys = gt_ids[nonzero // num_pred] * PAIR_OFFSET + pred_ids[nonzero % num_pred]
  return keys, counts[nonzero].astype(np.int64)


def merge_histograms(histograms: Sequence[Histogram]) -> Histogram:
  """Sum of (keys, counts) histograms."""
  if len(histograms) == 1:
    return histograms[0]
  keys = np.concatenate([h[0] for h in histograms])
  counts = np.concatenate([h[1] for h in histograms])
  merged, inverse = np.unique(keys, return_inverse=True)
  return merged, np.bincount(inverse.reshape(-1), weights=counts,
                             minlength=len(merged)).astype(np.int64)


class SegmentMatcher:
  """Per-class TP / FP / FN / IoU sums of one image or one window of frames."""

  def __init__(self, num_classes: int, thing_class_ids: Sequence[int], ignore_label: int,
               label_divisor: int):
    """Creates the matcher.

    Args:
      num_classes: semantic classes (ignore label excluded).
      thing_class_ids: semantic classes that are things (instance 0 = crowd).
      ignore_label: semantic class of VOID pixels, outside [0, num_classes).
      label_divisor: panoptic encoding `semantic * label_divisor + instance`.

    Raises:
      ValueError: inconsistent arguments.
    """
    metric_checks.check_panoptic_arguments(num_classes, thing_class_ids, label_divisor)
    if 0 <= ignore_label < num_classes:
      raise ValueError(f'ignore_label must be outside [0, {num_classes}); received '
                       f'{ignore_label}.')
    self.num_classes = int(num_classes)
    self.thing_class_ids = tuple(sorted(set(int(c) for c in thing_class_ids)))
    self.ignore_label = int(ignore_label)
    self.label_divisor = int(label_divisor)
    self.is_thing = np.zeros(self.num_classes, bool)
    self.is_thing[list(self.thing_class_ids)] = True

  def _semantic(self, ids: np.ndarray, name: str) -> Tuple[np.ndarray, np.ndarray]:
    """(semantic class with VOID -> 0, is VOID) of panoptic ids."""
    semantic = ids // self.label_divisor
    void = semantic == self.ignore_label
    bad = ~void & ((semantic < 0) | (semantic >= self.num_classes))
    if bad.any():
      raise ValueError(f'{name} holds semantic classes {np.unique(semantic[bad])[:5].tolist()} '
                       f'outside [0, {self.num_classes}) and not the ignore label '
                       f'{self.ignore_label}.')
    return np.where(void, 0, semantic), void

  def match(self, histogram: Histogram) -> np.ndarray:
    """Matches the segments of one (gt id, pred id) histogram.

    Args:
      histogram: from `pair_histogram` (one image) or `merge_histograms` (a
        window: a tube is all pixels of one id in the window).

    Returns:
      float64 [4, num_classes]: rows TP, FP, FN (counts) and IOU (sum of the TP
      IoUs), indexed by the constants of this module.
    """
    keys, counts = histogram
    stats = np.zeros((4, self.num_classes), np.float64)
    if not keys.size:
      return stats
    gt, pred = keys // PAIR_OFFSET, keys % PAIR_OFFSET
    gt_ids, gt_index = np.unique(gt, return_inverse=True)
    pred_ids, pred_index = np.unique(pred, return_inverse=True)
    gt_index, pred_index = gt_index.reshape(-1), pred_index.reshape(-1)
    gt_class, gt_void = self._semantic(gt, 'y_true')
    pred_class, pred_void = self._semantic(pred, 'y_pred')
    gt_crowd = ~gt_void & self.is_thing[gt_class] & (gt % self.label_divisor == 0)
    counts_f = counts.astype(np.float64)

    gt_area = np.bincount(gt_index, weights=counts_f, minlength=len(gt_ids))
    pred_area = np.bincount(pred_index, weights=counts_f, minlength=len(pred_ids))
    pred_on_void = np.bincount(pred_index, weights=counts_f * gt_void, minlength=len(pred_ids))
    pred_on_crowd = np.bincount(
        pred_index, weights=counts_f * (gt_crowd & (gt_class == pred_class)),
        minlength=len(pred_ids))

    candidate = ~gt_void & ~gt_crowd & ~pred_void & (gt_class == pred_class)
    union = (pred_area[pred_index] + gt_area[gt_index] - counts_f
             - pred_on_void[pred_index])
    iou = np.divide(counts_f, union, out=np.zeros_like(counts_f), where=candidate)
    # IoU > 0.5 makes matches unique: no assignment problem to solve.
    matched = candidate & (iou > 0.5)
    stats[TP] = np.bincount(gt_class[matched], minlength=self.num_classes)
    stats[IOU] = np.bincount(gt_class[matched], weights=iou[matched],
                             minlength=self.num_classes)

    gt_matched = np.zeros(len(gt_ids), bool)
    gt_matched[gt_index[matched]] = True
    segment_class, segment_void = self._semantic(gt_ids, 'y_true')
    segment_crowd = (~segment_void & self.is_thing[segment_class]
                     & (gt_ids % self.label_divisor == 0))
    missed = ~segment_void & ~segment_crowd & ~gt_matched
    stats[FN] = np.bincount(segment_class[missed], minlength=self.num_classes)

    pred_matched = np.zeros(len(pred_ids), bool)
    pred_matched[pred_index[matched]] = True
    segment_class, segment_void = self._semantic(pred_ids, 'y_pred')
    # Predicted segments mostly on VOID (or on same-class crowd) are not penalised.
    ignored = (pred_on_void + pred_on_crowd) > 0.5 * pred_area
    false = ~segment_void & ~pred_matched & ~ignored
    stats[FP] = np.bincount(segment_class[false], minlength=self.num_classes)
    return stats

  def summarise(self, stats: np.ndarray) -> Dict[str, Any]:
    """PQ, SQ, RQ (all, things, stuff) and per-class PQ of [4, C] statistics.

    Returns:
      dict with 'PQ', 'SQ', 'RQ', 'PQ_thing', 'PQ_stuff', 'SQ_thing', 'SQ_stuff',
      'RQ_thing', 'RQ_stuff' (fractions; NaN when no class of the subset occurs),
      'PQ_per_class' float64 [C] (NaN for classes with TP + FP + FN = 0) and
      'num_classes_present'.
    """
    tp, fp, fn, iou = stats
    present = (tp + fp + fn) > 0
    denominator = tp + 0.5 * fp + 0.5 * fn
    pq = np.divide(iou, denominator, out=np.zeros_like(iou), where=present)
    sq = np.divide(iou, tp, out=np.zeros_like(iou), where=tp > 0)
    rq = np.divide(tp, denominator, out=np.zeros_like(iou), where=present)
    out: Dict[str, Any] = {}
    for suffix, subset in (('', present), ('_thing', present & self.is_thing),
                           ('_stuff', present & ~self.is_thing)):
      count = np.count_nonzero(subset)
      for name, values in (('PQ', pq), ('SQ', sq), ('RQ', rq)):
        out[name + suffix] = float(values[subset].sum() / count) if count else float('nan')
    out['PQ_per_class'] = np.where(present, pq, np.nan)
    out['num_classes_present'] = int(np.count_nonzero(present))
    return out

  def same_protocol(self, other: 'SegmentMatcher') -> bool:
    return ((self.num_classes, self.thing_class_ids, self.ignore_label, self.label_divisor)
            == (other.num_classes, other.thing_class_ids, other.ignore_label,
                other.label_divisor))


def frames_of(y_true: np.ndarray, y_pred: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
  """Both maps as [T, H, W] (a single [H, W] frame gets T = 1).

  Raises:
    ValueError: shapes differ or are not 2-D / 3-D.
  """
  y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
  if y_true.shape != y_pred.shape or y_true.ndim not in (2, 3):
    raise ValueError(f'y_true and y_pred must both be [H, W] or [T, H, W]; received '
                     f'{y_true.shape} and {y_pred.shape}.')
  if y_true.ndim == 2:
    return y_true[np.newaxis], y_pred[np.newaxis]
  return y_true, y_pred


class PanopticQuality:
  """Streaming image PQ (the n = 1 rule of VPQ on each image).

  Example:
    metric = PanopticQuality(num_classes=19, thing_class_ids=[11, 13], ignore_label=255,
                             label_divisor=1000)
    metric.update_state(gt, pred)   # [H, W], or [T, H, W] = T separate images
    metric.result()['PQ']
  """

  def __init__(self, num_classes: int, thing_class_ids: Sequence[int], ignore_label: int,
               label_divisor: int):
    """Creates the metric; arguments as `SegmentMatcher`."""
    self._matcher = SegmentMatcher(num_classes, thing_class_ids, ignore_label, label_divisor)
    self._stats = np.zeros((4, num_classes), np.float64)
    self.num_images = 0

  def reset_states(self) -> None:
    self._stats[:] = 0
    self.num_images = 0

  def update_state(self, y_true: np.ndarray, y_pred: np.ndarray, sequence_id: Any = None
                   ) -> None:
    """Adds images: [H, W] or [T, H, W] (each frame one image).

    Args:
      y_true: int ground-truth panoptic map(s).
      y_pred: int predicted panoptic map(s), same shape.
      sequence_id: unused (the common metric interface).
    """
    del sequence_id
    y_true, y_pred = frames_of(y_true, y_pred)
    for gt, pred in zip(y_true, y_pred):
      self._stats += self._matcher.match(pair_histogram(gt, pred))
      self.num_images += 1

  def merge_state(self, others: Iterable['PanopticQuality']) -> None:
    """Adds the statistics of other PanopticQuality objects (same arguments)."""
    if isinstance(others, PanopticQuality):
      others = [others]
    for other in others:
      if not self._matcher.same_protocol(other._matcher):
        raise ValueError('merge_state needs PanopticQuality objects with the same '
                         'num_classes, thing_class_ids, ignore_label and label_divisor.')
      self._stats += other._stats
      self.num_images += other.num_images

  def result(self) -> Dict[str, Any]:
    """PQ over all images.

    Returns:
      dict of `SegmentMatcher.summarise` ('PQ', 'SQ', 'RQ', thing / stuff
      variants, 'PQ_per_class', 'num_classes_present') plus 'TP', 'FP', 'FN'
      int64 [C] and 'num_images'.
    """
    out = self._matcher.summarise(self._stats)
    out['TP'], out['FP'], out['FN'] = (self._stats[row].astype(np.int64)
                                       for row in (TP, FP, FN))
    out['num_images'] = self.num_images
    return out
