"""TFLite export of the clip function: outputs match the SavedModel's function."""

import json

import numpy as np
import pytest
import tensorflow as tf

import conftest

# TF 2.20 announces the interpreter's move to ai_edge_litert; it still works.
pytestmark = pytest.mark.filterwarnings('ignore:.*tf.lite.Interpreter is deprecated')
from deeplab2_vkmax import common
from deeplab2_vkmax import export_model


@pytest.fixture(scope='module')
def clip():
  return conftest.synthetic_frames(2, 64, 128)


def _run_tflite(path, clip):
  interpreter = tf.lite.Interpreter(model_path=path)
  interpreter.allocate_tensors()
  interpreter.set_tensor(interpreter.get_input_details()[0]['index'], clip)
  interpreter.invoke()
  outputs = interpreter.get_output_details()
  assert len(outputs) == len(export_model.TFLITE_OUTPUTS)
  return {name: interpreter.get_tensor(detail['index'])
          for name, detail in zip(export_model.TFLITE_OUTPUTS, outputs)}


# Measured on this untrained model (many near-ties): 1.0, 0.9987, 0.9485. The
# quantized variants convert again (about 15 s each): slow tier.
@pytest.mark.parametrize('quantization,min_agreement', [
    ('none', 0.999),
    pytest.param('float16', 0.99, marks=pytest.mark.slow),
    pytest.param('dynamic_range', 0.9, marks=pytest.mark.slow)])
def test_tflite_outputs_match_the_saved_model_function(tiny_export, clip, tmp_path,
                                                       quantization, min_agreement):
  _, module = tiny_export
  path = export_model.export_tflite(module, clip.shape[:3], str(tmp_path / 'clip.tflite'),
                                    quantization)
  description = json.loads((tmp_path / 'clip.tflite.json').read_text())
  assert description == {'input_shape': [2, 64, 128, 3], 'input_dtype': 'uint8',
                         'outputs': list(export_model.TFLITE_OUTPUTS),
                         'quantization': quantization}
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
  from deeplab2_vkmax.model import builder
  config = conftest.tiny_config()
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
