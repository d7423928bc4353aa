"""End-to-end tests of the SavedModel export and the vkmax-predict CLI.

The tiny untrained model is exported once per session (tests/conftest.py: tiny_export); the
SavedModel is reloaded in a fresh process and the CLI runs as `python -m`.
"""

import json
import os
import subprocess
import sys
import tempfile

import cv2
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

import vkmax_testing
from deeplab2_vkmax import predictor as predictor_lib
from deeplab2_vkmax.data import step_png
from deeplab2_vkmax.data import synthetic

_HERE = os.path.dirname(os.path.abspath(__file__))
_REPO = os.path.dirname(os.path.dirname(_HERE))


def _launch(args):
  """Starts a Python subprocess (the slow parts, TF import and SavedModel load,
  then overlap with each other and with the in-process checks). Output goes to
  temporary files, never to pipes nobody reads yet."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', PYTHONPATH=_REPO)
  stdout, stderr = tempfile.TemporaryFile('w+'), tempfile.TemporaryFile('w+')
  process = subprocess.Popen([sys.executable] + args, stdout=stdout, stderr=stderr,
                             text=True, env=env, cwd=_REPO)
  process.output_files = (stdout, stderr)
  return process


def _finish(process):
  """Waits for a `_launch`ed process; returns a CompletedProcess."""
  process.wait(timeout=600)
  outputs = []
  for f in process.output_files:
    f.seek(0)
    outputs.append(f.read())
    f.close()
  return subprocess.CompletedProcess(process.args, process.returncode, *outputs)


def _predict_cli(*flags):
  return _launch(['-m', 'deeplab2_vkmax.tools.predict', '--no_progress', *flags])


def _write_wrong_saved_model(path):
  """A SavedModel whose only signature is not clip-kMaX's (a config is present,
  so the signature check is what fails)."""
  module = tf.Module()
  module.double = tf.function(lambda x: {'y': 2.0 * x},
                              input_signature=[tf.TensorSpec([None], tf.float32)])
  tf.saved_model.save(module, path, signatures=module.double.get_concrete_function())
  with open(os.path.join(path, predictor_lib.CONFIG_FILENAME), 'w') as f:
    f.write(str(vkmax_testing.tiny_config()))


@pytest.fixture(scope='module')
def runs(tiny_export, tmp_path_factory):
  """Inputs of every subprocess test, and the processes, all started at once."""
  path, _ = tiny_export
  root = tmp_path_factory.mktemp('predict_cli')
  runs = {'root': root}
  # Fresh-process reload: the train crop size and an odd size.
  runs['clips'] = {
      'train_size': vkmax_testing.synthetic_frames(2, 65, 129),
      'odd_size': vkmax_testing.synthetic_frames(2, 97, 251),
  }
  np.savez(root / 'clips.npz', **runs['clips'])
  runs['reload'] = _launch([os.path.join(_HERE, 'reload_saved_model.py'), path,
                            str(root / 'clips.npz'), str(root / 'reloaded.npz')])
  # An MP4 of 5 synthetic frames (near-online, T = 2).
  video = str(root / 'clip.mp4')
  writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*'mp4v'), 10.0, (128, 64))
  for frame in vkmax_testing.synthetic_frames(5):
    writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
  writer.release()
  runs['video'] = video
  runs['mp4'] = _predict_cli(f'--input={video}', f'--saved_model={path}',
                             f'--output_dir={root / "mp4_out"}')
  # A folder of 4 PNG frames with T = 3: clips [0, 1, 2] and [2, 3, pad].
  runs['frames'] = vkmax_testing.synthetic_frames(4)
  folder = root / 'frames'
  folder.mkdir()
  for index, frame in enumerate(runs['frames']):
    Image.fromarray(frame).save(folder / f'frame_{index:03d}.png')
  runs['folder'] = _predict_cli(f'--input={folder}', f'--saved_model={path}',
                                f'--output_dir={root / "folder_out"}', '--clip_length=3')
  # A SavedModel of the wrong kind.
  runs['wrong_model'] = str(root / 'wrong_model')
  _write_wrong_saved_model(runs['wrong_model'])
  Image.fromarray(runs['frames'][0]).save(root / 'frame.png')
  runs['wrong'] = _predict_cli(f'--input={root / "frame.png"}',
                               f'--saved_model={runs["wrong_model"]}',
                               f'--output_dir={root / "wrong_out"}')
  yield runs
  for key in ('reload', 'mp4', 'folder', 'wrong'):
    if runs[key].poll() is None:
      runs[key].kill()
      runs[key].wait()


@pytest.mark.slow  # Slow tier: full-size build or a subprocess.
def test_saved_model_in_fresh_process_matches_keras(tiny_export, runs):
  _, module = tiny_export
  result = _finish(runs['reload'])
  assert result.returncode == 0, result.stderr[-2000:]
  with np.load(runs['root'] / 'reloaded.npz') as reloaded:
    for name, clip in runs['clips'].items():
      keras_outputs = module.segment_clip(tf.constant(clip))  # Eager Keras model.
      panoptic = reloaded[f'{name}/panoptic']
      assert panoptic.shape == clip.shape[:3], name
      np.testing.assert_array_equal(panoptic, keras_outputs['panoptic_pred'].numpy(), name)
      np.testing.assert_array_equal(reloaded[f'{name}/semantic'],
                                    keras_outputs['semantic_pred'].numpy(), name)
      frame_outputs = module.segment_clip(tf.constant(clip[:1]))
      np.testing.assert_array_equal(reloaded[f'{name}/frame_panoptic'],
                                    frame_outputs['panoptic_pred'].numpy(), name)
      # The untrained model with zero thresholds still yields several segments,
      # things among them, so the comparison is not of empty maps.
      assert len(np.unique(panoptic)) >= 3
      assert (panoptic % 1000 > 0).any()


def _check_outputs(output_dir, expected):
  """Checks every output of the CLI against in-process `FrameResult`s."""
  num_frames = len(expected)
  overlays = sorted(os.listdir(os.path.join(output_dir, 'overlays')))
  assert overlays == ['%06d.png' % i for i in range(num_frames)]
  panoptic_files = sorted(os.listdir(os.path.join(output_dir, 'panoptic')))
  assert panoptic_files == overlays
  with open(os.path.join(output_dir, 'segments.jsonl')) as f:
    records = [json.loads(line) for line in f]
  assert [r['frame_index'] for r in records] == list(range(num_frames))
  height, width = expected[0].panoptic.shape
  for result, record, name in zip(expected, records, overlays):
    with Image.open(os.path.join(output_dir, 'overlays', name)) as image:
      assert image.size == (width, height) and image.mode == 'RGB'
    decoded = step_png.read_panoptic_png(os.path.join(output_dir, 'panoptic', name),
                                       synthetic.LABEL_DIVISOR)
    np.testing.assert_array_equal(decoded, result.panoptic)
    assert record['file'] == name
    # Scores: the SavedModel graph and the eager model differ in the last float bits.
    want = json.loads(json.dumps(result.segments))
    assert [s['score'] for s in record['segments']] == pytest.approx(
        [s['score'] for s in want], rel=1e-5)
    assert ([{k: v for k, v in s.items() if k != 'score'} for s in record['segments']]
            == [{k: v for k, v in s.items() if k != 'score'} for s in want])
    assert sum(s['area'] for s in record['segments']) == (result.panoptic < 255000).sum()
    for segment in record['segments']:
      assert set(segment) == {'id', 'class', 'class_name', 'track_id', 'score', 'box', 'area'}
  capture = cv2.VideoCapture(os.path.join(output_dir, 'overlay.mp4'))
  decoded_frames = 0
  while capture.read()[0]:
    decoded_frames += 1
  assert int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)) == width
  capture.release()
  assert decoded_frames == num_frames


def _read_video_rgb(path):
  capture = cv2.VideoCapture(path)
  frames = []
  while True:
    ok, frame = capture.read()
    if not ok:
      break
    frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
  capture.release()
  return frames


@pytest.mark.slow  # Slow tier: runs the CLI in subprocesses.
def test_cli_on_mp4(keras_predictor, runs):
  # The same decoded frames through the Python API give the same outputs.
  expected = list(keras_predictor.predict_video(_read_video_rgb(runs['video'])))
  assert len(expected) == 5
  assert any(s['track_id'] > 0 for r in expected for s in r.segments)
  result = _finish(runs['mp4'])
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'frames/s' in result.stderr
  _check_outputs(str(runs['root'] / 'mp4_out'), expected)


@pytest.mark.slow  # Slow tier: runs the CLI in subprocesses.
def test_cli_on_frame_folder_with_padding(keras_predictor, runs):
  expected = list(keras_predictor.with_options(clip_length=3).predict_video(
      runs['frames']))
  result = _finish(runs['folder'])
  assert result.returncode == 0, result.stderr[-2000:]
  _check_outputs(str(runs['root'] / 'folder_out'), expected)


def _assert_one_line_error(result, *names):
  assert result.returncode != 0
  assert 'Traceback' not in result.stderr
  last_line = result.stderr.strip().splitlines()[-1]
  assert last_line.startswith('error: '), result.stderr[-2000:]
  for name in names:
    assert name in last_line


def _run_now(*flags):
  return _finish(_predict_cli(*flags))


@pytest.mark.slow  # Slow tier: runs the CLI in subprocesses.
def test_missing_and_unreadable_video(tmp_path):
  missing = str(tmp_path / 'missing.mp4')
  _assert_one_line_error(_run_now(f'--input={missing}', '--saved_model=unused',
                                  f'--output_dir={tmp_path}'), missing)
  broken = tmp_path / 'broken.mp4'
  broken.write_bytes(b'this is not a video' * 100)
  _assert_one_line_error(_run_now(f'--input={broken}', '--saved_model=unused',
                                  f'--output_dir={tmp_path}'), str(broken))


@pytest.mark.slow  # Slow tier: runs the CLI in subprocesses.
def test_non_image_in_frame_folder(tmp_path):
  folder = tmp_path / 'frames'
  folder.mkdir()
  Image.fromarray(np.zeros((64, 128, 3), np.uint8)).save(folder / '000000.png')
  (folder / 'notes.txt').write_text('not an image')
  _assert_one_line_error(_run_now(f'--input={folder}', '--saved_model=unused',
                                  f'--output_dir={tmp_path / "out"}'),
                         str(folder / 'notes.txt'))


@pytest.mark.slow  # Slow tier: runs the CLI in subprocesses.
def test_saved_model_of_the_wrong_kind(runs, tmp_path):
  _assert_one_line_error(_finish(runs['wrong']), runs['wrong_model'], 'signature')
  not_a_model = tmp_path / 'empty_dir'
  not_a_model.mkdir()
  with pytest.raises(predictor_lib.PredictorError, match='empty_dir'):
    predictor_lib.Predictor(str(not_a_model))


def _frame(value):
  """A 24x32 RGB frame filled with `value` (its identity in the tests below)."""
  return np.full((24, 32, 3), value, np.uint8)


def test_frame_folder_and_glob_are_read_in_natural_order(tmp_path):
  """frame0 .. frame11 in numeric order, not text order (0, 1, 10, 11, 2, ...)."""
  from deeplab2_vkmax.tools import predict  # pylint: disable=g-import-not-at-top
  folder = tmp_path / 'frames'
  folder.mkdir()
  for index in (10, 2, 0, 11, 1, 9):
    Image.fromarray(_frame(index * 10)).save(folder / f'frame{index}.png')
  for source in (str(folder), str(folder / 'frame*.png')):
    frames, count, _ = predict.open_frames(source)
    assert count == 6
    assert [int(f[0, 0, 0]) // 10 for f in frames] == [0, 1, 2, 9, 10, 11]


def test_animated_gif_yields_every_frame(tmp_path):
  from deeplab2_vkmax.tools import predict  # pylint: disable=g-import-not-at-top
  path = tmp_path / 'clip.gif'
  images = [Image.fromarray(_frame(v)) for v in (0, 60, 120, 180, 240)]
  images[0].save(path, save_all=True, append_images=images[1:], duration=100, loop=0)
  frames, count, _ = predict.open_frames(str(path))
  frames = list(frames)
  assert count == len(frames) == 5
  np.testing.assert_allclose([f.mean() for f in frames], [0, 60, 120, 180, 240], atol=2)
  # A still image stays a one-frame video.
  still = tmp_path / 'still.png'
  Image.fromarray(_frame(50)).save(still)
  frames, count, _ = predict.open_frames(str(still))
  assert count == 1 and len(list(frames)) == 1


def test_non_empty_output_dir_needs_overwrite_which_clears_old_outputs(tmp_path):
  """Old overlays beside a new segments.jsonl would disagree with it."""
  from deeplab2_vkmax.tools import predict  # pylint: disable=g-import-not-at-top
  out = tmp_path / 'out'
  (out / 'overlays').mkdir(parents=True)
  (out / 'overlays' / '000019.png').write_bytes(b'old')
  (out / 'panoptic').mkdir()
  (out / 'segments.jsonl').write_text('old\n')
  (out / 'notes.txt').write_text('the user\'s own file')
  with pytest.raises(predict.InputError, match=r'out: --output_dir is not empty; pass --overwrite'):
    predict.prepare_output_dir(str(out), overwrite=False)
  assert (out / 'overlays' / '000019.png').exists()  # Nothing lost.
  predict.prepare_output_dir(str(out), overwrite=True)
  assert sorted(os.listdir(out)) == ['notes.txt']  # Only what the tool writes goes.
  predict.prepare_output_dir(str(tmp_path / 'new'), overwrite=False)  # Absent: fine.
  with pytest.raises(predict.InputError, match='is a file'):
    predict.prepare_output_dir(str(out / 'notes.txt'), overwrite=True)


@pytest.mark.parametrize('flag, message', [('--clip_length=0', '--clip_length must be >= 1, got 0'),
                                           ('--fps=0', '--fps must be > 0, got 0'),
                                           ('--fps=-5', '--fps must be > 0, got -5')])
def test_out_of_range_flags_are_refused_not_replaced(flag, message, capsys):
  """clip_length 0 and fps 0 used to fall back to the defaults silently."""
  from deeplab2_vkmax.tools import predict  # pylint: disable=g-import-not-at-top
  with pytest.raises(SystemExit) as exit_info:
    predict._parse_args(['--input=x.mp4', '--saved_model=m', '--output_dir=o', flag])  # pylint: disable=protected-access
  assert exit_info.value.code == 2
  assert message in capsys.readouterr().err
