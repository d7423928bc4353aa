"""vkmax-predict's frame sources on damaged input (in process, no model)."""

import re

import cv2
import numpy as np

from deeplab2_vkmax.tools import predict


def _write_avi(path, num_frames):
  writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'MJPG'), 10, (32, 24))
  rng = np.random.default_rng(0)
  for _ in range(num_frames):
    writer.write(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
  writer.release()


def test_a_truncated_video_warns_with_expected_and_decoded_counts(tmp_path, capsys):
  whole = tmp_path / 'whole.avi'
  _write_avi(whole, 20)
  data = whole.read_bytes()
  cut = tmp_path / 'cut.avi'
  cut.write_bytes(data[:len(data) // 2])  # The header still announces 20 frames.
  frames, count, _ = predict.open_frames(str(cut))
  decoded = len(list(frames))
  assert count == 20 and 0 < decoded < 20
  warnings = [l for l in capsys.readouterr().err.splitlines() if l.startswith('warning:')]
  assert warnings == [f'warning: {cut}: decoded {decoded} of the 20 frames the video '
                      f'announces (truncated or damaged file); the outputs cover those '
                      f'{decoded}']


def test_a_whole_video_does_not_warn(tmp_path, capsys):
  whole = tmp_path / 'whole.avi'
  _write_avi(whole, 5)
  frames, count, _ = predict.open_frames(str(whole))
  assert len(list(frames)) == count == 5
  assert not re.search('warning', capsys.readouterr().err)
