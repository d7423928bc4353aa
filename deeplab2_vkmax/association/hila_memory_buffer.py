"""HiLA-MB memory: appearance (Eq. (3)) plus location (Eq. (4)), paper Sec. 3.2.

Location, per video frame t and object i (Eq. (4)):

  b_hat_i^t = b_i^t                                      if i is observed at t,
  b_hat_i^t = b_hat_i^{t-1} + (b_hat_i^{t-1} - b_hat_i^{t-2})  if only in memory,

with boxes `[x_tl/w, y_tl/h, x_br/w, y_br/h]` from the predicted mask. The buffer
keeps, per object, `b_hat` at the memory's current frame and the velocity
`v = b_hat^t - b_hat^{t-1}`; a new object starts with zero velocity, an unseen one
keeps its velocity (constant-velocity prediction).

Units: location advances per *frame*: a step (clip) with F new frames applies
Eq. (4) F times, using the box of every new frame of the clip. The refresh horizon
`tau` also counts frames, against each object's last seen frame (see
naive_memory_buffer.py). Appearance (Eq. (3)) advances per *step* (clip), because
the model gives one query embedding per tube per clip. For decoding, memory boxes
are extrapolated to the frame of each query box (the first frame of the clip with
the query's pixels, the shared frame included, so the box is the detection's
observation closest in time to the memory):
`b_hat_j(t_i) = b_hat_j + (t_i - t_mem) v_j`, which is Eq. (4) iterated
(t_i = t_mem for a query on the shared frame).

`LocationMemoryBuffer` keeps the same state and scores location only,
`exp(-dist(b_i, b_hat_j) / T)` (paper Table 5, "location" rows).
"""

from typing import Optional

import numpy as np

from deeplab2_vkmax.association import matching
from deeplab2_vkmax.association import naive_memory_buffer
from deeplab2_vkmax.protos import association_pb2
from deeplab2_vkmax.protos import fields

_DEFAULTS = fields.defaults(association_pb2.AssociationOptions)


