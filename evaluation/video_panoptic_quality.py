"""Video Panoptic Quality (VPQ), numpy, streaming, memory-bounded.

Kim et al., "Video Panoptic Segmentation" (CVPR 2020), Sec. 4; Miao et al.,
"VIPSeg" (CVPR 2022), Sec. 4. Definition as fixed in
docs/evaluation.md and docs/stq.md (the official scripts' algorithm):

For each window length n (in annotated frames) and every start t = 0..T-n of
every video (stride 1), frames t..t+n-1 are stacked; a tube is all pixels of one
segment id in the window. Tubes are matched with the PQ rule of
`panoptic_quality.SegmentMatcher` (same category, GT not crowd, void-aware IoU >
0.5; FP suppressed on VOID / same-class crowd). TP / FP / FN / IoU are summed per
class over all windows of all videos, `PQ_c = sum IoU / (TP + FP/2 + FN/2)`,
`VPQ_n` = mean over classes with TP + FP + FN > 0, and

  VPQ = mean of VPQ_n over the window set,

which is a parameter and printed with the number (a window size that no
video is long enough for is left out of the mean, see `result()`), because published numbers use
different sets: 'vipseg' {1,2,4,6,8} (official VIPSeg script), 'video_kmax'
{1,2,4,6} (VIPSeg paper, Video-kMaX), 'cityscapes_vps' {1,2,3,4} (k = 0, 5, 10, 15
on the 5-frame-spaced annotations).

Streaming: a window is scored when its last frame arrives. Per sequence only the
(gt id, pred id) pair histograms of the last max(n) frames are kept (a few KiB per
frame, not the frames), so memory does not grow with the video length.
"""

import collections
from typing import Any, Deque, Dict, Hashable, Iterable, Sequence, Tuple, Union

import numpy as np

from deeplab2_vkmax.evaluation import panoptic_quality

WINDOW_PRESETS: Dict[str, Tuple[int, ...]] = {
    'vipseg': (1, 2, 4, 6, 8),
    'video_kmax': (1, 2, 4, 6),
    'cityscapes_vps': (1, 2, 3, 4),
}


def resolve_window_sizes(window_sizes: Union[str, Sequence[int]]) -> Tuple[Tuple[int, ...], str]:
  """(sorted window sizes, preset name or '') of a preset name or a list of ints.

  Raises:
    ValueError: unknown preset, or sizes that are not distinct positive ints.
  """
  if isinstance(window_sizes, str):
    if window_sizes not in WINDOW_PRESETS:
      raise ValueError(f'unknown VPQ window preset "{window_sizes}"; expected one of '
                       f'{sorted(WINDOW_PRESETS)} or a list of window sizes.')
    return WINDOW_PRESETS[window_sizes], window_sizes
  sizes = tuple(int(n) for n in window_sizes)
  if not sizes or min(sizes) < 1 or len(set(sizes)) != len(sizes):
    raise ValueError(f'window_sizes must be distinct positive ints; received {list(sizes)}.')
  sizes = tuple(sorted(sizes))
  preset = next((name for name, value in WINDOW_PRESETS.items() if value == sizes), '')
  return sizes, preset


def _window_set(sizes: Sequence[int]) -> str:
  return '{' + ','.join(str(n) for n in sizes) + '}'


