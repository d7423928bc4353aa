"""Tests of the streaming Python API `deeplab2_vkmax.Predictor`."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import vkmax_testing
import deeplab2_vkmax
from deeplab2_vkmax import predictor as predictor_lib

_DIVISOR = 1000


@pytest.fixture(scope='module')
def frames():
  return vkmax_testing.synthetic_frames(6)


@pytest.fixture(scope='module')
def predictor(keras_predictor):
  return keras_predictor


def test_import_does_not_load_tensorflow():
  code = ('import sys, deeplab2_vkmax; assert "tensorflow" not in sys.modules; '
          'assert deeplab2_vkmax.Predictor.__name__ == "Predictor"; '
          'assert "tensorflow" not in sys.modules')
  subprocess.run([sys.executable, '-c', code], check=True)


def test_reads_options_from_config(predictor):
  assert predictor.clip_length == 2 and predictor.mode == 'near_online'
  assert predictor.descriptor.name == 'synthetic'


@pytest.mark.parametrize('num_frames,clip_length', [(1, 2), (2, 2), (5, 2), (4, 3), (6, 3)])
def test_every_frame_once_in_order(predictor, frames, num_frames, clip_length):
  predictor = predictor.with_options(clip_length=clip_length)
  results = list(predictor.predict_video(iter(frames[:num_frames])))
  assert [r.frame_index for r in results] == list(range(num_frames))
  for result in results:
    assert result.panoptic.shape == (64, 128) and result.panoptic.dtype == np.int32
    np.testing.assert_array_equal(result.semantic[result.panoptic < 255000],
                                  result.panoptic[result.panoptic < 255000] // _DIVISOR)


@pytest.mark.parametrize('queue_depth', [0, 1])
def test_streams_with_bounded_lookahead(predictor, frames, queue_depth):
  predictor = predictor.with_options(queue_depth=queue_depth)
  consumed = []

  def stream():
    for index, frame in enumerate(frames):
      consumed.append(index)
      yield frame

  stride = predictor.clip_length - 1
  for result in predictor.predict_video(stream()):
    # A frame is final once its clip ran: at most T - 1 frames beyond it were
    # read, plus the clips the model stage runs ahead (queued, and the one it
    # holds while it waits to queue it).
    ahead = consumed[-1] - result.frame_index
    assert ahead <= predictor.clip_length - 1 + (queue_depth + 1) * stride * (queue_depth > 0)
  assert predictor.clock.frames['model'] == predictor.clock.frames['host'] == len(frames)


def test_first_clip_keeps_segments_and_relabels_things(predictor, frames):
  clip_panoptic = predictor.segment_clip(frames[:2])['panoptic_pred']
  results = list(predictor.predict_video(frames[:2]))
  for clip_frame, result in zip(clip_panoptic, results):
    np.testing.assert_array_equal(result.panoptic // _DIVISOR, clip_frame // _DIVISOR)
    # Track ids come from the associater's counter: 1, 2, ... in the first clip.
    track_ids = sorted({s['track_id'] for s in result.segments if s['track_id']})
    assert track_ids and track_ids[0] >= 1
    for segment in result.segments:
      assert segment['area'] == int((result.panoptic == segment['id']).sum())
      ys, xs = np.nonzero(result.panoptic == segment['id'])
      assert segment['box'] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
      assert segment['score'] is not None and segment['score'] > 0
      assert segment['class_name'] == predictor.descriptor.class_names[segment['class']]


def test_online_mode_uses_single_frames(predictor, frames):
  predictor = predictor.with_options(mode='online')
  assert predictor.clip_length == 1
  results = list(predictor.predict_video(frames[:3]))
  assert [r.frame_index for r in results] == [0, 1, 2]
  single = predictor.segment_clip(frames[1:2])['panoptic_pred'][0]
  np.testing.assert_array_equal(results[1].panoptic // _DIVISOR, single // _DIVISOR)


def test_checkpoint_and_config_match_keras_model(tiny_export, predictor, frames, tmp_path):
  _, module = tiny_export
  prefix = tf.train.Checkpoint(**module.model.checkpoint_items).save(str(tmp_path / 'ckpt'))
  config_file = tmp_path / 'config.textproto'
  config_file.write_text(str(vkmax_testing.tiny_config()))
  assert os.path.dirname(prefix) == str(tmp_path)
  # A run directory resolves to its latest checkpoint (here `prefix`).
  from_run_dir = deeplab2_vkmax.Predictor(str(tmp_path), config_file=str(config_file))
  expected = [r.panoptic for r in predictor.predict_video(frames[:3])]
  got = [r.panoptic for r in from_run_dir.predict_video(frames[:3])]
  assert len(got) == 3
  for a, b in zip(expected, got):
    np.testing.assert_array_equal(a, b)


def test_bad_arguments_and_frames(tiny_export, predictor, frames, tmp_path):
  with pytest.raises(predictor_lib.PredictorError, match='mode must be one of'):
    deeplab2_vkmax.Predictor(tiny_export[0], mode='offline')
  with pytest.raises(predictor_lib.PredictorError, match='clip_length=2'):
    predictor.with_options(mode='online', clip_length=2)
  with pytest.raises(predictor_lib.PredictorError, match='clip_length >= 2'):
    predictor.with_options(mode='near_online', clip_length=1)
  assert predictor.with_options(clip_length=1).mode == 'online'  # The mode follows T.
  assert predictor.clip_length == 2  # with_options leaves the original alone.
  with pytest.raises(predictor_lib.PredictorError, match='needs a config file'):
    deeplab2_vkmax.Predictor(str(tmp_path))
  with pytest.raises(predictor_lib.PredictorError, match='no checkpoint found'):
    deeplab2_vkmax.Predictor(str(tmp_path), config_file=vkmax_testing.TINY_CONFIG)
  with pytest.raises(predictor_lib.PredictorError, match='frame 1: size'):
    list(predictor.predict_video([frames[0], frames[1][:32]]))
  with pytest.raises(predictor_lib.PredictorError, match='frame 0: expected uint8'):
    list(predictor.predict_video([frames[0].astype(np.float32)]))