class HiLAMemoryBuffer(naive_memory_buffer.NaiveMemoryBuffer):
  """Appearance + constant-velocity location memory (Eqs. (3)-(5)).

  Attributes (besides those of `NaiveMemoryBuffer`):
    boxes: float64 [M, 4], b_hat at frame `current_frame`.
    velocities: float64 [M, 4], b_hat^t - b_hat^{t-1} per frame.
    current_frame: video frame index the boxes refer to (None before any encode).
  """

  uses_location = True

  def __init__(self, *, lam: float = _DEFAULTS['lam'], tau: int = _DEFAULTS['tau'],
               temperature: float = _DEFAULTS['temperature'],
               distance: str = _DEFAULTS['distance']):
    """Creates an empty buffer.

    Args:
      lam: EMA weight of the new appearance feature in Eq. (3).
      tau: memory horizon in frames, >= 0.
      temperature: T in Eq. (5), > 0.
      distance: 'squared_l2' (paper) or 'l2' (PyTorch release) box distance.
    """
    if distance not in matching.BOX_DISTANCES:
      raise ValueError(f'distance must be one of {matching.BOX_DISTANCES}; '
                       f'received {distance!r}.')
    if temperature <= 0:
      raise ValueError(f'temperature must be > 0; received {temperature}.')
    self.temperature = float(temperature)
    self.distance = distance
    super().__init__(lam=lam, tau=tau)

  def reset(self) -> None:
    super().reset()
    self.boxes = np.zeros((0, 4), dtype=np.float64)
    self.velocities = np.zeros((0, 4), dtype=np.float64)
    self.current_frame = None

  def _keep_rows(self, keep: np.ndarray) -> None:
    super()._keep_rows(keep)
    self.boxes = self.boxes[keep]
    self.velocities = self.velocities[keep]

  def predicted_boxes(self, rows: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """Constant-velocity boxes of memory `rows` at each query frame.

    Args:
      rows: int [M] memory rows.
      frames: int [N] video frame indices.

    Returns:
      float64 [N, M, 4].
    """
    base = self.current_frame if self.current_frame is not None else 0
    delta = (np.asarray(frames, dtype=np.float64) - base)[:, None, None]  # [N, 1, 1]
    return self.boxes[rows][None] + delta * self.velocities[rows][None]

  def similarity(self, query_embeddings: np.ndarray,
                 query_boxes: Optional[np.ndarray],
                 query_frames: Optional[np.ndarray],
                 rows: np.ndarray) -> np.ndarray:
    """Eq. (5) between current objects and memory `rows`.

    Args:
      query_embeddings: float [N, D].
      query_boxes: float [N, 4] normalised box of each object at `query_frames`.
      query_frames: int [N] video frame index of each query box.
      rows: int [M] memory rows.

    Returns:
      float64 [N, M].
    """
    return matching.hila_similarity(
        query_boxes, query_embeddings,
        self.predicted_boxes(rows, query_frames), self.embeddings[rows],
        temperature=self.temperature, distance=self.distance)

  def encode(self, *, track_ids: np.ndarray, classes: np.ndarray,
             embeddings: np.ndarray, frame_indices: np.ndarray,
             boxes: np.ndarray, present: np.ndarray) -> None:
    """Writes one step into memory: Eq. (3) once, Eq. (4) for every new frame.

    Args: see `NaiveMemoryBuffer.encode`. `frame_indices` must continue the
      frames already encoded (current_frame + 1, + 2, ...).
    """
    track_ids = np.asarray(track_ids, dtype=np.int64)
    frame_indices = np.asarray(frame_indices, dtype=np.int64)
    boxes = np.asarray(boxes, dtype=np.float64)
    present = np.asarray(present, dtype=bool)
    num_frames, num_objects = present.shape
    if boxes.shape != (num_frames, num_objects, 4):
      raise ValueError(f'boxes must be [F={num_frames}, K={num_objects}, 4]; '
                       f'received {boxes.shape}.')
    if frame_indices.shape != (num_frames,):
      raise ValueError(f'frame_indices must be [F={num_frames}]; received '
                       f'{frame_indices.shape}.')
    if (self.current_frame is not None and num_frames and
        not np.array_equal(frame_indices,
                           self.current_frame + 1 + np.arange(num_frames))):
      raise ValueError(f'Frames must continue from frame {self.current_frame}; '
                       f'received {frame_indices.tolist()}.')
    observed = present.any(axis=0)
    previous_size = len(self)
    rows = self._update_appearance(
        self._rows_for(track_ids[observed]), track_ids[observed],
        np.asarray(classes)[observed],
        np.asarray(embeddings, dtype=np.float64)[observed],
        naive_memory_buffer.last_seen_frames(frame_indices, present)[observed])
    boxes, present = boxes[:, observed], present[:, observed]
    num_new = len(self) - previous_size
    self.boxes = np.concatenate([self.boxes, np.zeros((num_new, 4))])
    self.velocities = np.concatenate([self.velocities, np.zeros((num_new, 4))])
    # A row starts taking part in Eq. (4) at its first observed frame.
    active = np.arange(len(self)) < previous_size
    for f in range(num_frames):
      seen_rows = rows[present[f]]
      seen_boxes = boxes[f][present[f]]
      unseen = active.copy()
      unseen[seen_rows] = False
      self.boxes[unseen] += self.velocities[unseen]
      was_active = active[seen_rows]
      self.velocities[seen_rows] = np.where(
          was_active[:, None], seen_boxes - self.boxes[seen_rows], 0.0)
      self.boxes[seen_rows] = seen_boxes
      active[seen_rows] = True
    if num_frames:
      self.current_frame = int(frame_indices[-1])


class LocationMemoryBuffer(HiLAMemoryBuffer):
  """Location-only memory: Eq. (4) state, score `exp(-dist(b_i, b_hat_j) / T)`.

  The "location" rows of paper Table 5. Embeddings are not used: pass [K, 0]
  arrays (the associater does).
  """

  uses_appearance = False

  def similarity(self, query_embeddings: Optional[np.ndarray],
                 query_boxes: np.ndarray, query_frames: np.ndarray,
                 rows: np.ndarray) -> np.ndarray:
    """Location factor of Eq. (5) between current objects and memory `rows`.

    Args:
      query_embeddings: unused.
      query_boxes: float [N, 4] normalised box of each object at `query_frames`.
      query_frames: int [N] video frame index of each query box.
      rows: int [M] memory rows.

    Returns:
      float64 [N, M].
    """
    del query_embeddings  # Location only.
    return matching.location_similarity(
        query_boxes, self.predicted_boxes(rows, query_frames),
        temperature=self.temperature, distance=self.distance)
