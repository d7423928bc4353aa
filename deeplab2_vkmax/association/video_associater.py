"""Cross-clip associater: Video Stitching + HiLA-MB (paper Sec. 3.2-3.3, Eqs. (3)-(5)).

`VideoAssociater` turns the per-clip panoptic tubes of clip-kMaX (clip-local thing
ids, the same in every frame of a clip) into per-frame panoptic maps with
video-global track ids:

1. Video Stitching (near-online, T >= 2): consecutive clips share one frame; on it,
   mutual-best IoU/dice pairs of same-class thing segments carry the previous
   global id over (video_stitcher.py).
2. HiLA-MB decoding: the current thing segments not stitched are matched against
   the memory objects not stitched with Eq. (5),
   `f(i, j) = exp(-dist(b_i, b_hat_j) / T) * cos(q_i, q_hat_j)`, Hungarian on the
   N x M matrix with cross-class pairs excluded, a pair accepted iff `f > alpha`
   (matching.py). naive-MB uses `cos(q_i, q_hat_j)` only, the location-only
   memory `exp(-dist / T)` only (paper Table 5 ablations).
3. Unmatched current segments get fresh ids from the associater's own counter
   (1, 2, ...; never reused within a video).
4. HiLA-MB encoding: every object of the step's new frames updates the memory,
   Eq. (3) once per clip, Eq. (4) once per new frame with that frame's box
   (hila_memory_buffer.py); objects last seen more than `tau` frames before a
   detection cannot take its id, and are dropped once no detection can reach them.

Frame emission: the first clip emits all T frames; every later clip emits its last
T - 1 frames (its first frame was emitted by the previous clip). Online (T = 1): no
stitching, every clip emits its one frame and HiLA-MB sees all its thing segments.

Units: one *step* = one `update` call = one clip. `tau` counts video *frames*
(paper Sec. 3.2: objects "whose last appeared frame is tau frame behind the current
frame are removed"). The age of memory object j for current object i is
`t_i - last_seen_frame_j`, where t_i is the first frame of the clip with i's pixels
(near-online: the shared frame when i is present there; the clip's tubes start at
its first frame) and last_seen_frame_j the last emitted frame with j's pixels; a
pair is a candidate only if the age is <= tau. Consequences: online (T = 1) tau = 1
links consecutive frames only; near-online (T = 2) tau = 1 also bridges a tube
missed in a single clip (the object was emitted on frame k, the clip after the
miss detects it from its shared frame k + 1). Eq. (5)'s query box is taken on the
same frame t_i.

Things: semantic class in `thing_class_ids` and instance > 0. Stuff pixels and
thing pixels with instance 0 (crowd) pass through unchanged.
"""

from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from deeplab2_vkmax.association import hila_memory_buffer
from deeplab2_vkmax.association import matching
from deeplab2_vkmax.association import naive_memory_buffer
from deeplab2_vkmax.association import video_stitcher
from deeplab2_vkmax.protos import association_pb2
from deeplab2_vkmax.protos import fields

_DEFAULTS = fields.defaults(association_pb2.AssociationOptions)

MEMORY_TYPES = ('hila', 'naive', 'location', 'none')


