"""naive-MB: an appearance-only memory buffer (paper Sec. 3.2, "Discussion").

The baseline the paper calls naive Memory Buffer: IDOL-style memory of object
appearance only. Encoding follows Eq. (3):

  q_hat_i = (1 - lam) q_hat_i_prev + lam q_i   if i is in memory and observed,
  q_hat_i = q_i                                if i is new,
  q_hat_i = q_hat_i_prev                       if i is only in memory.

Decoding similarity is `cos(q_i, q_hat_j)` (Eq. (5) without the location term).

Units: `tau` counts video *frames* (paper Sec. 3.2: objects "whose last appeared
frame is tau frame behind the current frame are removed"; IDOL/QDTrack-style
memories compare frame indices the same way). Each row keeps the last video frame
in which its object had pixels (`last_seen_frame`). A detection first present at
frame t (for a near-online clip: the first frame of the clip holding the tube, the
shared frame included) may take memory row j iff `t - last_seen_frame[j] <= tau`
(`within_horizon`); `refresh(t0)` drops the rows that no detection of a clip
starting at frame t0 can take (`t0 - last_seen_frame > tau`). So tau = 1 links
consecutive frames only, and in near-online mode (T = 2, one-frame overlap) it
also bridges a tube missed in one clip: the object was emitted on frame k by the
clip before, and the clip after the miss detects it again from its shared frame
k + 1. Appearance (Eq. (3)) is updated once per step (one `update` call, one
clip), because the model gives one query embedding per tube per clip.

`HiLAMemoryBuffer` (hila_memory_buffer.py) extends this class with the location
feature of Eq. (4).
"""

from typing import Optional

import numpy as np

from deeplab2_vkmax.association import matching
from deeplab2_vkmax.protos import association_pb2
from deeplab2_vkmax.protos import fields

_DEFAULTS = fields.defaults(association_pb2.AssociationOptions)


def last_seen_frames(frame_indices: np.ndarray, present: np.ndarray) -> np.ndarray:
  """int64 [K]: per object, the last of `frame_indices` [F] where `present`
  [F, K] holds (an object never present gets the last frame; callers drop it)."""
  present = np.asarray(present, dtype=bool)
  frame_indices = np.asarray(frame_indices, dtype=np.int64)
  if not present.shape[0]:
    return np.zeros(present.shape[1], dtype=np.int64)
  last = present.shape[0] - 1 - np.argmax(present[::-1], axis=0)  # [K]
  return frame_indices[last]


class NaiveMemoryBuffer:
  """Appearance memory of the tracks seen in the last `tau` steps.

  Rows are kept in insertion order, which makes decoding deterministic. All
  arrays are views of the live state; do not modify them.

  Attributes:
    track_ids: int64 [M], video-global track id per memory row.
    classes: int64 [M], semantic class at the last observation.
    embeddings: float64 [M, D], q_hat (Eq. (3)).
    last_seen_frame: int64 [M], last video frame with pixels of the object.
  """

  uses_appearance = True
  uses_location = False

  def __init__(self, *, lam: float = _DEFAULTS['lam'], tau: int = _DEFAULTS['tau']):
    """Creates an empty buffer.

    Args:
      lam: EMA weight of the *new* appearance feature in Eq. (3), in [0, 1].
      tau: memory horizon in frames (see the module docstring), >= 0.
    """
    if not 0.0 <= lam <= 1.0:
      raise ValueError(f'lam must be in [0, 1]; received {lam}.')
    if tau < 0:
      raise ValueError(f'tau must be >= 0 frames; received {tau}.')
    self.lam = float(lam)
    self.tau = int(tau)
    self.reset()

  def reset(self) -> None:
    """Empties the buffer (call at the start of every video)."""
    self.track_ids = np.zeros(0, dtype=np.int64)
    self.classes = np.zeros(0, dtype=np.int64)
    self.embeddings = None  # [M, D] once the dimension is known.
    self.last_seen_frame = np.zeros(0, dtype=np.int64)

  def __len__(self) -> int:
    return int(self.track_ids.shape[0])

  def refresh(self, first_frame: int) -> None:
    """Drops rows last seen more than `tau` frames before `first_frame`.

    Args:
      first_frame: video index of the first frame of the clip about to be
        decoded; no detection of that clip is earlier, so the dropped rows could
        not pass `within_horizon` for any of them.
    """
    self._keep_rows(first_frame - self.last_seen_frame <= self.tau)

  def within_horizon(self, query_frames: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """bool [N, M]: whether memory row `rows[m]` is at most `tau` frames older
    than the detection first present at `query_frames[n]`."""
    age = (np.asarray(query_frames, dtype=np.int64)[:, None]
           - self.last_seen_frame[rows][None, :])  # [N, M]
    return age <= self.tau

  def _keep_rows(self, keep: np.ndarray) -> None:
    self.track_ids = self.track_ids[keep]
    self.classes = self.classes[keep]
    self.last_seen_frame = self.last_seen_frame[keep]
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

  def encode(self, *, track_ids: np.ndarray, classes: np.ndarray,
             embeddings: np.ndarray, frame_indices: np.ndarray,
             boxes: np.ndarray, present: np.ndarray) -> None:
    """Writes the objects observed in one step into memory (Eq. (3)).

    Args:
      track_ids: int [K] video-global track ids observed in this step's new
        frames, distinct.
      classes: int [K] semantic class of each.
      embeddings: float [K, D] one appearance feature (query embedding) per object
        for the whole clip; Eq. (3) is applied once per step.
      frame_indices: int [F] video frame indices of the step's new frames.
      boxes: float [F, K, 4] normalised box per new frame (zeros where absent).
      present: bool [F, K] whether the object has pixels in that frame.
    """
    del boxes  # Appearance only.
    track_ids = np.asarray(track_ids, dtype=np.int64)
    embeddings = np.asarray(embeddings, dtype=np.float64)
    present = np.asarray(present, dtype=bool)
    observed = present.any(axis=0)
    rows = self._rows_for(track_ids[observed])
    self._update_appearance(rows, track_ids[observed], np.asarray(classes)[observed],
                            embeddings[observed],
                            last_seen_frames(frame_indices, present)[observed])

  def _update_appearance(self, rows: np.ndarray, track_ids: np.ndarray,
                         classes: np.ndarray, embeddings: np.ndarray,
                         last_frames: np.ndarray) -> np.ndarray:
    """Eq. (3) for known rows, appends new rows; returns the row of every object.

    `last_frames`: int [K], the last frame of this step with the object's pixels.
    """
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
    self.last_seen_frame[known_rows] = last_frames[known]
    new = ~known
    order = np.argsort(track_ids[new], kind='stable')
    new_rows = len(self) + np.arange(int(new.sum()))
    self.track_ids = np.concatenate([self.track_ids, track_ids[new][order]])
    self.classes = np.concatenate([self.classes, np.asarray(classes)[new][order]])
    self.embeddings = np.concatenate([self.embeddings, embeddings[new][order]])
    self.last_seen_frame = np.concatenate(
        [self.last_seen_frame, np.asarray(last_frames, dtype=np.int64)[new][order]])
    all_rows = rows.copy()
    new_positions = np.nonzero(new)[0][order]
    all_rows[new_positions] = new_rows
    return all_rows
