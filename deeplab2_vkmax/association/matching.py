"""Pure matching functions for cross-clip association (paper Sec. 3.2, Eq. (5)).

Everything here is stateless: arrays in, arrays out. The stateful parts (memory
buffers, id counter) live in `hila_memory_buffer.py`, `naive_memory_buffer.py` and
`video_associater.py`.

- `dense_segment_index`: panoptic ids -> dense indices 0..K-1 (a lookup-table
  relabelling, O(pixels) with `np.bincount`, no sort when ids are small).
- `thing_pixels`: the thing pixels of a panoptic array as a sparse list (flat
  positions + dense segment index). Thing pixels are a minority of a frame, so
  every per-pixel gather and `np.bincount` after this runs on them only; the
  full-frame work is a few SIMD comparisons and one `np.flatnonzero`.
- `boxes_from_pixels` / `boxes_from_masks`: normalised boxes `[x_tl/w, y_tl/h, x_br/w, y_br/h]` of every
  segment of a frame (the location feature of Eq. (4)).
- `overlap_scores`: IoU or dice between the segments of two label maps of the same
  frame (Video Stitching, docs/association.md).
- `mutual_best_matches`: mutual-best pairs of a score matrix above a threshold.
- `hila_similarity` / `appearance_similarity` / `location_similarity`: Eq. (5)
  and its appearance-only (naive-MB) and location-only factors.
- `hungarian_matches`: `scipy.optimize.linear_sum_assignment` on a similarity
  matrix with disallowed (cross-class) pairs excluded, pairs kept only above a
  threshold.
"""

from typing import Sequence, Tuple

import numpy as np
from scipy import optimize



def use_lookup_table(max_id: int, num_pixels: int) -> bool:
  """Whether a dense table over [0, max_id] beats sorting `num_pixels` values.

  A table costs O(max_id) to build and O(pixels) to apply; `np.unique` costs
  O(pixels log pixels). Tables win for the usual encodings (e.g. KITTI-STEP ids
  < 19 * 1000) and lose for huge label divisors on small frames.
  """
  return max_id < max(4 * num_pixels, 1 << 16)

# Below this many multiply-adds, similarity products skip BLAS (see
# `cosine_similarity`).
_SMALL_PRODUCT_MACS = 4_000_000

OVERLAP_SCORES = ('iou', 'dice')
BOX_DISTANCES = ('squared_l2', 'l2')


def dense_segment_index(label_map: np.ndarray,
                        segment_ids: np.ndarray) -> np.ndarray:
  """Maps every pixel to the index of its segment in `segment_ids`, else -1.

  Args:
    label_map: int array of any shape holding non-negative panoptic ids.
    segment_ids: int array [K] of distinct ids to index.

  Returns:
    int32 array shaped like `label_map`: `k` where `label_map == segment_ids[k]`,
    -1 elsewhere (int32 halves the memory traffic of the gathers that follow).
  """
  label_map = np.asarray(label_map)
  segment_ids = np.asarray(segment_ids, dtype=np.int64)
  if label_map.size and label_map.min() < 0:
    raise ValueError(f'label_map must hold non-negative ids; received minimum '
                     f'{label_map.min()}.')
  max_id = int(label_map.max()) if label_map.size else 0
  if use_lookup_table(max_id, label_map.size):
    lut = np.full(max_id + 1, -1, dtype=np.int32)
    in_range = segment_ids[segment_ids <= max_id]
    lut[in_range] = np.nonzero(segment_ids <= max_id)[0]
    return lut[label_map]
  if not len(segment_ids):
    return np.full(label_map.shape, -1, dtype=np.int32)
  order = np.argsort(segment_ids)
  sorted_ids = segment_ids[order]
  position = np.minimum(np.searchsorted(sorted_ids, label_map), len(sorted_ids) - 1)
  found = sorted_ids[position] == label_map
  return np.where(found, order[position], -1).astype(np.int32)


def segment_areas(index_map: np.ndarray, num_segments: int) -> np.ndarray:
  """Pixel count of each segment of a dense index map.

  Args:
    index_map: int array of any shape from `dense_segment_index` (-1 = none).
    num_segments: K.

  Returns:
    int64 array [K].
  """
  flat = index_map.reshape(-1)
  # flatnonzero + gather beats boolean-mask indexing (~4x on 375x1242 frames).
  return np.bincount(flat[np.flatnonzero(flat >= 0)],
                     minlength=num_segments)[:num_segments]


