"""naive-MB: an appearance-only memory buffer (paper Sec. 3.2, "Discussion").

The baseline the paper calls naive Memory Buffer: IDOL-style memory of object
appearance only. Encoding follows Eq. (3):

  q_hat_i = (1 - lam) q_hat_i_prev + lam q_i   if i is in memory and observed,
  q_hat_i = q_i                                if i is new,
  q_hat_i = q_hat_i_prev                       if i is only in memory.

Decoding similarity is `cos(q_i, q_hat_j)` (Eq. (5) without the location term).

Time unit: one *step* is one `VideoAssociater.update` call, i.e. one clip. An object
last observed at step s stays in memory up to and including step s + tau and is
dropped at step s + tau + 1 ("more than tau clips ago"). With the paper's
protocols (T = 1, or T = 2 with a one-frame overlap) every step brings exactly one
new frame, so tau clips = tau frames.

`HiLAMemoryBuffer` (hila_memory_buffer.py) extends this class with the location
feature of Eq. (4).
"""

from typing import Optional

import numpy as np

from deeplab2_vkmax.association import matching


class NaiveMemoryBuffer:
  """Appearance memory of the tracks seen in the last `tau` steps.

  Rows are kept in insertion order, which makes decoding deterministic. All arrays are views of the live state; do not modify them.

  Attributes:
    track_ids: int64 [M], video-global track id per memory row.
    classes: int64 [M], semantic class at the last observation.
    embeddings: float64 [M, D], q_hat (Eq. (3)).
    last_seen_step: int64 [M], step of the last observation.
  """

  uses_location = False

  def __init__(self, *, lam: float = 0.8, tau: int = 10):
    """Creates an empty buffer.

    Args:
      lam: EMA weight of the *new* appearance feature in Eq. (3), in [0, 1].
      tau: memory horizon in steps (clips); rows not observed for more than `tau`
        steps are dropped by `refresh`.
    """
    if not 0.0 <= lam <= 1.0:
      raise ValueError(f'lam must be in [0, 1]; received {lam}.')
    if tau < 0:
      raise ValueError(f'tau must be >= 0 steps; received {tau}.')
    self.lam = float(lam)
    self.tau = int(tau)
    self.reset()

  def reset(self) -> None:
    """Empties the buffer (call at the start of every video)."""
    self.track_ids = np.zeros(0, dtype=np.int64)
    self.classes = np.zeros(0, dtype=np.int64)
    self.embeddings = None  # [M, D] once the dimension is known.
    self.last_seen_step = np.zeros(0, dtype=np.int64)

  def __len__(self) -> int:
    return int(self.track_ids.shape[0])

  def refresh(self, step: int) -> None:
    """Drops rows whose last observation is more than `tau` steps before `step`."""
    self._keep_rows(step - self.last_seen_step <= self.tau)

  def _keep_rows(self, keep: np.ndarray) -> None:
    self.track_ids = self.track_ids[keep]
    self.classes = self.classes[keep]
    self.last_seen_step = self.last_seen_step[keep]
    if self.embeddings is not None:
      self.embeddings = self.embeddings[keep]

  def _rows_for(self, track_ids: np.ndarray) -> np.ndarray:
    """Memory row per track id, -1 where the id is not in memory."""
    if not len(self):
      return np.full(track_ids.shape, -1, dtype=np.int64)
    order = np.argsort(self.track_ids, kind='stable')
    sorted_ids = self.track_ids[order]
    position = np.minimum(np.searchsorted(sorted_ids, track_ids), len(self) - 1)
    return np.where(sorted_ids[position] == track_ids, order[position], -1)

  def similarity(self, query_embeddings: np.ndarray,
                 query_boxes: Optional[np.ndarray],
                 query_frames: Optional[np.ndarray],
                 rows: np.ndarray) -> np.ndarray:
    """Similarity between current objects and some memory rows.

    Args:
      query_embeddings: float [N, D].
      query_boxes: float [N, 4]; unused by naive-MB.
      query_frames: int [N], video frame index of each query box; unused here.
      rows: int [M], memory rows to compare against.

    Returns:
      float64 [N, M], `cos(q_i, q_hat_j)`.
    """
    del query_boxes, query_frames  # Appearance only.
    return matching.appearance_similarity(query_embeddings, self.embeddings[rows])

  def encode(self, *, step: int, track_ids: np.ndarray, classes: np.ndarray,
             embeddings: np.ndarray, frame_indices: np.ndarray,
             boxes: np.ndarray, present: np.ndarray) -> None:
    """Writes the objects observed in one step into memory (Eq. (3)).

    Args:
      step: the step (clip) counter of the associater.
      track_ids: int [K] video-global track ids observed in this step's new
        frames, distinct.
      classes: int [K] semantic class of each.
      embeddings: float [K, D] one appearance feature (query embedding) per object
        for the whole clip; Eq. (3) is applied once per step.
      frame_indices: int [F] video frame indices of the step's new frames.
      boxes: float [F, K, 4] normalised box per new frame (zeros where absent).
      present: bool [F, K] whether the object has pixels in that frame.
    """
    del frame_indices, boxes  # Appearance only.
    track_ids = np.asarray(track_ids, dtype=np.int64)
    embeddings = np.asarray(embeddings, dtype=np.float64)
    observed = np.asarray(present, dtype=bool).any(axis=0)
    track_ids, classes, embeddings = (track_ids[observed],
                                      np.asarray(classes)[observed],
                                      embeddings[observed])
    rows = self._rows_for(track_ids)
    self._update_appearance(step, rows, track_ids, classes, embeddings)

  def _update_appearance(self, step: int, rows: np.ndarray, track_ids: np.ndarray,
                         classes: np.ndarray, embeddings: np.ndarray) -> np.ndarray:
    """Eq. (3) for known rows, appends new rows; returns the row of every object."""
    if embeddings.ndim != 2 or embeddings.shape[0] != track_ids.shape[0]:
      raise ValueError(f'embeddings must be [K={track_ids.shape[0]}, D]; received '
                       f'shape {embeddings.shape}.')
    if not track_ids.shape[0]:
      return np.zeros(0, dtype=np.int64)
    if self.embeddings is None:
      self.embeddings = np.zeros((0, embeddings.shape[1]), dtype=np.float64)
    if embeddings.shape[1] != self.embeddings.shape[1]:
      raise ValueError(f'Embedding dimension changed: memory holds '
                       f'{self.embeddings.shape[1]}, received {embeddings.shape[1]}.')
    known = rows >= 0
    known_rows = rows[known]
    self.embeddings[known_rows] = ((1.0 - self.lam) * self.embeddings[known_rows]
                                   + self.lam * embeddings[known])
    self.classes[known_rows] = classes[known]
    self.last_seen_step[known_rows] = step
    new = ~known
    order = np.argsort(track_ids[new], kind='stable')
    new_rows = len(self) + np.arange(int(new.sum()))
    self.track_ids = np.concatenate([self.track_ids, track_ids[new][order]])
    self.classes = np.concatenate([self.classes, np.asarray(classes)[new][order]])
    self.embeddings = np.concatenate([self.embeddings, embeddings[new][order]])
    self.last_seen_step = np.concatenate(
        [self.last_seen_step, np.full(len(new_rows), step, dtype=np.int64)])
    all_rows = rows.copy()
    new_positions = np.nonzero(new)[0][order]
    all_rows[new_positions] = new_rows
    return all_rows