def slot_embeddings(segment_ids: np.ndarray, query_embeddings: np.ndarray,
                    label_divisor: int,
                    thing_class_ids: Sequence[int]) -> Dict[int, np.ndarray]:
  """`update`'s `embeddings` from the model's per-slot outputs.

  Args:
    segment_ids: int [N] panoptic id of each mask slot's kept segment (0 = none).
    query_embeddings: float [N, E] the slots' query embeddings.
    label_divisor: panoptic label divisor.
    thing_class_ids: classes that are tracked.

  Returns:
    {thing panoptic id: float32 [E] embedding} of the kept thing instances.
  """
  segment_ids = np.asarray(segment_ids).reshape(-1).astype(np.int64)
  is_thing = np.isin(segment_ids // label_divisor, thing_class_ids)
  keep = np.flatnonzero(is_thing & (segment_ids % label_divisor > 0))
  return {int(segment_ids[i]): np.asarray(query_embeddings[i], np.float32) for i in keep}


class VideoAssociater:
  """Stateful near-online / online associater for one video at a time.

  Call `reset()` between videos. Deterministic: ids come from an internal counter
  and every tie is broken towards the lower id.
  """

  def __init__(self, *, label_divisor: int,
               thing_class_ids: Sequence[int],
               use_stitching: bool = _DEFAULTS['use_stitching'],
               stitching_score: str = _DEFAULTS['stitching_score'],
               stitching_threshold: float = _DEFAULTS['stitching_threshold'],
               memory_type: str = _DEFAULTS['memory_type'],
               lam: float = _DEFAULTS['lam'], tau: int = _DEFAULTS['tau'],
               alpha: float = _DEFAULTS['alpha'],
               temperature: float = _DEFAULTS['temperature'],
               distance: str = _DEFAULTS['distance']):
    """Creates the associater.

    Defaults: `AssociationOptions` in deeplab2_vkmax/protos/association.proto.

    Args:
      label_divisor: panoptic encoding `semantic * label_divisor + instance`;
        track ids must stay below it.
      thing_class_ids: semantic classes that are tracked.
      use_stitching: run Video Stitching (ignored for online clips, T = 1).
      stitching_score: 'iou' (default, DeepLab2) or 'dice' (PyTorch release).
      stitching_threshold: stitch a pair only if its score is strictly above this.
      memory_type: 'hila' (Eqs. (3)-(5)), 'naive' (appearance only),
        'location' (Eq. (4) boxes only, no embeddings needed) or 'none'.
      lam: EMA weight of the new appearance feature, Eq. (3).
      tau: memory horizon in frames (see the module docstring).
      alpha: accept a memory match only if its similarity is strictly above this.
      temperature: T in Eq. (5).
      distance: 'squared_l2' (paper) or 'l2' (PyTorch release) in Eq. (5).
    """
    if label_divisor < 2:
      raise ValueError(f'label_divisor must be >= 2; received {label_divisor}.')
    if memory_type not in MEMORY_TYPES:
      raise ValueError(f'memory_type must be one of {MEMORY_TYPES}; received '
                       f'{memory_type!r}.')
    self.label_divisor = int(label_divisor)
    self.thing_class_ids = np.asarray(sorted(set(thing_class_ids)), dtype=np.int64)
    self._stitching_requested = bool(use_stitching)
    self.memory_type = memory_type
    self.alpha = float(alpha)
    self.stitcher = video_stitcher.VideoStitcher(
        label_divisor=self.label_divisor, thing_class_ids=self.thing_class_ids,
        score=stitching_score, threshold=stitching_threshold)
    self.memory: Optional[naive_memory_buffer.NaiveMemoryBuffer]
    if memory_type == 'hila':
      self.memory = hila_memory_buffer.HiLAMemoryBuffer(
          lam=lam, tau=tau, temperature=temperature, distance=distance)
    elif memory_type == 'location':
      self.memory = hila_memory_buffer.LocationMemoryBuffer(
          lam=lam, tau=tau, temperature=temperature, distance=distance)
    elif memory_type == 'naive':
      self.memory = naive_memory_buffer.NaiveMemoryBuffer(lam=lam, tau=tau)
    else:
      self.memory = None
    self.reset()

  def update_from_slots(self, panoptic: np.ndarray, segment_ids: np.ndarray,
                        query_embeddings: np.ndarray) -> List[np.ndarray]:
    """`update` with the embeddings taken from the model's per-slot outputs.

    Args:
      panoptic: int [T, H, W] the clip's panoptic prediction.
      segment_ids: int [N] panoptic id of each mask slot's kept segment (0 = none).
      query_embeddings: float [N, E] the slots' query embeddings.

    Returns:
      As `update`.
    """
    return self.update(np.asarray(panoptic, np.int32), slot_embeddings(
        segment_ids, query_embeddings, self.label_divisor, self.thing_class_ids))

  @property
  def use_stitching(self) -> bool:
    """Whether Video Stitching runs: asked for, and the clips overlap (T >= 2)."""
    return self._stitching_requested and (self.clip_length or 0) >= 2

  def reset(self) -> None:
    """Starts a new video: empties memory, stitcher, id counter and statistics."""
    self.stitcher.reset()
    if self.memory is not None:
      self.memory.reset()
    self._step = 0
    self._next_frame = 0
    self._next_track_id = 1
    self._frame_shape = None
    # T, read from the first clip of the video (deeplab2_vkmax.data.clips cuts
    # them): 1 = online, >= 2 = near-online, one frame shared between clips.
    self.clip_length: Optional[int] = None
    self._stats = {'ids_created': 0, 'stitched': 0, 'reidentifications': 0,
                   'memory_size_max': 0}
    self._match_space = []  # (M, N) per step with memory decoding.

  def statistics(self) -> Dict[str, float]:
    """Counters of the current video.

    Returns:
      dict with 'num_clips', 'num_frames' (emitted), 'ids_created', 'stitched'
      (current segments that took an id by stitching), 'reidentifications'
      (segments that took an id from memory), 'memory_size_max', and the memory
      match space (paper Table 6) over steps with memory decoding:
      'match_space_m_mean', 'match_space_m_max' (memory candidates M),
      'match_space_n_mean', 'match_space_n_max' (current candidates N),
      'match_space_size_mean', 'match_space_size_max' (M x N).
    """
    space = np.asarray(self._match_space, dtype=np.float64).reshape(-1, 2)
    sizes = space[:, 0] * space[:, 1]

    def _mean(x):
      return float(x.mean()) if x.size else 0.0

    def _max(x):
      return float(x.max()) if x.size else 0.0

    result = dict(self._stats)
    result.update({
        'num_clips': self._step,
        'num_frames': self._next_frame,
        'match_space_m_mean': _mean(space[:, 0]),
        'match_space_m_max': _max(space[:, 0]),
        'match_space_n_mean': _mean(space[:, 1]),
        'match_space_n_max': _max(space[:, 1]),
        'match_space_size_mean': _mean(sizes),
        'match_space_size_max': _max(sizes),
    })
    return result

  def _validate(self, panoptic: np.ndarray) -> np.ndarray:
    panoptic = np.asarray(panoptic)
    if panoptic.ndim != 3 or panoptic.shape[0] < 1:
      raise ValueError(f'panoptic must be [T, H, W]; received shape {panoptic.shape}.')
    if self.clip_length is not None and panoptic.shape[0] != self.clip_length:
      raise ValueError(f'panoptic must be [T={self.clip_length}, H, W] like the first clip '
                       f'of this video; received shape {panoptic.shape}; call reset() '
                       'between videos.')
    if not np.issubdtype(panoptic.dtype, np.integer):
      raise ValueError(f'panoptic must hold integers; received dtype {panoptic.dtype}.')
    if panoptic.size and panoptic.min() < 0:
      raise ValueError(f'panoptic ids must be >= 0; received minimum {panoptic.min()}.')
    if self._frame_shape is not None and panoptic.shape[1:] != self._frame_shape:
      raise ValueError(f'Frame size changed within a video: expected '
                       f'{self._frame_shape}, received {panoptic.shape[1:]}; call '
                       f'reset() between videos.')
    return panoptic

  def _embedding_matrix(self, embeddings: Optional[Mapping[int, np.ndarray]],
                        ids: np.ndarray) -> np.ndarray:
    """Stacks the embeddings of `ids` into [K, D]."""
    missing = [int(i) for i in ids if embeddings is None or int(i) not in embeddings]
    if missing:
      raise ValueError(f'memory_type={self.memory_type!r} needs an embedding for '
                       f'every thing segment; missing for panoptic ids {missing}.')
    if not len(ids):
      return np.zeros((0, 1), dtype=np.float64)
    return np.stack([np.asarray(embeddings[int(i)], dtype=np.float64).reshape(-1)
                     for i in ids])

  def _first_observations(self, query: np.ndarray, boxes: np.ndarray,
                          present: np.ndarray, frame_indices: np.ndarray,
                          shared_positions: np.ndarray, shared_segment: np.ndarray,
                          num_segments: int, frame_shape):
    """Frame and box of each query's first observation in the current clip.

    A clip's tubes start at its first frame: in near-online mode a query with
    pixels on the shared frame is observed there (the frame right after the one
    where the previous clip last emitted objects), else on its first new frame.

    Args:
      query: int [N] indices into the clip's segments.
      boxes, present: [F, K, 4] and [F, K] on the new frames.
      frame_indices: int [F] video indices of the new frames.
      shared_positions, shared_segment: the shared frame's thing pixels (empty
        for the first clip and online).
      num_segments: K.
      frame_shape: (H, W).

    Returns:
      (frames, boxes): int64 [N] video frame indices and float64 [N, 4].
    """
    first = np.argmax(present[:, query], axis=0)  # [N]
    query_frames = frame_indices[first].astype(np.int64)
    query_boxes = boxes[first, query]
    if len(shared_positions):
      if self.memory.uses_location:
        shared_boxes, shared_present = matching.boxes_from_pixels(
            shared_positions, shared_segment, num_segments, *frame_shape)
        shared_boxes, shared_present = shared_boxes[0], shared_present[0]
      else:
        shared_present = np.bincount(shared_segment, minlength=num_segments) > 0
      on_shared = shared_present[query]  # [N]
      query_frames[on_shared] = frame_indices[0] - 1
      if self.memory.uses_location:
        query_boxes[on_shared] = shared_boxes[query[on_shared]]
    return query_frames, query_boxes

  def _new_track_ids(self, count: int) -> np.ndarray:
    last = self._next_track_id + count - 1
    if count and last >= self.label_divisor:
      raise OverflowError(
          f'Track id {last} would not fit label_divisor={self.label_divisor} '
          f'(track ids must be < label_divisor); {self._next_track_id - 1} ids '
          f'already used in this video. Use a larger label_divisor or call '
          f'reset() at the start of every video.')
    ids = np.arange(self._next_track_id, self._next_track_id + count, dtype=np.int64)
    self._next_track_id += count
    self._stats['ids_created'] += count
    return ids

  def update(self, panoptic: np.ndarray,
             embeddings: Optional[Mapping[int, np.ndarray]] = None
             ) -> List[np.ndarray]:
    """Associates one clip and returns its frames not emitted before.

    Args:
      panoptic: int [T, H, W] panoptic prediction of the clip, thing instance ids
        clip-local and constant across the clip's frames (tubes).
      embeddings: {panoptic id: float [D] query embedding} for the clip's thing
        segments; required unless memory_type is 'none' or 'location'.

    Returns:
      List of int32 [H, W] panoptic maps, `semantic * label_divisor + track_id`
      for things: T maps for the first clip (and always for T = 1), T - 1 maps
      for every later clip.

    Raises:
      ValueError: malformed input or missing embeddings.
      OverflowError: a new track id would reach `label_divisor`.
    """
    panoptic = self._validate(panoptic)
    self._frame_shape = panoptic.shape[1:]
    self.clip_length = panoptic.shape[0]
    first_new = 0 if (self._step == 0 or self.clip_length == 1) else 1
    new_frames = panoptic[first_new:]  # [F, H, W]
    num_new = new_frames.shape[0]
    frame_indices = self._next_frame + np.arange(num_new)

    _, height, width = panoptic.shape
    frame_pixels = height * width
    # Thing pixels of the whole clip as a sparse list: per-pixel work below runs
    # on them only (they are a minority of a frame).
    ids, positions, segment = matching.thing_pixels(
        panoptic, self.label_divisor, self.thing_class_ids)  # [K], [P], [P]
    new_start = int(np.searchsorted(positions, first_new * frame_pixels))
    new_positions = positions[new_start:] - first_new * frame_pixels
    new_segment = segment[new_start:]
    boxes, present = matching.boxes_from_pixels(
        new_positions, new_segment, len(ids), height, width, num_new)  # [F, K, 4]
    in_new_frames = present.any(axis=0)  # [K]
    classes = ids // self.label_divisor
    track_ids = np.zeros(len(ids), dtype=np.int64)  # 0 = not assigned yet.
    embedding_matrix = None  # [K_new, D]
    if self.memory is not None:
      if self.memory.uses_appearance:
        embedding_matrix = self._embedding_matrix(embeddings, ids[in_new_frames])
      else:
        embedding_matrix = np.zeros((int(in_new_frames.sum()), 0))

    # 1. Video Stitching on the shared frame.
    if self.use_stitching and self.stitcher.has_previous:
      previous, current = self.stitcher.match_pixels(
          positions[:new_start], segment[:new_start], ids, (height, width))
      track_ids[current] = self.stitcher.previous_track_ids()[previous]
      self._stats['stitched'] += len(current)

    # 2. Memory decoding for what stitching left unmatched.
    if self.memory is not None:
      query = np.nonzero((track_ids == 0) & in_new_frames)[0]  # into ids, [N]
      rows = np.nonzero(~np.isin(self.memory.track_ids, track_ids))[0]  # [M]
      self._match_space.append((len(rows), len(query)))
      if len(query) and len(rows):
        row_in_matrix = np.cumsum(in_new_frames) - 1  # ids index -> matrix row.
        query_frames, query_boxes = self._first_observations(
            query, boxes, present, frame_indices, positions[:new_start],
            segment[:new_start], len(ids), (height, width))  # [N], [N, 4]
        similarity = self.memory.similarity(
            embedding_matrix[row_in_matrix[query]], query_boxes, query_frames,
            rows)  # [N, M]
        allowed = (matching.class_agreement(classes[query],
                                            self.memory.classes[rows])
                   & self.memory.within_horizon(query_frames, rows))
        matched_query, matched_rows = matching.hungarian_matches(
            similarity, self.alpha, allowed)
        track_ids[query[matched_query]] = self.memory.track_ids[rows[matched_rows]]
        self._stats['reidentifications'] += len(matched_query)

    # 3. Fresh ids, in ascending clip-local id order.
    unassigned = np.nonzero((track_ids == 0) & in_new_frames)[0]
    track_ids[unassigned] = self._new_track_ids(len(unassigned))

    # Relabel the new frames; ids only on the shared frame never reach the output.
    new_values = classes * self.label_divisor + track_ids  # [K]
    outputs = new_frames.astype(np.int32)  # a copy: stuff and crowd pass through.
    outputs.reshape(-1)[new_positions] = new_values[new_segment]

    # 4. Memory encoding with every object of the new frames.
    if self.memory is not None:
      self.memory.encode(track_ids=track_ids[in_new_frames],
                         classes=classes[in_new_frames],
                         embeddings=embedding_matrix,
                         frame_indices=frame_indices,
                         boxes=boxes[:, in_new_frames],
                         present=present[:, in_new_frames])
      # Keep only what a detection of the next clip could still take: its
      # first frame is the last emitted one (near-online) or the next (online).
      next_clip_first_frame = (self._next_frame + num_new
                               - (1 if self.clip_length > 1 else 0))
      self.memory.refresh(next_clip_first_frame)
      self._stats['memory_size_max'] = max(self._stats['memory_size_max'],
                                           len(self.memory))
    if self.use_stitching:
      # The last emitted frame, as an index map over the ids it now carries.
      last_start = int(np.searchsorted(new_positions, (num_new - 1) * frame_pixels))
      self.stitcher.remember_pixels(
          new_positions[last_start:] - (num_new - 1) * frame_pixels,
          new_segment[last_start:], new_values, (height, width))
    self._step += 1
    self._next_frame += num_new
    return list(outputs)
