"""Video Consistency VC_n (VSPW), numpy, streaming, memory-bounded.

Miao et al., "VSPW" (CVPR 2021), Sec. 5 (temporal consistency); definition as
fixed in docs/evaluation.md and docs/stq.md, with the official script's loop:
for each video and each start i in `range(len - n)` (the official loop skips
the last window, so a video needs more than n frames), G = pixels whose GT label
is the same in all n frames i..i+n-1, P = pixels whose prediction is the same in
all n frames, `acc_i = |G ∩ P| / |G|` (NaN when G is empty);
VC_n = nanmean over all windows of all videos. Labels are compared as given (the
official script compares raw masks; no remap, void included).

Streaming: the window starting at i is scored when frame i + n arrives (that
frame is what makes i < len - n), so only the last n frames of each video are kept.
"""

import collections
from typing import Any, Deque, Dict, Hashable, Iterable, Optional, Tuple

import numpy as np


class VideoConsistency:
  """Streaming VC_n over videos (n = 8 and 16 in VSPW)."""

  def __init__(self, n: int, *, label_divisor: Optional[int] = None):
    """Creates the metric.

    Args:
      n: window length in frames (>= 1).
      label_divisor: when given, inputs are panoptic ids and the class is
        `id // label_divisor`; None = inputs are class maps.
    """
    if n < 1:
      raise ValueError(f'n must be >= 1; received {n}.')
    self.n = int(n)
    self.label_divisor = label_divisor
    # Per video: (sum of defined acc_i, number of defined acc_i, windows incl. NaN).
    self._sums: 'collections.OrderedDict[Hashable, np.ndarray]' = collections.OrderedDict()
    self._buffers: Dict[Hashable, Deque[Tuple[np.ndarray, np.ndarray]]] = {}

  def reset_states(self) -> None:
    self._sums = collections.OrderedDict()
    self._buffers = {}

  def update_state(self, y_true: np.ndarray, y_pred: np.ndarray,
                   sequence_id: Hashable = 0) -> None:
    """Adds the next frame(s) [H, W] or [T, H, W] of a video, in frame order."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape or y_true.ndim not in (2, 3):
      raise ValueError(f'y_true and y_pred must both be [H, W] or [T, H, W]; received '
                       f'{y_true.shape} and {y_pred.shape}.')
    if y_true.ndim == 2:
      y_true, y_pred = y_true[np.newaxis], y_pred[np.newaxis]
    if self.label_divisor:
      y_true, y_pred = y_true // self.label_divisor, y_pred // self.label_divisor
    if sequence_id not in self._sums:
      self._sums[sequence_id] = np.zeros(3, np.float64)
      self._buffers[sequence_id] = collections.deque(maxlen=self.n)
    buffer, sums = self._buffers[sequence_id], self._sums[sequence_id]
    for gt, pred in zip(y_true, y_pred):
      if len(buffer) == self.n:
        acc = self._window_accuracy(buffer)
        sums[2] += 1
        if not np.isnan(acc):
          sums[0] += acc
          sums[1] += 1
      buffer.append((gt, pred))

  @staticmethod
  def _window_accuracy(frames) -> float:
    first_gt, first_pred = frames[0]
    gt_same = np.ones(first_gt.shape, bool)
    pred_same = np.ones(first_pred.shape, bool)
    for gt, pred in list(frames)[1:]:
      gt_same &= gt == first_gt
      pred_same &= pred == first_pred
    consistent = np.count_nonzero(gt_same)
    return np.count_nonzero(gt_same & pred_same) / consistent if consistent else float('nan')

  def merge_state(self, others: Iterable['VideoConsistency']) -> None:
    """Adds other VideoConsistency objects' videos (split work by video)."""
    if isinstance(others, VideoConsistency):
      others = [others]
    for other in others:
      if other.n != self.n:
        raise ValueError(f'merge_state needs the same n; received {other.n} vs {self.n}.')
      for sequence_id, sums in other._sums.items():
        if sequence_id in self._sums:
          raise ValueError(f'video {sequence_id!r} is in both VC states; split work by video.')
        self._sums[sequence_id] = sums.copy()
        self._buffers[sequence_id] = collections.deque(other._buffers[sequence_id],
                                                       maxlen=self.n)

  def result(self) -> Dict[str, Any]:
    """VC_n so far.

    Returns:
      dict with f'VC{n}' (nanmean over all windows of all videos; NaN when no
      defined window), 'VC_per_seq' float64 [S], 'ID_per_seq', 'windows_per_seq'.
    """
    total = np.zeros(3, np.float64)
    for sums in self._sums.values():
      total += sums
    per_seq = np.array([s[0] / s[1] if s[1] else np.nan for s in self._sums.values()])
    return {f'VC{self.n}': float(total[0] / total[1]) if total[1] else float('nan'),
            'VC_per_seq': per_seq, 'ID_per_seq': list(self._sums.keys()),
            'windows_per_seq': [int(s[2]) for s in self._sums.values()]}
