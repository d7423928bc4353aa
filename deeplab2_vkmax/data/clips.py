"""Cutting a sequence into the clips the model segments (paper Sec. 3.1-3.2).

The one place where the clip length T decides how a video is cut. Near-online
(T >= 2): consecutive clips share one frame, on which Video Stitching matches
their segments; online (T = 1): clips are single frames, no overlap. The last
clip of a sequence is padded by repeating its last frame; padding frames carry
frame id -1 and are never scored or emitted. Everything downstream (model, loss,
post-processor, associater) reads T from the arrays it receives.

Numpy only: used by the evaluator, the trainer's evaluation, the Predictor and
the benches.
"""

import dataclasses
from typing import Iterable, Iterator, List, Tuple

import numpy as np


def clip_overlap(clip_length: int) -> int:
  """Frames two consecutive clips share: 1 near-online (T >= 2), 0 online (T = 1)."""
  if clip_length < 1:
    raise ValueError(f'clip_length must be >= 1; received {clip_length}.')
  return 1 if clip_length >= 2 else 0


def clip_starts(num_frames: int, clip_length: int) -> List[int]:
  """First frame of each clip of a `num_frames`-frame sequence.

  Every frame is covered; the last clip may run past the end (then padded).
  """
  overlap = clip_overlap(clip_length)
  return list(range(0, max(num_frames - overlap, 1), clip_length - overlap))


@dataclasses.dataclass(frozen=True)
class ClipIndex:
  """Where one clip lies in its sequence.

  Attributes:
    frame_ids: int32 [T] frame index of each clip frame; -1 marks padding.
    take: int [T] the sequence frame to read for each clip frame (padding
      repeats the last frame).
    num_new: frames of this clip no earlier clip covered (what the associater
      emits for it).
  """
  frame_ids: np.ndarray
  take: np.ndarray
  num_new: int


def sequence_clips(num_frames: int, clip_length: int) -> Iterator[ClipIndex]:
  """The clips of a sequence whose length is known, in order."""
  covered = 0  # Frames covered by earlier clips.
  for start in clip_starts(num_frames, clip_length):
    frames = np.arange(start, start + clip_length)
    end = min(start + clip_length, num_frames)
    yield ClipIndex(frame_ids=np.where(frames < num_frames, frames, -1).astype(np.int32),
                    take=np.minimum(frames, num_frames - 1),
                    num_new=end - max(covered, start))
    covered = end


def stream_clips(frames: Iterable[np.ndarray], clip_length: int
                 ) -> Iterator[Tuple[List[int], np.ndarray, int]]:
  """The clips of a stream of frames whose length is unknown, as frames arrive.

  Cuts exactly as `sequence_clips` would for the same number of frames; each
  clip is yielded as soon as its last frame has arrived.

  Args:
    frames: [H, W, ...] arrays of one video, in order.
    clip_length: T.

  Yields:
    (frame ids [T] with -1 for padding, the stacked clip [T, H, W, ...], the
    number of frames no earlier clip covered).
  """
  overlap = clip_overlap(clip_length)
  clip: List[np.ndarray] = []
  frame_ids: List[int] = []
  emitted_one = False
  for index, frame in enumerate(frames):
    clip.append(frame)
    frame_ids.append(index)
    if len(clip) == clip_length:
      yield frame_ids, np.stack(clip), clip_length - overlap * emitted_one
      emitted_one = True
      # The next clip starts with the frames this one shares with it.
      clip, frame_ids = clip[clip_length - overlap:], frame_ids[clip_length - overlap:]
  if len(clip) > (overlap if emitted_one else 0):
    padding = clip_length - len(clip)
    num_new = len(clip) - overlap * emitted_one
    yield (frame_ids + [-1] * padding, np.stack(clip + [clip[-1]] * padding), num_new)
