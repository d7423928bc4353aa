"""Hand-built clips shared by the loss tests (imported via pytest's rootdir path)."""

import numpy as np

# Classes: 0 road (stuff), 1 car (thing), 2 person (thing), 3 sky (stuff).
DIV = 1000
VOID = 255 * DIV


def hand_built_clip():
  """Two 4x4 frames: car 1 in both frames (one tube), person 1 in frame 1
  only, crowd person (instance 0) and void in frame 0, road with a stray
  instance id (still one road mask), sky. Returns int32 [1, 2, 4, 4]."""
  frame0 = [[1001, 1001, 0, 0],
            [1001, 1001, 0, 0],
            [2000, 2000, VOID, VOID],
            [3000, 3000, 3000, 3000]]
  frame1 = [[0, 1001, 1001, 5],
            [0, 1001, 1001, 0],
            [2001, 2001, VOID, 0],
            [3000, 3000, 3000, 3000]]
  return np.array([[frame0, frame1]], np.int32)
