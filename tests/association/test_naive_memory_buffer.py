"""NaiveMemoryBuffer: Eq. (3) appearance EMA and the tau refresh."""

import numpy as np

from deeplab2_vkmax.association import naive_memory_buffer


def test_naive_memory_ema_and_refresh():
  memory = naive_memory_buffer.NaiveMemoryBuffer(lam=0.8, tau=2)
  kwargs = dict(frame_indices=np.array([0]), boxes=np.zeros((1, 1, 4)),
                present=np.ones((1, 1), dtype=bool))
  memory.encode(step=0, track_ids=np.array([7]), classes=np.array([13]),
                embeddings=np.array([[1.0, 0.0]]), **kwargs)
  kwargs['frame_indices'] = np.array([1])
  memory.encode(step=1, track_ids=np.array([7]), classes=np.array([13]),
                embeddings=np.array([[0.0, 1.0]]), **kwargs)
  np.testing.assert_allclose(memory.embeddings, [[0.2, 0.8]])  # Eq. (3).
  for step in (2, 3):
    memory.refresh(step)
    assert len(memory) == 1  # 3 - 1 = 2 steps ago: still within tau = 2.
  memory.refresh(4)
  assert len(memory) == 0
