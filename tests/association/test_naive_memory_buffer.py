"""NaiveMemoryBuffer: Eq. (3) appearance EMA and the tau refresh."""

import numpy as np

from deeplab2_vkmax.association import naive_memory_buffer


def test_naive_memory_ema_and_refresh():
  memory = naive_memory_buffer.NaiveMemoryBuffer(lam=0.8, tau=2)
  kwargs = dict(frame_indices=np.array([0]), boxes=np.zeros((1, 1, 4)),
                present=np.ones((1, 1), dtype=bool))
  memory.encode(track_ids=np.array([7]), classes=np.array([13]),
                embeddings=np.array([[1.0, 0.0]]), **kwargs)
  kwargs['frame_indices'] = np.array([1])
  memory.encode(track_ids=np.array([7]), classes=np.array([13]),
                embeddings=np.array([[0.0, 1.0]]), **kwargs)
  np.testing.assert_allclose(memory.embeddings, [[0.2, 0.8]])  # Eq. (3).
  for first_frame in (2, 3):
    memory.refresh(first_frame)
    assert len(memory) == 1  # last seen at frame 1: 3 - 1 = 2 <= tau = 2.
  memory.refresh(4)
  assert len(memory) == 0


def test_horizon_counts_frames_from_last_present_frame():
  memory = naive_memory_buffer.NaiveMemoryBuffer(tau=3)
  # One step with three new frames (5, 6, 7): object 1 present on frames 5-6,
  # object 2 on frame 5 only, object 3 never (not written).
  present = np.array([[True, True, False], [True, False, False],
                      [False, False, False]])
  memory.encode(track_ids=np.array([1, 2, 3]), classes=np.array([13, 13, 13]),
                embeddings=np.eye(3), frame_indices=np.array([5, 6, 7]),
                boxes=np.zeros((3, 3, 4)), present=present)
  np.testing.assert_array_equal(memory.track_ids, [1, 2])
  np.testing.assert_array_equal(memory.last_seen_frame, [6, 5])
  # A detection first present at frame 8 or 9: 9 - 5 = 4 > tau for object 2.
  np.testing.assert_array_equal(
      memory.within_horizon(np.array([8, 9]), np.array([0, 1])),
      [[True, True], [True, False]])
  memory.refresh(9)
  np.testing.assert_array_equal(memory.track_ids, [1])
