"""The clip cutter: which frames each clip holds, for known-length sequences and streams."""

import numpy as np
import pytest

from deeplab2_vkmax.data import clips


@pytest.mark.parametrize('clip_length', [1, 2, 3, 5])
def test_every_frame_is_new_in_exactly_one_clip(clip_length):
  overlap = clips.clip_overlap(clip_length)
  assert overlap == (0 if clip_length == 1 else 1)
  for num_frames in range(1, 12):
    cut = list(clips.sequence_clips(num_frames, clip_length))
    new_frames = []
    for index in cut:
      real = index.frame_ids[index.frame_ids >= 0]
      # Padding only at the end, repeating the last frame.
      assert list(index.frame_ids) == list(real) + [-1] * (clip_length - len(real))
      assert list(index.take) == list(real) + [num_frames - 1] * (clip_length - len(real))
      new_frames.extend(real[len(real) - index.num_new:])
    assert new_frames == list(range(num_frames)), (num_frames, clip_length)
    starts = [int(index.frame_ids[0]) for index in cut]
    assert starts == clips.clip_starts(num_frames, clip_length)
    # Consecutive clips share exactly `overlap` frames.
    assert all(b - a == clip_length - overlap for a, b in zip(starts, starts[1:]))


@pytest.mark.parametrize('clip_length', [1, 2, 3])
def test_a_stream_is_cut_like_a_sequence_of_its_length(clip_length):
  for num_frames in range(1, 10):
    frames = [np.full((2, 3), i) for i in range(num_frames)]
    streamed = list(clips.stream_clips(iter(frames), clip_length))
    known = list(clips.sequence_clips(num_frames, clip_length))
    assert len(streamed) == len(known)
    for (frame_ids, clip, num_new), index in zip(streamed, known):
      assert frame_ids == list(index.frame_ids)
      assert index.num_new == num_new
      np.testing.assert_array_equal(clip, np.stack(frames)[index.take])


def test_stream_yields_each_clip_as_soon_as_its_last_frame_arrived():
  arrived = []

  def frames():
    for i in range(5):
      arrived.append(i)
      yield np.zeros((1, 1))

  for frame_ids, _, _ in clips.stream_clips(frames(), 2):
    assert arrived[-1] == max(frame_ids)  # Nothing read past the clip.


def test_clip_length_below_one_is_refused():
  with pytest.raises(ValueError, match='clip_length must be >= 1; received 0'):
    clips.clip_starts(4, 0)