class VideoPanopticQuality:
  """Streaming VPQ over any number of videos.

  Example:
    metric = VideoPanopticQuality(num_classes=124, thing_class_ids=things, ignore_label=255,
                                  label_divisor=1000, window_sizes='vipseg')
    for sequence_id, gt, pred in frames_in_order:
      metric.update_state(gt, pred, sequence_id)
    print(metric.format_result(metric.result()))
  """

  def __init__(self, num_classes: int, thing_class_ids: Sequence[int], ignore_label: int,
               label_divisor: int,
               window_sizes: Union[str, Sequence[int]] = 'video_kmax'):
    """Creates the metric.

    Args:
      num_classes: semantic classes (ignore label excluded).
      thing_class_ids: thing classes (GT instance 0 of a thing = crowd).
      ignore_label: semantic class of VOID pixels, outside [0, num_classes).
      label_divisor: panoptic encoding `semantic * label_divisor + instance`.
      window_sizes: a preset name ('vipseg', 'video_kmax', 'cityscapes_vps') or
        window lengths in frames.

    Raises:
      ValueError: inconsistent arguments.
    """
    self._matcher = panoptic_quality.SegmentMatcher(num_classes, thing_class_ids, ignore_label,
                                                    label_divisor)
    self.window_sizes, self.preset = resolve_window_sizes(window_sizes)
    self._max_window = max(self.window_sizes)
    # Per sequence: statistics [num_windows, 4, C] and the last max(n) frame histograms.
    self._stats: 'collections.OrderedDict[Hashable, np.ndarray]' = collections.OrderedDict()
    self._buffers: Dict[Hashable, Deque[panoptic_quality.Histogram]] = {}
    self._lengths: Dict[Hashable, int] = {}

  def describe(self) -> str:
    """The protocol, e.g. 'VPQ over windows {1,2,4,6} (preset video_kmax)'."""
    preset = f' (preset {self.preset})' if self.preset else ''
    return f'VPQ over windows {_window_set(self.window_sizes)}{preset}'

  def __repr__(self) -> str:
    m = self._matcher
    return (f'VideoPanopticQuality(num_classes={m.num_classes}, thing_class_ids='
            f'{list(m.thing_class_ids)}, ignore_label={m.ignore_label}, label_divisor='
            f'{m.label_divisor}, window_sizes={_window_set(self.window_sizes)})')

  def reset_states(self) -> None:
    """Forgets every accumulated video."""
    self._stats = collections.OrderedDict()
    self._buffers = {}
    self._lengths = {}

  def update_state(self, y_true: np.ndarray, y_pred: np.ndarray,
                   sequence_id: Hashable = 0) -> None:
    """Adds the next frame(s) of a video, in frame order.

    Args:
      y_true: int ground-truth panoptic [H, W] or [T, H, W].
      y_pred: int predicted panoptic, same shape, ids persistent over the video.
      sequence_id: any hashable; consecutive calls with one id extend that video.

    Raises:
      ValueError: shapes differ or are not 2-D / 3-D, or classes out of range.
    """
    y_true, y_pred = panoptic_quality.frames_of(y_true, y_pred)
    if sequence_id not in self._stats:
      self._stats[sequence_id] = np.zeros(
          (len(self.window_sizes), 4, self._matcher.num_classes), np.float64)
      self._buffers[sequence_id] = collections.deque(maxlen=self._max_window)
      self._lengths[sequence_id] = 0
    stats, buffer = self._stats[sequence_id], self._buffers[sequence_id]
    for gt, pred in zip(y_true, y_pred):
      buffer.append(panoptic_quality.pair_histogram(gt, pred))
      self._lengths[sequence_id] += 1
      frames = list(buffer)
      for index, n in enumerate(self.window_sizes):
        if len(frames) >= n:  # The window ending at this frame.
          window = panoptic_quality.merge_histograms(frames[len(frames) - n:])
          stats[index] += self._matcher.match(window)

  def merge_state(self, others: Iterable['VideoPanopticQuality']) -> None:
    """Adds other VideoPanopticQuality objects' videos (e.g. from parallel workers).

    Split work by video: a window across two workers' frames cannot be scored.

    Raises:
      ValueError: different arguments, or a video present in both.
    """
    if isinstance(others, VideoPanopticQuality):
      others = [others]
    for other in others:
      if (not self._matcher.same_protocol(other._matcher)
          or other.window_sizes != self.window_sizes):
        raise ValueError(f'merge_state needs the same protocol: {self!r} vs {other!r}.')
      for sequence_id, stats in other._stats.items():
        if sequence_id in self._stats:
          raise ValueError(f'video {sequence_id!r} is in both VPQ states; split work by '
                           'video, not by frame (windows across the split are lost).')
        self._stats[sequence_id] = stats.copy()
        self._buffers[sequence_id] = collections.deque(other._buffers[sequence_id],
                                                       maxlen=self._max_window)
        self._lengths[sequence_id] = other._lengths[sequence_id]

  def _summarise(self, stats: np.ndarray) -> Dict[str, Any]:
    per_window = [self._matcher.summarise(s) for s in stats]
    out: Dict[str, Any] = {}
    for suffix in ('', '_thing', '_stuff'):
      values = {n: s['PQ' + suffix] for n, s in zip(self.window_sizes, per_window)}
      defined = [v for v in values.values() if not np.isnan(v)]
      out['VPQ' + suffix] = float(np.mean(defined)) if defined else float('nan')
      out[f'VPQ{suffix}_per_window'] = values
    out['PQ_per_class_per_window'] = {n: s['PQ_per_class']
                                      for n, s in zip(self.window_sizes, per_window)}
    return out

  def result(self) -> Dict[str, Any]:
    """VPQ over every video seen so far.

    Returns:
      dict with
        'VPQ', 'VPQ_thing', 'VPQ_stuff': fractions in [0, 1], mean over the
          window set; a window size for which no class occurs (e.g. n longer
          than every video, or no thing class for VPQ_thing) is NaN in the
          per-window dicts and left out of the mean; NaN if nothing occurs;
        'VPQ_per_window', 'VPQ_thing_per_window', 'VPQ_stuff_per_window':
          {n: VPQ_n};
        'PQ_per_class_per_window': {n: float64 [C], NaN where absent};
        'window_sizes': the window set; 'protocol': `describe()`;
        'VPQ_per_seq': float64 [S]; 'ID_per_seq': [S] ids, first-seen order;
        'Length_per_seq': [S] frame counts.
    """
    total = np.zeros((len(self.window_sizes), 4, self._matcher.num_classes), np.float64)
    for stats in self._stats.values():
      total += stats
    out = self._summarise(total)
    out['window_sizes'] = self.window_sizes
    out['protocol'] = self.describe()
    out['VPQ_per_seq'] = np.array([self._summarise(s)['VPQ'] for s in self._stats.values()],
                                  np.float64)
    out['ID_per_seq'] = list(self._stats.keys())
    out['Length_per_seq'] = [self._lengths[s] for s in self._stats]
    return out

  def format_result(self, result: Dict[str, Any]) -> str:
    """One line: 'VPQ 0.512 over windows {1,2,4,6} (...): n=1 0.6, ...'."""
    windows = ', '.join(f'n={n} {v:.4f}' for n, v in result['VPQ_per_window'].items())
    return (f'VPQ {result["VPQ"]:.4f} (thing {result["VPQ_thing"]:.4f}, stuff '
            f'{result["VPQ_stuff"]:.4f}) {self.describe()}: {windows}')

