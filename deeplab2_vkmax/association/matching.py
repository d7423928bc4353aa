"""Pure matching functions for cross-clip association (paper Sec. 3.2, Eq. (5)).

Everything here is stateless: arrays in, arrays out. The stateful parts (memory
buffers, id counter) live in `hila_memory_buffer.py`, `naive_memory_buffer.py` and
`video_associater.py`.

- `dense_segment_index`: panoptic ids -> dense indices 0..K-1 (a lookup-table
  relabelling, O(pixels) with `np.bincount`, no sort when ids are small).
- `boxes_from_masks`: normalised boxes `[x_tl/w, y_tl/h, x_br/w, y_br/h]` of every
  segment of a frame (the location feature of Eq. (4)).
- `overlap_scores`: IoU or dice between the segments of two label maps of the same
  frame (Video Stitching, method.md Sec. 3).
- `mutual_best_matches`: mutual-best pairs of a score matrix above a threshold.
- `hila_similarity` / `appearance_similarity`: Eq. (5) and its appearance-only
  (naive-MB) special case.
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
  return np.bincount(flat[flat >= 0], minlength=num_segments)[:num_segments]


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
  boxes = np.zeros((num_segments, 4), dtype=np.float64)
  if num_segments == 0:
    return boxes, np.zeros(0, dtype=bool)
  rows, cols = np.nonzero(index_map >= 0)
  segment = index_map[rows, cols].astype(np.int64)
  # Row/column occupancy per segment with one bincount each: [K, H] and [K, W].
  row_hits = np.bincount(segment * height + rows,
                         minlength=num_segments * height).reshape(num_segments, height) > 0
  col_hits = np.bincount(segment * width + cols,
                         minlength=num_segments * width).reshape(num_segments, width) > 0
  present = row_hits.any(axis=1)
  y_tl = np.argmax(row_hits, axis=1)
  y_br = height - np.argmax(row_hits[:, ::-1], axis=1)
  x_tl = np.argmax(col_hits, axis=1)
  x_br = width - np.argmax(col_hits[:, ::-1], axis=1)
  boxes[:, 0] = x_tl / width
  boxes[:, 1] = y_tl / height
  boxes[:, 2] = x_br / width
  boxes[:, 3] = y_br / height
  boxes[~present] = 0.0
  return boxes, present


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
  area_a = segment_areas(a, num_a).astype(np.float64)
  area_b = segment_areas(b, num_b).astype(np.float64)
  both = (a >= 0) & (b >= 0)
  intersection = np.bincount(a[both].astype(np.int64) * num_b + b[both],
                             minlength=num_a * num_b).reshape(num_a, num_b)
  intersection = intersection.astype(np.float64)
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


def hila_similarity(query_boxes: np.ndarray, query_embeddings: np.ndarray,
                    memory_boxes: np.ndarray, memory_embeddings: np.ndarray,
                    *, temperature: float = 1.0,
                    distance: str = 'squared_l2') -> np.ndarray:
  """Eq. (5): `f(i, j) = exp(-dist(b_i, b_hat_j) / T) * cos(q_i, q_hat_j)`.

  Args:
    query_boxes: float [N, 4] normalised boxes of the current objects.
    query_embeddings: float [N, D].
    memory_boxes: float [M, 4] memory boxes (already predicted to the query
      frame, or paired per query: [N, M, 4]).
    memory_embeddings: float [M, D].
    temperature: T in Eq. (5), > 0.
    distance: 'squared_l2' (paper, `||b_i - b_hat_j||^2`) or 'l2' (the PyTorch
      release, `||b_i - b_hat_j||`).

  Returns:
    float64 [N, M].
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
  return np.exp(-dist / temperature) * cosine_similarity(query_embeddings,
                                                         memory_embeddings)


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