# Up to this many runs of consecutive thing classes, the thing mask is built with
# range comparisons (SIMD, ~0.03 ms per pass on 375x1242); more runs fall back to
# a class lookup.
_MAX_THING_CLASS_RUNS = 8


def _thing_class_runs(thing_class_ids: np.ndarray):
  """[(first, last)] runs of consecutive classes in sorted distinct ids."""
  runs = []
  for c in np.unique(np.asarray(thing_class_ids, dtype=np.int64)).tolist():
    if runs and c == runs[-1][1] + 1:
      runs[-1][1] = c
    else:
      runs.append([c, c])
  return runs


def thing_pixels(panoptic: np.ndarray, label_divisor: int,
                 thing_class_ids: Sequence[int]
                 ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The thing pixels of a panoptic array, as a sparse list.

  Things are pixels whose class is in `thing_class_ids` and whose instance is
  > 0 (instance 0 is crowd and is not a segment).

  Args:
    panoptic: int array of any shape, `semantic * label_divisor + instance`, >= 0.
    label_divisor: the panoptic label divisor.
    thing_class_ids: semantic classes that are things.

  Returns:
    (segment_ids, positions, segment):
    segment_ids: int64 [K] distinct thing panoptic ids, ascending;
    positions: int64 [P] ascending indices into `panoptic.reshape(-1)` of every
      thing pixel;
    segment: int64 [P] index into `segment_ids` of each of those pixels.
  """
  flat = np.asarray(panoptic).reshape(-1)
  runs = _thing_class_runs(thing_class_ids)
  empty = np.zeros(0, dtype=np.int64)
  if not runs or not flat.size:
    return empty, empty, empty
  if len(runs) <= _MAX_THING_CLASS_RUNS:
    # Boolean temporaries only (1 byte per pixel), combined in place: large
    # fresh allocations cost page faults that dominate on busy machines.
    mask = np.zeros(flat.shape, dtype=bool)
    below = np.empty(flat.shape, dtype=bool)
    for first, last in runs:
      in_run = np.greater_equal(flat, first * label_divisor)
      np.less(flat, (last + 1) * label_divisor, out=below)
      in_run &= below
      mask |= in_run
  else:
    mask = np.isin(flat // label_divisor, np.asarray(thing_class_ids))
  positions = np.flatnonzero(mask)  # int64 (intp)
  if not positions.size:
    return empty, positions.astype(np.int64, copy=False), empty
  values = flat[positions].astype(np.int64, copy=False)
  low = int(values.min())
  span = int(values.max()) - low + 1
  if use_lookup_table(span, values.size):
    shifted = values - low
    seen = np.zeros(span, dtype=bool)
    seen[shifted] = True
    # Crowd (instance 0) ids are multiples of the divisor: not segments.
    crowd = np.arange(-low % label_divisor, span, label_divisor)
    has_crowd = bool(seen[crowd].any())
    seen[crowd] = False
    present = np.flatnonzero(seen)
    lut = np.full(span, -1, dtype=np.int64)
    lut[present] = np.arange(len(present))
    segment = lut[shifted]
    segment_ids = present + low
  else:
    segment_ids, segment = np.unique(values, return_inverse=True)
    segment = segment.reshape(-1).astype(np.int64, copy=False)
    is_crowd = segment_ids % label_divisor == 0
    has_crowd = bool(is_crowd.any())
    if has_crowd:
      renumber = np.cumsum(~is_crowd) - 1
      renumber[is_crowd] = -1
      segment, segment_ids = renumber[segment], segment_ids[~is_crowd]
  if has_crowd:
    keep = segment >= 0
    positions, segment = positions[keep], segment[keep]
  return (segment_ids.astype(np.int64, copy=False),
          positions.astype(np.int64, copy=False), segment)


def boxes_from_pixels(positions: np.ndarray, segment: np.ndarray,
                      num_segments: int, height: int, width: int,
                      num_frames: int = 1) -> Tuple[np.ndarray, np.ndarray]:
  """Normalised boxes of every segment in every frame, from a sparse pixel list.

  Corners are pixel edges (see `boxes_from_masks`).

  Args:
    positions: int [P] indices into a flattened [num_frames, height, width] array.
    segment: int [P] segment index (0..K-1) of each position.
    num_segments: K.
    height, width: frame size.
    num_frames: F.

  Returns:
    (boxes, present): float64 [F, K, 4] `[x_tl/w, y_tl/h, x_br/w, y_br/h]`
    (zeros where absent) and bool [F, K].
  """
  boxes = np.zeros((num_frames, num_segments, 4), dtype=np.float64)
  if num_segments == 0 or num_frames == 0:
    return boxes, np.zeros((num_frames, num_segments), dtype=bool)
  positions = np.asarray(positions, dtype=np.int64)
  # Integer division is slow in numpy (~4 ns/element); the quotient of
  # (p + 0.5) / n in float64 is at least 0.5 / n from an integer, far above the
  # rounding error for p < 2**40, so floor gives the exact quotient.
  flat_rows = np.floor((positions + 0.5) * (1.0 / width)).astype(np.int64)
  cols = positions - flat_rows * width
  frame = np.floor((flat_rows + 0.5) * (1.0 / height)).astype(np.int64)
  rows = flat_rows - frame * height
  track = frame * num_segments + np.asarray(segment, dtype=np.int64)  # [P]
  num_tracks = num_frames * num_segments
  # Row/column occupancy per (frame, segment) with one bincount each.
  row_hits = np.bincount(track * height + rows,
                         minlength=num_tracks * height).reshape(num_tracks, height) > 0
  col_hits = np.bincount(track * width + cols,
                         minlength=num_tracks * width).reshape(num_tracks, width) > 0
  present = row_hits.any(axis=1)
  flat_boxes = boxes.reshape(num_tracks, 4)
  flat_boxes[:, 0] = np.argmax(col_hits, axis=1) / width
  flat_boxes[:, 1] = np.argmax(row_hits, axis=1) / height
  flat_boxes[:, 2] = (width - np.argmax(col_hits[:, ::-1], axis=1)) / width
  flat_boxes[:, 3] = (height - np.argmax(row_hits[:, ::-1], axis=1)) / height
  flat_boxes[~present] = 0.0
  return boxes, present.reshape(num_frames, num_segments)


def boxes_from_masks(index_map: np.ndarray,
                     num_segments: int) -> Tuple[np.ndarray, np.ndarray]:
  """Normalised bounding boxes of every segment of one frame (Eq. (4)).

  Corners are pixel edges, so a segment covering the whole image has box
  `[0, 0, 1, 1]`: `x_tl = min_col / w`, `x_br = (max_col + 1) / w`, same for rows.

  Args:
    index_map: int array [H, W], segment index per pixel (-1 = none), e.g. from
      `dense_segment_index`.
    num_segments: K.

  Returns:
    (boxes, present): float64 [K, 4] `[x_tl/w, y_tl/h, x_br/w, y_br/h]` (zeros for
    absent segments) and bool [K], whether the segment has any pixel.
  """
  if index_map.ndim != 2:
    raise ValueError(f'index_map must be [H, W]; received shape {index_map.shape}.')
  height, width = index_map.shape
  flat = index_map.reshape(-1)
  positions = np.flatnonzero(flat >= 0)
  boxes, present = boxes_from_pixels(positions, flat[positions], num_segments,
                                     height, width)
  return boxes[0], present[0]


def overlap_scores(index_map_a: np.ndarray, num_a: int,
                   index_map_b: np.ndarray, num_b: int,
                   score: str = 'iou') -> np.ndarray:
  """IoU or dice between every segment of map A and every segment of map B.

  Both maps describe the same frame (the frame two consecutive clips share).

  Args:
    index_map_a: int array [H, W], segment index in A per pixel (-1 = none).
    num_a: P, number of segments in A.
    index_map_b: int array [H, W], segment index in B per pixel (-1 = none).
    num_b: C, number of segments in B.
    score: 'iou' = |a & b| / |a | b|, or 'dice' = 2 |a & b| / (|a| + |b|).

  Returns:
    float64 [P, C].

  Raises:
    ValueError: unknown `score` or maps of different shapes.
  """
  if score not in OVERLAP_SCORES:
    raise ValueError(f'score must be one of {OVERLAP_SCORES}; received {score!r}.')
  if index_map_a.shape != index_map_b.shape:
    raise ValueError(f'Maps must have the same shape; received {index_map_a.shape} '
                     f'and {index_map_b.shape}.')
  if num_a == 0 or num_b == 0:
    return np.zeros((num_a, num_b), dtype=np.float64)
  a = index_map_a.reshape(-1)
  b = index_map_b.reshape(-1)
  both = np.flatnonzero((a >= 0) & (b >= 0))
  intersection = np.bincount(a[both].astype(np.int64) * num_b + b[both],
                             minlength=num_a * num_b).reshape(num_a, num_b)
  return overlap_from_areas(intersection, segment_areas(a, num_a),
                            segment_areas(b, num_b), score)


def overlap_from_areas(intersection: np.ndarray, areas_a: np.ndarray,
                       areas_b: np.ndarray, score: str = 'iou') -> np.ndarray:
  """IoU or dice from pixel counts.

  Args:
    intersection: int [P, C], |a & b|.
    areas_a: int [P], |a|.
    areas_b: int [C], |b|.
    score: 'iou' or 'dice'.

  Returns:
    float64 [P, C].
  """
  if score not in OVERLAP_SCORES:
    raise ValueError(f'score must be one of {OVERLAP_SCORES}; received {score!r}.')
  intersection = np.asarray(intersection, dtype=np.float64)
  area_a = np.asarray(areas_a, dtype=np.float64)
  area_b = np.asarray(areas_b, dtype=np.float64)
  if score == 'iou':
    denominator = area_a[:, None] + area_b[None, :] - intersection
    return intersection / np.maximum(denominator, 1.0)
  denominator = area_a[:, None] + area_b[None, :]
  return 2.0 * intersection / np.maximum(denominator, 1.0)


def mutual_best_matches(scores: np.ndarray,
                        threshold: float = 0.0) -> Tuple[np.ndarray, np.ndarray]:
  """Pairs (p, c) where c is p's best column, p is c's best row, score > threshold.

  Ties are broken towards the lower index (deterministic). Entries that must never
  match (e.g. different classes) should be set to 0 or below by the caller.

  Args:
    scores: float [P, C].
    threshold: a pair is kept only if its score is strictly above this.

  Returns:
    (rows, cols): int64 arrays [K], sorted by row.
  """
  scores = np.asarray(scores, dtype=np.float64)
  if scores.ndim != 2:
    raise ValueError(f'scores must be [P, C]; received shape {scores.shape}.')
  if scores.size == 0:
    empty = np.zeros(0, dtype=np.int64)
    return empty, empty
  best_col = np.argmax(scores, axis=1)  # [P]
  best_row = np.argmax(scores, axis=0)  # [C]
  rows = np.arange(scores.shape[0])
  keep = (best_row[best_col] == rows) & (scores[rows, best_col] > threshold)
  return rows[keep].astype(np.int64), best_col[keep].astype(np.int64)


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Cosine similarity between rows of `a` [N, D] and rows of `b` [M, D] -> [N, M]."""
  a = np.asarray(a, dtype=np.float64)
  b = np.asarray(b, dtype=np.float64)
  if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
    raise ValueError(f'Expected [N, D] and [M, D] embeddings; received {a.shape} '
                     f'and {b.shape}.')
  a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
  b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
  if a.shape[0] * b.shape[0] * a.shape[1] < _SMALL_PRODUCT_MACS:
    # Association matrices are small (tens x tens x 256): a BLAS call here wakes
    # OpenBLAS's sleeping threads, measured at ~10 ms between frames vs ~0.2 ms
    # for einsum's single-threaded loop.
    return np.einsum('nd,md->nm', a, b)
  return a @ b.T


def appearance_similarity(query_embeddings: np.ndarray,
                          memory_embeddings: np.ndarray) -> np.ndarray:
  """naive-MB similarity: `cos(q_i, q_hat_j)`, [N, D] x [M, D] -> [N, M]."""
  return cosine_similarity(query_embeddings, memory_embeddings)


def location_similarity(query_boxes: np.ndarray, memory_boxes: np.ndarray, *,
                        temperature: float = 1.0,
                        distance: str = 'squared_l2') -> np.ndarray:
  """The location factor of Eq. (5): `exp(-dist(b_i, b_hat_j) / T)`.

  Used alone by the location-only memory (paper Table 5, "location" rows).

  Args:
    query_boxes: float [N, 4] normalised boxes of the current objects.
    memory_boxes: float [M, 4] memory boxes (already predicted to the query
      frame), or paired per query: [N, M, 4].
    temperature: T in Eq. (5), > 0.
    distance: 'squared_l2' (paper, `||b_i - b_hat_j||^2`) or 'l2' (the PyTorch
      release, `||b_i - b_hat_j||`).

  Returns:
    float64 [N, M], in (0, 1].
  """
  if distance not in BOX_DISTANCES:
    raise ValueError(f'distance must be one of {BOX_DISTANCES}; received {distance!r}.')
  if temperature <= 0:
    raise ValueError(f'temperature must be > 0; received {temperature}.')
  query_boxes = np.asarray(query_boxes, dtype=np.float64)
  memory_boxes = np.asarray(memory_boxes, dtype=np.float64)
  if memory_boxes.ndim == 2:
    difference = query_boxes[:, None, :] - memory_boxes[None, :, :]  # [N, M, 4]
  else:
    difference = query_boxes[:, None, :] - memory_boxes  # [N, M, 4]
  squared = np.sum(difference * difference, axis=-1)
  dist = squared if distance == 'squared_l2' else np.sqrt(squared)
  return np.exp(-dist / temperature)


def hila_similarity(query_boxes: np.ndarray, query_embeddings: np.ndarray,
                    memory_boxes: np.ndarray, memory_embeddings: np.ndarray,
                    *, temperature: float = 1.0,
                    distance: str = 'squared_l2') -> np.ndarray:
  """Eq. (5): `f(i, j) = exp(-dist(b_i, b_hat_j) / T) * cos(q_i, q_hat_j)`.

  Args:
    query_boxes: float [N, 4] normalised boxes of the current objects.
    query_embeddings: float [N, D].
    memory_boxes: float [M, 4] or [N, M, 4], see `location_similarity`.
    memory_embeddings: float [M, D].
    temperature: T in Eq. (5), > 0.
    distance: 'squared_l2' (paper) or 'l2' (PyTorch release).

  Returns:
    float64 [N, M].
  """
  return (location_similarity(query_boxes, memory_boxes, temperature=temperature,
                              distance=distance)
          * cosine_similarity(query_embeddings, memory_embeddings))


def hungarian_matches(similarity: np.ndarray, threshold: float,
                      allowed: np.ndarray = None) -> Tuple[np.ndarray, np.ndarray]:
  """Maximum-similarity one-to-one assignment, then the threshold filter.

  Pairs that are not `allowed` (different classes) are excluded *before* the
  assignment, so an object of another class can never take a row or column away
  from a valid pair. The threshold is applied *after* the assignment on the
  similarity itself (paper Sec. 3.2: Hungarian on S, then keep pairs with
  f > alpha); a pair that fails it is left unmatched, not re-assigned.

  Args:
    similarity: float [N, M].
    threshold: keep a pair only if its similarity is strictly above this (alpha).
    allowed: optional bool [N, M]; pairs where False are never returned.

  Returns:
    (rows, cols): int64 arrays [K], sorted by row.
  """
  similarity = np.asarray(similarity, dtype=np.float64)
  if similarity.ndim != 2:
    raise ValueError(f'similarity must be [N, M]; received shape {similarity.shape}.')
  if similarity.size == 0:
    empty = np.zeros(0, dtype=np.int64)
    return empty, empty
  if allowed is None:
    allowed = np.ones(similarity.shape, dtype=bool)
  allowed = np.asarray(allowed, dtype=bool)
  if allowed.shape != similarity.shape:
    raise ValueError(f'allowed must have the shape of similarity {similarity.shape}; '
                     f'received {allowed.shape}.')
  # A finite penalty (scipy rejects infeasible all-inf rows) below any sum of
  # allowed similarities, which lie in [-1, 1].
  penalty = -2.0 * (min(similarity.shape) + 1)
  masked = np.where(allowed, similarity, penalty)
  rows, cols = optimize.linear_sum_assignment(masked, maximize=True)
  keep = allowed[rows, cols] & (similarity[rows, cols] > threshold)
  return rows[keep].astype(np.int64), cols[keep].astype(np.int64)


def class_agreement(classes_a: Sequence[int], classes_b: Sequence[int]) -> np.ndarray:
  """bool [len(a), len(b)], True where the classes are equal."""
  return np.asarray(classes_a)[:, None] == np.asarray(classes_b)[None, :]
