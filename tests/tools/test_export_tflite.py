"""TFLite export of the clip function: outputs match the SavedModel's function."""

import json

import numpy as np
import pytest
import tensorflow as tf

import vkmax_testing

# TF 2.20 announces the interpreter's move to ai_edge_litert; it still works.
pytestmark = pytest.mark.filterwarnings('ignore:.*tf.lite.Interpreter is deprecated')
from deeplab2_vkmax import common
from deeplab2_vkmax import export_model


@pytest.fixture(scope='module')
def clip():
  return vkmax_testing.synthetic_frames(2, 64, 128)


@pytest.fixture(scope='module')
def float32_tflite(tiny_export, tmp_path_factory):
  """The tiny model as a float32 TFLite file for 2 x 64 x 128 clips, with config."""
  path = str(tmp_path_factory.mktemp('tflite') / 'clip.tflite')
  return export_model.export_tflite(tiny_export[1], (2, 64, 128), path,
                                    config=vkmax_testing.tiny_config())


def _run_tflite(path, clip):
  interpreter = tf.lite.Interpreter(model_path=path)
  interpreter.allocate_tensors()
  interpreter.set_tensor(interpreter.get_input_details()[0]['index'], clip)
  interpreter.invoke()
  outputs = interpreter.get_output_details()
  assert len(outputs) == len(export_model.TFLITE_OUTPUTS)
  return {name: interpreter.get_tensor(detail['index'])
          for name, detail in zip(export_model.TFLITE_OUTPUTS, outputs)}


# Measured on this untrained model (many near-ties): 1.0, 0.9987, 0.9485. Every
# conversion takes 15-25 s: slow tier (the float32 file is shared by the tests below).
@pytest.mark.parametrize('quantization,min_agreement', [
    pytest.param('none', 0.999, marks=pytest.mark.slow),
    pytest.param('float16', 0.99, marks=pytest.mark.slow),
    pytest.param('dynamic_range', 0.9, marks=pytest.mark.slow)])
def test_tflite_outputs_match_the_saved_model_function(tiny_export, clip, tmp_path, request,
                                                       quantization, min_agreement):
  _, module = tiny_export
  if quantization == 'none':
    path = request.getfixturevalue('float32_tflite')
  else:
    path = export_model.export_tflite(module, clip.shape[:3], str(tmp_path / 'clip.tflite'),
                                      quantization)
  with open(path + '.json', encoding='utf-8') as f:
    description = json.load(f)
  config_text = description.pop('config', None)
  assert description == {'input_shape': [2, 64, 128, 3], 'input_dtype': 'uint8',
                         'outputs': list(export_model.TFLITE_OUTPUTS),
                         'quantization': quantization}
  if quantization == 'none':
    assert config_text == str(vkmax_testing.tiny_config())
  ours = _run_tflite(path, clip)
  reference = {k: v.numpy() for k, v in module.segment_clip(tf.constant(clip)).items()}
  assert len(np.unique(reference[common.PANOPTIC_PRED])) > 2  # Segments to compare.
  for name in export_model.TFLITE_OUTPUTS:
    assert ours[name].shape == reference[name].shape, name
  agreement = np.mean(ours[common.PANOPTIC_PRED] == reference[common.PANOPTIC_PRED])
  assert agreement >= min_agreement
  if quantization == 'none':
    np.testing.assert_array_equal(ours[common.SEGMENT_IDS], reference[common.SEGMENT_IDS])
    np.testing.assert_allclose(ours[common.PRED_QUERY_EMBEDDINGS],
                               reference[common.PRED_QUERY_EMBEDDINGS], atol=1e-4)
    np.testing.assert_allclose(ours[common.SEGMENT_SCORES],
                               reference[common.SEGMENT_SCORES], atol=1e-4)


def test_tflite_export_refuses_bad_options(tiny_export, tmp_path):
  _, module = tiny_export
  with pytest.raises(ValueError, match='quantization must be one of'):
    export_model.export_tflite(module, (2, 64, 128), str(tmp_path / 'x.tflite'), 'int4')
  with pytest.raises(ValueError, match=r'clip shape must be \(T, H, W\)'):
    export_model.export_tflite(module, (2, 64), str(tmp_path / 'x.tflite'))


