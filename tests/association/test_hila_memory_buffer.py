"""HiLAMemoryBuffer: Eq. (4) constant-velocity location memory."""

import numpy as np
import pytest

from deeplab2_vkmax.association import hila_memory_buffer


def test_hila_memory_constant_velocity():
  memory = hila_memory_buffer.HiLAMemoryBuffer(tau=10)
  ids, cls, emb = np.array([1, 2]), np.array([13, 13]), np.eye(2)
  # Step 0, frames 0-1: object 1 moves +0.1 in x per frame; object 2 is new at
  # frame 1 only (zero velocity).
  boxes = np.array([[[0.0, 0.0, 0.1, 0.1], [0.0, 0.0, 0.0, 0.0]],
                    [[0.1, 0.0, 0.2, 0.1], [0.5, 0.5, 0.6, 0.6]]])
  present = np.array([[True, False], [True, True]])
  memory.encode(track_ids=ids, classes=cls, embeddings=emb,
                frame_indices=np.array([0, 1]), boxes=boxes, present=present)
  np.testing.assert_allclose(memory.velocities, [[0.1, 0, 0.1, 0], [0, 0, 0, 0]])
  # Step 1, frame 2: nobody seen; boxes advance by their velocity (Eq. (4)).
  memory.encode(track_ids=ids[:0], classes=cls[:0], embeddings=emb[:0],
                frame_indices=np.array([2]), boxes=np.zeros((1, 0, 4)),
                present=np.zeros((1, 0), dtype=bool))
  np.testing.assert_allclose(memory.boxes, [[0.2, 0, 0.3, 0.1], [0.5, 0.5, 0.6, 0.6]])
  # Prediction to frame 4 extrapolates two more frames.
  np.testing.assert_allclose(memory.predicted_boxes(np.array([0]), np.array([4])),
                             [[[0.4, 0, 0.5, 0.1]]])
  with pytest.raises(ValueError, match='continue from frame 2'):
    memory.encode(track_ids=ids, classes=cls, embeddings=emb,
                  frame_indices=np.array([5]), boxes=np.zeros((1, 2, 4)),
                  present=np.ones((1, 2), dtype=bool))
