"""Video Stitching: short-term association between overlapping clips.

Paper Sec. 3.2 (Decoding Phase, first level of HiLA-MB) and docs/association.md:
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
from deeplab2_vkmax.protos import association_pb2
from deeplab2_vkmax.protos import fields

_DEFAULTS = fields.defaults(association_pb2.AssociationOptions)


class VideoStitcher:
  """Mutual-best overlap matching on the frame two consecutive clips share."""

  def __init__(self, *, label_divisor: int, thing_class_ids: Sequence[int],
               score: str = _DEFAULTS['stitching_score'],
               threshold: float = _DEFAULTS['stitching_threshold']):
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
    self._previous_areas = np.zeros(0, dtype=np.int64)  # [P] pixels
    self._previous_positions = np.zeros(0, dtype=np.int64)  # thing pixels set

  @property
  def has_previous(self) -> bool:
    return self._previous_index is not None

  def remember(self, last_output_frame: np.ndarray) -> None:
    """Stores the last emitted frame [H, W] (video-global ids) of a clip."""
    frame = np.asarray(last_output_frame)
    ids, positions, segment = matching.thing_pixels(frame, self.label_divisor,
                                                    self.thing_class_ids)
    self.remember_pixels(positions, segment, ids, frame.shape)

  def remember_pixels(self, positions: np.ndarray, segment: np.ndarray,
                      segment_ids: np.ndarray, frame_shape) -> None:
    """Like `remember`, from the sparse thing pixels the caller already has.

    Args:
      positions: int [P] indices into the flattened [H, W] frame.
      segment: int [P] index into `segment_ids` of each position.
      segment_ids: int [S] video-global thing panoptic ids.
      frame_shape: (H, W).
    """
    segment_ids = np.asarray(segment_ids, dtype=np.int64)
    frame_shape = tuple(int(x) for x in frame_shape)
    # A dense index map makes the next match a gather over the current clip's
    # thing pixels only. The map is reused between clips (clearing only the
    # pixels set last time): a fresh frame-sized array costs page faults.
    if self._previous_index is None or self._previous_index.shape != frame_shape:
      self._previous_index = np.full(frame_shape, -1, dtype=np.int32)
    else:
      self._previous_index.reshape(-1)[self._previous_positions] = -1
    self._previous_index.reshape(-1)[positions] = segment
    self._previous_positions = np.asarray(positions, dtype=np.int64)
    self._previous_areas = np.bincount(segment, minlength=len(segment_ids))
    self._previous_ids = segment_ids

  def match(self, shared_frame: np.ndarray) -> Dict[int, int]:
    """Stitches the current clip's ids on the shared frame to the previous ids.

    Args:
      shared_frame: int [H, W], the current clip's prediction (clip-local ids) of
        the frame it shares with the previous clip (its first frame).

    Returns:
      {current panoptic id: previous panoptic id} for every stitched pair.
    """
    frame = np.asarray(shared_frame)
    ids, positions, segment = matching.thing_pixels(frame, self.label_divisor,
                                                    self.thing_class_ids)
    rows, cols = self.match_pixels(positions, segment, ids, frame.shape)
    return {int(ids[c]): int(self._previous_ids[r]) for r, c in zip(rows, cols)}

  def match_pixels(self, positions: np.ndarray, segment: np.ndarray,
                   segment_ids: np.ndarray, frame_shape):
    """Mutual-best stitching from the sparse thing pixels of the shared frame.

    Args:
      positions: int [P] indices into the flattened [H, W] shared frame of the
        current clip's thing pixels.
      segment: int [P] index into `segment_ids` of each position.
      segment_ids: int [C] clip-local thing panoptic ids.
      frame_shape: (H, W).

    Returns:
      (previous, current): int64 [K] indices into the remembered ids and into
      `segment_ids` of the stitched pairs; empty before any `remember`.
    """
    empty = np.zeros(0, dtype=np.int64)
    if self._previous_index is None:
      return empty, empty
    if self._previous_index.shape != tuple(frame_shape):
      raise ValueError(f'Shared frame shape {tuple(frame_shape)} differs from the '
                       f'previous clip\'s frame {self._previous_index.shape}.')
    segment_ids = np.asarray(segment_ids, dtype=np.int64)
    num_previous, num_current = len(self._previous_ids), len(segment_ids)
    if not num_previous or not num_current:
      return empty, empty
    segment = np.asarray(segment, dtype=np.int64)
    previous_at = self._previous_index.reshape(-1)[positions]  # [P]
    both = previous_at >= 0
    intersection = np.bincount(
        previous_at[both].astype(np.int64) * num_current + segment[both],
        minlength=num_previous * num_current).reshape(num_previous, num_current)
    scores = matching.overlap_from_areas(
        intersection, self._previous_areas,
        np.bincount(segment, minlength=num_current), score=self.score)
    same_class = matching.class_agreement(self._previous_ids // self.label_divisor,
                                          segment_ids // self.label_divisor)
    scores = np.where(same_class, scores, 0.0)
    return matching.mutual_best_matches(scores, self.threshold)

  def previous_track_ids(self) -> np.ndarray:
    """int64 [P] track ids (instance part) of the remembered segments."""
    return self._previous_ids % self.label_divisor
