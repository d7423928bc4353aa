"""Host-side video evaluation: clip predictions -> association -> metrics (STQ, VPQ, ...).

The model and post-processor run per clip (in a tf.function or an exported
SavedModel); this module receives each clip's post-processed prediction in
sequence order, runs the stateful cross-clip associater (video stitching +
HiLA-MB, paper Sec. 3.2) and feeds every emitted frame, with its final video-level
ids, to the metrics. The trainer's eval mode and the SavedModel evaluator share it.
Numpy only.
"""

from typing import Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np


def jsonable(value):
  """`value` with numpy scalars as Python numbers and dict keys as strings (for JSON)."""
  if isinstance(value, dict):
    return {str(k): jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [jsonable(v) for v in value]
  if isinstance(value, np.generic):
    return value.item()
  return value


class VideoScorer:
  """Scores clip-by-clip predictions of whole sequences.

  Clips of one sequence must arrive in order; a new `sequence_id` starts a new
  video (the associater is reset). Consecutive clips of a sequence overlap by the
  frames the associater expects (one for near-online T >= 2, none for T = 1);
  each frame is emitted exactly once by the associater and scored then.
  """

  def __init__(self, *, associater_fn: Callable[[], object], metric=None,
               metrics: Optional[Mapping[str, object]] = None):
    """Initialises the scorer.

    Args:
      associater_fn: Creates a fresh `VideoAssociater` (its `update_from_slots`
        takes the clip's outputs).
      metric: A streaming metric with `update_state(y_true, y_pred,
        sequence_id)` and `result()` (e.g. STQuality); `result()` returns its
        result. Optional when `metrics` is given (then its first entry).
      metrics: More named streaming metrics fed the same frames (STQ, VPQ, PQ,
        mIoU, VC ...); `results()` returns all of them by name.

    Raises:
      ValueError: neither `metric` nor `metrics` given.
    """
    if metric is None and not metrics:
      raise ValueError('VideoScorer needs a metric or a non-empty metrics mapping.')
    self._associater_fn = associater_fn
    self.metrics = dict(metrics or {})
    self.metric = metric if metric is not None else next(iter(self.metrics.values()))
    # Every distinct metric object, each updated once per frame.
    self._all_metrics = [self.metric] + [m for m in self.metrics.values()
                                         if m is not self.metric]
    self._associater = None
    self._sequence_id = None
    self.num_frames = 0
    self.num_sequences = 0
    # Association statistics of each sequence (the associater's `statistics()`).
    self.association_statistics: Dict[str, Dict[str, float]] = {}

  def add_clip(self, *, sequence_id: str, frame_ids: np.ndarray, panoptic: np.ndarray,
               segment_ids: np.ndarray, query_embeddings: np.ndarray,
               labels: Optional[np.ndarray] = None) -> List[Tuple[int, np.ndarray]]:
    """Associates one clip and scores the frames it emits.

    Args:
      sequence_id: The clip's sequence.
      frame_ids: int [T] frame index of each clip frame; -1 marks padding
        frames (after the end of a sequence), which are never scored.
      panoptic: int32 [T, H, W] clip-level panoptic prediction (thing ids are
        the same in every frame of the clip).
      segment_ids: int [N] panoptic id of each mask slot's kept segment (0 =
        none).
      query_embeddings: float [N, E] the slots' query embeddings.
      labels: Optional int32 [T, H, W] ground truth; frames are scored when given.

    Returns:
      (frame_id, panoptic [H, W] with video-level ids) for each emitted real frame.
    """
    if sequence_id != self._sequence_id:
      self._associater = self._associater_fn()
      self._sequence_id = sequence_id
      self.num_sequences += 1
    frames = self._associater.update_from_slots(panoptic, segment_ids, query_embeddings)
    emitted_ids = np.asarray(frame_ids)[len(frame_ids) - len(frames):]
    emitted = []
    for index, (frame_id, frame) in enumerate(zip(emitted_ids, frames)):
      if frame_id < 0:
        continue
      emitted.append((int(frame_id), frame))
      if labels is not None:
        clip_index = len(frame_ids) - len(frames) + index
        for metric in self._all_metrics:
          metric.update_state(labels[clip_index], frame, sequence_id)
      self.num_frames += 1
    if hasattr(self._associater, 'statistics'):
      self.association_statistics[sequence_id] = self._associater.statistics()
    return emitted

  def result(self) -> Dict[str, object]:
    return self.metric.result()

  def results(self) -> Dict[str, Dict[str, object]]:
    """{name: result()} of the `metrics` mapping."""
    return {name: metric.result() for name, metric in self.metrics.items()}
