"""Video Stitching: short-term association between overlapping clips.

Paper Sec. 3.2 (Decoding Phase, first level of HiLA-MB) and method.md Sec. 3:
consecutive clips of a near-online run share one frame. On that frame, the
overlap score (IoU, as DeepLab2's ViP-DeepLab stitcher, or dice, as the PyTorch
Video-kMaX release) is computed between every thing segment of the previous clip
(already carrying video-global ids) and every thing segment of the current clip
(clip-local ids), same semantic class only. Mutual-best pairs with a score above
the threshold are stitched: the current id takes the previous id.
"""

from typing import Dict, Optional, Sequence

import numpy as np

from deeplab2_vkmax.association import matching


def thing_segment_ids(panoptic: np.ndarray, label_divisor: int,
                      thing_class_ids: np.ndarray) -> np.ndarray:
  """Sorted distinct thing segment ids (thing class, instance > 0) in `panoptic`.

  Args:
    panoptic: int array of any shape, `semantic * label_divisor + instance`.
    label_divisor: the panoptic label divisor.
    thing_class_ids: int [C_things].

  Returns:
    int64 [K], ascending.
  """
  flat = np.asarray(panoptic).reshape(-1)
  max_id = int(flat.max()) if flat.size else 0
  if matching.use_lookup_table(max_id, flat.size):
    ids = np.nonzero(np.bincount(flat, minlength=1))[0]
  else:
    ids = np.unique(flat)
  ids = ids.astype(np.int64)
  is_thing = np.isin(ids // label_divisor, thing_class_ids) & (ids % label_divisor > 0)
  return ids[is_thing]


class VideoStitcher:
  """Mutual-best overlap matching on the frame two consecutive clips share."""

  def __init__(self, *, label_divisor: int, thing_class_ids: Sequence[int],
               score: str = 'iou', threshold: float = 0.0):
    """Creates a stitcher.

    Args:
      label_divisor: panoptic label divisor.
      thing_class_ids: semantic classes that are things.
      score: 'iou' (DeepLab2 ViP-DeepLab, default) or 'dice' (PyTorch release).
      threshold: a pair is stitched only if its score is strictly above this.
    """
    if score not in matching.OVERLAP_SCORES:
      raise ValueError(f'score must be one of {matching.OVERLAP_SCORES}; '
                       f'received {score!r}.')
    if threshold < 0:
      raise ValueError(f'threshold must be >= 0 (segments that do not overlap are '
                       f'never stitched); received {threshold}.')
    self.label_divisor = int(label_divisor)
    self.thing_class_ids = np.asarray(sorted(thing_class_ids), dtype=np.int64)
    self.score = score
    self.threshold = float(threshold)
    self.reset()

  def reset(self) -> None:
    """Forgets the previous clip (call at the start of every video)."""
    self._previous_index: Optional[np.ndarray] = None  # [H, W] int32
    self._previous_ids = np.zeros(0, dtype=np.int64)  # [P] panoptic ids

  @property
  def has_previous(self) -> bool:
    return self._previous_index is not None

  def remember(self, last_output_frame: np.ndarray) -> None:
    """Stores the last emitted frame [H, W] (video-global ids) of a clip."""
    frame = np.asarray(last_output_frame)
    ids = thing_segment_ids(frame, self.label_divisor, self.thing_class_ids)
    self.remember_indexed(matching.dense_segment_index(frame, ids), ids)

  def remember_indexed(self, index_map: np.ndarray, segment_ids: np.ndarray) -> None:
    """Like `remember`, from a dense index map the caller already has.

    Args:
      index_map: int [H, W], index into `segment_ids` per pixel, -1 elsewhere.
      segment_ids: int [P] video-global thing panoptic ids.
    """
    self._previous_index = np.asarray(index_map)
    self._previous_ids = np.asarray(segment_ids, dtype=np.int64)

  def match(self, shared_frame: np.ndarray) -> Dict[int, int]:
    """Stitches the current clip's ids on the shared frame to the previous ids.

    Args:
      shared_frame: int [H, W], the current clip's prediction (clip-local ids) of
        the frame it shares with the previous clip (its first frame).

    Returns:
      {current panoptic id: previous panoptic id} for every stitched pair.
    """
    frame = np.asarray(shared_frame)
    ids = thing_segment_ids(frame, self.label_divisor, self.thing_class_ids)
    rows, cols = self.match_indexed(matching.dense_segment_index(frame, ids), ids)
    return {int(ids[c]): int(self._previous_ids[r]) for r, c in zip(rows, cols)}

  def match_indexed(self, index_map: np.ndarray, segment_ids: np.ndarray):
    """Mutual-best stitching on dense index maps.

    Args:
      index_map: int [H, W], index into `segment_ids` per pixel (-1 elsewhere) of
        the current clip's first frame.
      segment_ids: int [C] clip-local thing panoptic ids.

    Returns:
      (previous, current): int64 [K] indices into the remembered ids and into
      `segment_ids` of the stitched pairs; empty before any `remember`.
    """
    empty = np.zeros(0, dtype=np.int64)
    if self._previous_index is None:
      return empty, empty
    if self._previous_index.shape != index_map.shape:
      raise ValueError(f'Shared frame shape {index_map.shape} differs from the '
                       f'previous clip\'s frame {self._previous_index.shape}.')
    segment_ids = np.asarray(segment_ids, dtype=np.int64)
    scores = matching.overlap_scores(self._previous_index, len(self._previous_ids),
                                     index_map, len(segment_ids), score=self.score)
    same_class = matching.class_agreement(self._previous_ids // self.label_divisor,
                                          segment_ids // self.label_divisor)
    scores = np.where(same_class, scores, 0.0)
    return matching.mutual_best_matches(scores, self.threshold)

  def previous_track_ids(self) -> np.ndarray:
    """int64 [P] track ids (instance part) of the remembered segments."""
    return self._previous_ids % self.label_divisor