@pytest.mark.slow  # A model build and a conversion (about 20 s).
def test_export_from_checkpoint_writes_tflite_at_the_requested_size(tmp_path):
  from deeplab2_vkmax.data import dataset as dataset_lib
  from deeplab2_vkmax import builder
  config = vkmax_testing.tiny_config()
  model = builder.build_model(config, dataset_lib.get_dataset_descriptor('synthetic'))
  model(tf.zeros([1, 2, 65, 129, 3]))
  checkpoint = tf.train.Checkpoint(**model.checkpoint_items).write(str(tmp_path / 'ckpt-1'))
  path = export_model.export_from_checkpoint(
      config, checkpoint, str(tmp_path / 'out' / 'clip.tflite'), export_format='tflite',
      tflite_input_size=(33, 65))
  description = json.loads((tmp_path / 'out' / 'clip.tflite.json').read_text())
  assert description['input_shape'] == [config.eval_dataset_options.clip_length, 33, 65, 3]
  outputs = _run_tflite(path, np.zeros(description['input_shape'], np.uint8))
  assert outputs[common.PANOPTIC_PRED].shape == (config.eval_dataset_options.clip_length, 33, 65)


@pytest.mark.slow  # Converts (the shared float32 file).
def test_predictor_on_tflite_tracks_like_the_model(tiny_export, float32_tflite):
  from deeplab2_vkmax import predictor as predictor_lib
  frames = vkmax_testing.synthetic_frames(5)
  tflite = predictor_lib.Predictor(float32_tflite)  # Config from clip.tflite.json.
  assert (tflite.clip_length, tflite.mode, tflite.input_size) == (2, 'near_online', (64, 128))
  reference = predictor_lib.Predictor.from_export_module(
      tiny_export[1], vkmax_testing.tiny_config(), use_tf_function=False)
  got, expected = list(tflite.predict_video(frames)), list(reference.predict_video(frames))
  assert [r.frame_index for r in got] == list(range(5))
  assert any(s['track_id'] > 0 for r in got for s in r.segments)
  agreement = np.mean([np.mean(a.panoptic == b.panoptic) for a, b in zip(got, expected)])
  assert agreement >= 0.999
  with pytest.raises(predictor_lib.PredictorError,
                     match=r'size 32x64, but the TFLite model takes 64x128 frames .*'
                     r'--tflite_input_size=32,64'):
    list(tflite.predict_video(frames[:, :32, :64]))
  with pytest.raises(predictor_lib.PredictorError, match='clips of 2 frames'):
    predictor_lib.Predictor(float32_tflite, clip_length=3)
  with pytest.raises(predictor_lib.PredictorError, match='online mode runs clips of 1 frame'):
    predictor_lib.Predictor(float32_tflite, mode='online')
  with pytest.raises(predictor_lib.PredictorError, match='clips of 2 frames'):
    tflite.with_options(clip_length=3)
  assert tflite.with_options(queue_depth=0).clip_length == 2


@pytest.mark.slow  # Converts (the shared float32 file).
def test_vkmax_predict_cli_runs_the_tflite_model(float32_tflite, tmp_path):
  from PIL import Image
  from deeplab2_vkmax.tools import predict
  frames = vkmax_testing.synthetic_frames(3)
  (tmp_path / 'frames').mkdir()
  for index, frame in enumerate(frames):
    Image.fromarray(frame).save(tmp_path / 'frames' / f'{index}.png')
  args = predict._parse_args([f'--input={tmp_path / "frames"}', f'--tflite={float32_tflite}',
                              f'--output_dir={tmp_path / "out"}', '--no_progress',
                              '--no_overlay_video'])
  assert predict.run(args) == 3
  lines = (tmp_path / 'out' / 'segments.jsonl').read_text().splitlines()
  assert [json.loads(line)['frame_index'] for line in lines] == [0, 1, 2]
  assert sorted(p.name for p in (tmp_path / 'out' / 'panoptic').iterdir()) == [
      '000000.png', '000001.png', '000002.png']
