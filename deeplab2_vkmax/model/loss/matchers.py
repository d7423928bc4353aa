"""In-graph Hungarian matching for the kMaX losses.

The kMaX training objective (docs/loss.md; paper Sec. 3.1,
clip-kMaX trained with the kMaX-DeepLab losses) assigns every ground-truth mask
to one prediction slot by minimising the total matching cost. The assignment is
solved inside the train step, so it must be pure TensorFlow: it runs eagerly,
inside `tf.function` and under `jit_compile=True` (TPU/XLA), with static shapes
and no `numpy_function`.

Algorithm: shortest augmenting paths with dual variables (Jonker-Volgenant, in
the form Crouse describes for rectangular problems; the same family as
`scipy.optimize.linear_sum_assignment`). Rows are inserted one at a time; for
each, a Dijkstra-like search over reduced costs finds the cheapest path to a
free column, the duals are updated and the path is flipped. Every batch element
runs the same loop with a per-element "still searching" flag, so the batch is
solved in one `tf.while_loop` nest of `[B, n]` vector operations.
Complexity O(n^3) worst case, O(n^2 log n) typical on random costs.
"""

import tensorflow as tf


def _one_hot_bool(indices: tf.Tensor, depth: int) -> tf.Tensor:
  """[B] int32 -> [B, depth] bool, True at `indices` (none where index < 0)."""
  return tf.equal(tf.range(depth, dtype=tf.int32)[tf.newaxis, :],
                  indices[:, tf.newaxis])


def _gather_rows(values: tf.Tensor, indices: tf.Tensor) -> tf.Tensor:
  """Per batch element picks `values[b, indices[b]]`; [B, n, ...], [B] -> [B, ...]."""
  return tf.gather(values, tf.maximum(indices, 0), batch_dims=1)


