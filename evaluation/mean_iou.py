"""Mean IoU of semantic segmentation (VSPW protocol), numpy, streaming.

Miao et al., "VSPW: A Large-scale Dataset for Video Scene Parsing in the Wild"
(CVPR 2021), Sec. 5; definition as fixed in docs/evaluation.md and docs/stq.md:
one confusion matrix over all frames; only ground-truth values in
[0, num_classes) count; IoU_c = |g ∩ p| / |g ∪ p|; mIoU = mean over the classes
present in the ground truth. Predictions outside [0, num_classes) land in one
extra "other" column (wrong everywhere, never a class of the mean).

VSPW remap option (`vspw_remap=True`): raw VSPW masks hold 0 = "others",
1..124 = classes, 255 = void; the data set README maps 0 -> 255 and then
subtracts 1, so classes become 0..123 and both 0 and 255 become 254 (dropped).
It applies to the ground truth only; predictions are expected in 0..123.
"""

from typing import Any, Dict, Iterable, Optional

import numpy as np


def vspw_remap(mask: np.ndarray) -> np.ndarray:
  """Raw VSPW mask (0 others, 1..124, 255 void) -> 0..123, 254 for void."""
  mask = np.asarray(mask).astype(np.int64)
  return np.where(mask == 0, 255, mask) - 1


class MeanIoU:
  """Streaming mIoU over frames.

  Example:
    metric = MeanIoU(num_classes=124, vspw_remap=True)
    metric.update_state(raw_gt_mask, pred_classes)
    metric.result()['mIoU']
  """

  def __init__(self, num_classes: int, *, label_divisor: Optional[int] = None,
               vspw_remap: bool = False, classes_in_mean: str = 'gt_present'):
    """Creates the metric.

    Args:
      num_classes: classes counted (GT values outside [0, num_classes) dropped).
      label_divisor: when given, inputs are panoptic ids and the class is
        `id // label_divisor` (lets one driver feed panoptic maps to every
        metric); None = inputs are class maps.
      vspw_remap: apply `vspw_remap` to the ground truth (raw VSPW masks).
      classes_in_mean: 'gt_present' (docs/evaluation.md: classes present in the GT) or
        'union_nonzero' (also classes only predicted, IoU 0; the nanmean of
        per-class IoU some scripts report).

    Raises:
      ValueError: bad arguments.
    """
    if num_classes < 1:
      raise ValueError(f'num_classes must be >= 1; received {num_classes}.')
    if classes_in_mean not in ('gt_present', 'union_nonzero'):
      raise ValueError(f'classes_in_mean must be "gt_present" or "union_nonzero"; '
                       f'received "{classes_in_mean}".')
    self.num_classes = int(num_classes)
    self.label_divisor = label_divisor
    self.vspw_remap = bool(vspw_remap)
    self.classes_in_mean = classes_in_mean
    self._confusion = np.zeros((num_classes, num_classes + 1), np.int64)

  def reset_states(self) -> None:
    self._confusion[:] = 0

  def update_state(self, y_true: np.ndarray, y_pred: np.ndarray, sequence_id: Any = None
                   ) -> None:
    """Adds frames ([H, W] or [T, H, W] of any shape, equal for both).

    Args:
      y_true: int ground-truth classes (or panoptic ids with `label_divisor`).
      y_pred: int predicted classes (or panoptic ids), same shape.
      sequence_id: unused (the common metric interface).
    """
    del sequence_id
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape:
      raise ValueError(f'y_true and y_pred shapes differ: {y_true.shape} vs {y_pred.shape}.')
    gt = y_true.reshape(-1).astype(np.int64)
    pred = y_pred.reshape(-1).astype(np.int64)
    if self.label_divisor:
      gt, pred = gt // self.label_divisor, pred // self.label_divisor
    if self.vspw_remap:
      gt = vspw_remap(gt)
    valid = (gt >= 0) & (gt < self.num_classes)
    pred = np.where((pred >= 0) & (pred < self.num_classes), pred, self.num_classes)
    size = self.num_classes + 1
    self._confusion += np.bincount(gt[valid] * size + pred[valid],
                                   minlength=self.num_classes * size).reshape(-1, size)

  def merge_state(self, others: Iterable['MeanIoU']) -> None:
    if isinstance(others, MeanIoU):
      others = [others]
    for other in others:
      if other._confusion.shape != self._confusion.shape:
        raise ValueError(f'merge_state needs the same num_classes; received '
                         f'{other.num_classes} vs {self.num_classes}.')
      self._confusion += other._confusion

  def result(self) -> Dict[str, Any]:
    """mIoU so far.

    Returns:
      dict with 'mIoU' (fraction; NaN if no GT pixel counted), 'IoU_per_class'
      float64 [C] (NaN for classes outside the mean) and 'confusion' int64
      [C, C + 1] (rows GT, columns prediction, last column = other).
    """
    confusion = self._confusion
    intersection = np.diag(confusion[:, :self.num_classes]).astype(np.float64)
    gt_area = confusion.sum(axis=1)
    pred_area = confusion[:, :self.num_classes].sum(axis=0)
    union = gt_area + pred_area - intersection
    if self.classes_in_mean == 'gt_present':
      counted = gt_area > 0
    else:
      counted = union > 0
    iou = np.where(counted, intersection / np.maximum(union, 1), np.nan)
    return {'mIoU': float(np.nanmean(iou)) if counted.any() else float('nan'),
            'IoU_per_class': iou, 'confusion': confusion.copy()}