def _solve_wide(cost: tf.Tensor) -> tf.Tensor:
  """Solves the assignment for cost [B, R, C] with R <= C.

  Args:
    cost: A [B, R, C] float tensor of finite costs, R <= C.

  Returns:
    col4row: A [B, R] int32 tensor, the column assigned to every row.
  """
  # A static batch size keeps loop-variable shapes fixed across iterations.
  batch_size = cost.shape[0] if cost.shape[0] is not None else tf.shape(cost)[0]
  num_rows = cost.shape[1]
  num_cols = cost.shape[2]
  dtype = cost.dtype
  inf = tf.constant(float('inf'), dtype)
  zero = tf.zeros([], dtype)

  u = tf.zeros([batch_size, num_rows], dtype)  # Row duals.
  v = tf.zeros([batch_size, num_cols], dtype)  # Column duals.
  col4row = -tf.ones([batch_size, num_rows], tf.int32)
  row4col = -tf.ones([batch_size, num_cols], tf.int32)

  def insert_row(cur_row, u, v, col4row, row4col):
    """Augments the current matching with row `cur_row` in every batch element."""
    cur = tf.fill([batch_size], cur_row)
    path_cost = tf.fill([batch_size, num_cols], inf)  # Shortest reduced costs.
    path = -tf.ones([batch_size, num_cols], tf.int32)  # Predecessor row.
    rows_seen = tf.zeros([batch_size, num_rows], tf.bool)
    cols_seen = tf.zeros([batch_size, num_cols], tf.bool)
    min_val = tf.zeros([batch_size], dtype)
    sink = -tf.ones([batch_size], tf.int32)

    def search_cond(i, min_val, sink, path_cost, path, rows_seen, cols_seen):
      del i, min_val, path_cost, path, rows_seen, cols_seen
      return tf.reduce_any(sink < 0)

    def search_body(i, min_val, sink, path_cost, path, rows_seen, cols_seen):
      active = sink < 0  # [B]
      rows_seen = tf.logical_or(
          rows_seen,
          tf.logical_and(_one_hot_bool(i, num_rows), active[:, tf.newaxis]))
      cost_i = _gather_rows(cost, i)  # [B, C]
      u_i = _gather_rows(u, i)  # [B]
      reduced = min_val[:, tf.newaxis] + cost_i - u_i[:, tf.newaxis] - v
      better = tf.logical_and(
          tf.logical_and(tf.logical_not(cols_seen), reduced < path_cost),
          active[:, tf.newaxis])
      path = tf.where(better, i[:, tf.newaxis], path)
      path_cost = tf.where(better, reduced, path_cost)
      # Cheapest unvisited column; among ties prefer a free one (ends the search
      # sooner, as scipy does).
      open_cost = tf.where(cols_seen, inf, path_cost)
      lowest = tf.reduce_min(open_cost, axis=1)  # [B]
      candidate = tf.logical_and(tf.logical_not(cols_seen),
                                 tf.equal(open_cost, lowest[:, tf.newaxis]))
      free_candidate = tf.logical_and(candidate, row4col < 0)
      j = tf.where(
          tf.reduce_any(free_candidate, axis=1),
          tf.argmax(tf.cast(free_candidate, tf.int32), axis=1,
                    output_type=tf.int32),
          tf.argmax(tf.cast(candidate, tf.int32), axis=1,
                    output_type=tf.int32))
      min_val = tf.where(active, lowest, min_val)
      cols_seen = tf.logical_or(
          cols_seen,
          tf.logical_and(_one_hot_bool(j, num_cols), active[:, tf.newaxis]))
      owner = _gather_rows(row4col, j)  # Row currently holding column j.
      reached_free = tf.logical_and(active, owner < 0)
      sink = tf.where(reached_free, j, sink)
      i = tf.where(tf.logical_and(active, owner >= 0), owner, i)
      return i, min_val, sink, path_cost, path, rows_seen, cols_seen

    _, min_val, sink, path_cost, path, rows_seen, cols_seen = tf.while_loop(
        search_cond, search_body,
        (cur, min_val, sink, path_cost, path, rows_seen, cols_seen),
        maximum_iterations=num_rows + 1)

    # Dual update keeps reduced costs non-negative on the new matching.
    is_cur = _one_hot_bool(cur, num_rows)
    cost_at_match = tf.gather(path_cost, tf.maximum(col4row, 0),
                              batch_dims=1)  # [B, R]
    row_delta = tf.where(
        is_cur, min_val[:, tf.newaxis],
        tf.where(rows_seen, min_val[:, tf.newaxis] - cost_at_match, zero))
    u = u + row_delta
    v = v - tf.where(cols_seen, min_val[:, tf.newaxis] - path_cost, zero)

    # Flip the augmenting path from the sink back to `cur_row`.
    def flip_cond(j, done, col4row, row4col):
      del j, col4row, row4col
      return tf.logical_not(tf.reduce_all(done))

    def flip_body(j, done, col4row, row4col):
      todo = tf.logical_not(done)
      i = _gather_rows(path, j)  # [B]
      row4col = tf.where(
          tf.logical_and(_one_hot_bool(j, num_cols), todo[:, tf.newaxis]),
          i[:, tf.newaxis], row4col)
      previous_col = _gather_rows(col4row, i)
      col4row = tf.where(
          tf.logical_and(_one_hot_bool(i, num_rows), todo[:, tf.newaxis]),
          j[:, tf.newaxis], col4row)
      j = tf.where(todo, previous_col, j)
      done = tf.logical_or(done, tf.equal(i, cur))
      return j, done, col4row, row4col

    _, _, col4row, row4col = tf.while_loop(
        flip_cond, flip_body,
        (sink, tf.zeros([batch_size], tf.bool), col4row, row4col),
        maximum_iterations=num_rows + 1)
    return cur_row + 1, u, v, col4row, row4col

  _, _, _, col4row, _ = tf.while_loop(
      lambda cur_row, *_: cur_row < num_rows, insert_row,
      (tf.constant(0, tf.int32), u, v, col4row, row4col))
  return col4row


def hungarian_matching(cost: tf.Tensor) -> tf.Tensor:
  """Minimum-cost assignment between rows and columns, batched and in-graph.

  Every row is matched to at most one column and every column to at most one
  row; exactly min(N, M) pairs are matched per batch element and their summed
  cost is minimal (ties broken arbitrarily but deterministically).

  Args:
    cost: A [B, N, M] float tensor (float32 or float64) of finite costs. N and M
      must be static; the batch size may be dynamic.

  Returns:
    A [B, N, M] tensor of the same dtype as `cost`, 1.0 at matched (row, column)
    pairs and 0.0 elsewhere.

  Raises:
    ValueError: If `cost` is not rank 3 or its last two dimensions are not
      static.
  """
  cost = tf.convert_to_tensor(cost)
  if cost.shape.rank != 3 or cost.shape[1] is None or cost.shape[2] is None:
    raise ValueError('hungarian_matching expects a [B, N, M] cost with static N '
                     f'and M; got shape {cost.shape}.')
  if not cost.dtype.is_floating:
    cost = tf.cast(cost, tf.float32)
  num_rows, num_cols = cost.shape[1], cost.shape[2]
  if num_rows == 0 or num_cols == 0:
    return tf.zeros_like(cost)
  # The solver needs rows <= columns; a tall problem is solved transposed.
  transposed = num_rows > num_cols
  wide_cost = tf.transpose(cost, [0, 2, 1]) if transposed else cost
  col4row = _solve_wide(tf.stop_gradient(wide_cost))
  assignment = tf.one_hot(col4row, wide_cost.shape[2], dtype=cost.dtype)
  if transposed:
    assignment = tf.transpose(assignment, [0, 2, 1])  # [B, N, M]
  return assignment
