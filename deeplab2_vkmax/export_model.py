"""Exports a trained clip-kMaX as a SavedModel that does its own pre/post-processing.

  python -m deeplab2_vkmax.export_model --config_file=... \
      --checkpoint_path=<run dir or ckpt-N> --output_path=<dir>

Signatures:
  serving_default: `input_tensor` uint8 [T, H, W, 3] (one clip, any H and W)
  serving_frame:   `input_tensor` uint8 [H, W, 3]    (one frame, online use)
Both return int32 `panoptic_pred` and `semantic_pred` [T, H, W] at the input
resolution (T = 1 for serving_frame), and per mask slot n what the cross-clip
associater needs: `segment_ids` [N] (panoptic id, thing instance = the slot's rank + 1, the
same in every frame of the clip), `segment_classes` [N], `segment_scores` [N],
`query_embeddings` [N, E] and `segment_boxes` [T, N, 4] (normalised to the input
size). Frames are padded bottom/right to the next 32k + 1 size (kMaX's crop
grid) with the mean pixel inside the graph, and the outputs cropped back.

The model computes under the run's `solver_options.mixed_precision` policy;
the interface is the same under every policy (uint8 in, float32/int32 out).

`--format=tflite` writes a TensorFlow Lite flatbuffer of the same clip function
instead (built-in ops only, so the stock interpreter and its XNNPACK delegate run
it): one fixed input uint8 [T, H, W, 3] (the config's eval `clip_length` and
`crop_size`, or `--tflite_input_size`) and the seven outputs above, in
`TFLITE_OUTPUTS` order; `<output_path>.json` records the input shape, that order
and the quantization (`--tflite_quantization`: none, dynamic_range weights in
int8, or float16 weights).
"""

import json
import os
from typing import Dict, Optional

from absl import flags

from deeplab2_vkmax import cli

EXPORT_FORMATS = ('saved_model', 'tflite')
TFLITE_QUANTIZATIONS = ('none', 'dynamic_range', 'float16')

if __name__ == '__main__':
  # Defined only when run as a program, so importing this module (as
  # trainer/train.py does) never clashes with the importer's flags; defined
  # before TensorFlow loads so that --help and flag errors answer at once.
  flags.DEFINE_string('config_file', None, 'ExperimentOptions textproto.')
  flags.DEFINE_string('checkpoint_path', None, 'A checkpoint (ckpt-N) or a run directory.')
  flags.DEFINE_string('output_path', None, 'Where the SavedModel (or .tflite file) is written.')
  flags.DEFINE_enum('format', 'saved_model', EXPORT_FORMATS, 'What to write.')
  flags.DEFINE_enum('tflite_quantization', 'none', TFLITE_QUANTIZATIONS,
                    'TFLite weights: float32, int8 (dynamic range) or float16.')
  flags.DEFINE_list('tflite_input_size', None, 'H,W of the TFLite input; default: the '
                    'config\'s eval crop_size.')
  flags.mark_flags_as_required(['config_file', 'checkpoint_path', 'output_path'])
  cli.exit_on_help()
  cli.parse_flags_or_exit()
  cli.quiet_tensorflow()
  cli.initialise_devices()

# pylint: disable=g-import-not-at-top,g-bad-import-order
import keras
import tensorflow as tf

from deeplab2_vkmax import common
from deeplab2_vkmax import config as config_lib
from deeplab2_vkmax.data import dataset as dataset_lib
from deeplab2_vkmax import builder
from deeplab2_vkmax.model import checkpoint_utils
from deeplab2_vkmax.model import precision
from deeplab2_vkmax.protos import config_pb2
# pylint: enable=g-import-not-at-top,g-bad-import-order

_GRID = 32  # kMaX crops are 32k + 1 pixels: every stride-2 stage stays aligned.
class ClipKMaXExportModule(tf.Module):
  """Model + post-processing with uint8 in and panoptic maps out."""

  def __init__(self, model: keras.Model, post_processor):
    super().__init__(name='clip_kmax_export')
    self.model = model
    self._post_processor = post_processor

  def segment_clip(self, clip: tf.Tensor) -> Dict[str, tf.Tensor]:
    """uint8 [T, H, W, 3] -> outputs at [T, H, W] (see module docstring)."""
    shape = tf.shape(clip)
    height, width = shape[1], shape[2]
    padded_height = (height - 1 + _GRID - 1) // _GRID * _GRID + 1
    padded_width = (width - 1 + _GRID - 1) // _GRID * _GRID + 1
    images = tf.cast(clip, tf.float32)
    # Pad with the mean pixel, which the model normalises to 0.
    mean = common.PAD_PIXEL_VALUE
    images = tf.pad(images - mean, [[0, 0], [0, padded_height - height],
                                    [0, padded_width - width], [0, 0]]) + mean
    outputs = self.model(images[tf.newaxis], training=False)  # [1, T, Hp, Wp, 3] in.
    processed = self._post_processor(outputs, tf.stack([padded_height, padded_width]))
    scale = tf.cast(tf.stack([padded_width / width, padded_height / height] * 2), tf.float32)
    return {
        common.PANOPTIC_PRED: processed[common.PANOPTIC_PRED][0, :, :height, :width],
        common.SEMANTIC_PRED: processed[common.SEMANTIC_PRED][0, :, :height, :width],
        common.SEGMENT_IDS: processed[common.SEGMENT_IDS][0],
        common.SEGMENT_CLASSES: processed[common.SEGMENT_CLASSES][0],
        common.SEGMENT_SCORES: processed[common.SEGMENT_SCORES][0],
        common.PRED_QUERY_EMBEDDINGS: processed[common.PRED_QUERY_EMBEDDINGS][0],
        common.SEGMENT_BOXES: tf.minimum(processed[common.SEGMENT_BOXES][0] * scale, 1.0),
    }

  @tf.function(input_signature=[
      tf.TensorSpec([None, None, None, 3], tf.uint8, name=common.EXPORT_INPUT_NAME)])
  def serve(self, input_tensor):
    return self.segment_clip(input_tensor)

  @tf.function(input_signature=[
      tf.TensorSpec([None, None, 3], tf.uint8, name=common.EXPORT_INPUT_NAME)])
  def serve_frame(self, input_tensor):
    return self.segment_clip(input_tensor[tf.newaxis])


def export_saved_model(model: keras.Model, post_processor,
                       config: config_pb2.ExperimentOptions, output_path: str) -> str:
  """Writes the SavedModel of `model` to `output_path` (replaced atomically)."""
  module = ClipKMaXExportModule(model, post_processor)
  temporary = output_path.rstrip('/') + '.tmp'
  if tf.io.gfile.exists(temporary):
    tf.io.gfile.rmtree(temporary)
  tf.saved_model.save(module, temporary, signatures={
      'serving_default': module.serve.get_concrete_function(),
      'serving_frame': module.serve_frame.get_concrete_function(),
  })
  with tf.io.gfile.GFile(os.path.join(temporary, common.CONFIG_FILENAME), 'w') as f:
    f.write(str(config))
  if tf.io.gfile.exists(output_path):
    tf.io.gfile.rmtree(output_path)
  tf.io.gfile.rename(temporary, output_path)
  return output_path


# The TFLite outputs, in order (the interpreter names them Identity, Identity_1, ...).
TFLITE_OUTPUTS = (common.PANOPTIC_PRED, common.SEMANTIC_PRED, common.SEGMENT_IDS,
                  common.SEGMENT_CLASSES, common.SEGMENT_SCORES,
                  common.PRED_QUERY_EMBEDDINGS, common.SEGMENT_BOXES)


def export_tflite(module: ClipKMaXExportModule, clip_shape, output_path: str,
                  quantization: str = 'none',
                  config: Optional[config_pb2.ExperimentOptions] = None) -> str:
  """Writes `module`'s clip function as a TFLite flatbuffer for one clip size.

  Args:
    module: the export module (model + post-processor).
    clip_shape: (T, H, W) of the fixed uint8 input.
    output_path: the .tflite file; `<output_path>.json` describes it.
    quantization: one of `TFLITE_QUANTIZATIONS`.
    config: the run's config, stored in `<output_path>.json` so that
      `Predictor` and `vkmax-predict --tflite` need nothing else.

  Returns:
    `output_path`.

  Raises:
    ValueError: an unknown quantization or a clip shape that is not 3 positive ints.
  """
  # Imported here: only this export needs TensorFlow's graph freezing (the
  # converter keeps resource variables it cannot initialise otherwise).
  from tensorflow.python.framework import convert_to_constants  # pylint: disable=g-import-not-at-top,g-direct-tensorflow-import
  if quantization not in TFLITE_QUANTIZATIONS:
    raise ValueError(f'tflite quantization must be one of {TFLITE_QUANTIZATIONS}; '
                     f'got "{quantization}"')
  clip_shape = tuple(int(d) for d in clip_shape)
  if len(clip_shape) != 3 or min(clip_shape) < 1:
    raise ValueError(f'the TFLite clip shape must be (T, H, W) > 0; got {clip_shape}')

  def clip_outputs(clip):
    outputs = module.segment_clip(clip)
    return tuple(outputs[name] for name in TFLITE_OUTPUTS)

  function = tf.function(clip_outputs).get_concrete_function(
      tf.TensorSpec([*clip_shape, 3], tf.uint8, name=common.EXPORT_INPUT_NAME))
  frozen = convert_to_constants.convert_variables_to_constants_v2(function)
  converter = tf.lite.TFLiteConverter.from_concrete_functions([frozen])
  converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
  if quantization != 'none':
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
  if quantization == 'float16':
    converter.target_spec.supported_types = [tf.float16]
  flatbuffer = converter.convert()
  directory = os.path.dirname(os.path.abspath(output_path))
  os.makedirs(directory, exist_ok=True)
  description = {'input_shape': [*clip_shape, 3], 'input_dtype': 'uint8',
                 'outputs': list(TFLITE_OUTPUTS), 'quantization': quantization}
  if config is not None:
    description['config'] = str(config)
  for path, data, mode in ((output_path, flatbuffer, 'wb'),
                           (output_path + '.json', json.dumps(description, indent=2), 'w')):
    with open(path + '.tmp', mode) as f:
      f.write(data)
    os.replace(path + '.tmp', path)
  return output_path


def export_from_checkpoint(config: config_pb2.ExperimentOptions, checkpoint_path: str,
                           output_path: str, export_format: str = 'saved_model',
                           tflite_quantization: str = 'none',
                           tflite_input_size=None) -> str:
  """Builds the model of `config`, restores `checkpoint_path` and exports it.

  Args:
    config: the run's config.
    checkpoint_path: a ckpt-N prefix or a run directory.
    output_path: the SavedModel folder, or the .tflite file.
    export_format: one of `EXPORT_FORMATS`.
    tflite_quantization: see `export_tflite`.
    tflite_input_size: (H, W) of the TFLite input; None = the eval crop size.
  """
  if export_format not in EXPORT_FORMATS:  # Before the model is built.
    raise ValueError(f'export format must be one of {EXPORT_FORMATS}; got "{export_format}"')
  descriptor = dataset_lib.get_dataset_descriptor(config.train_dataset_options.dataset)
  options = config.train_dataset_options
  # The run's dtype policy, as train_and_eval's export; variables are float32
  # under every policy, so any run's checkpoint restores.
  with precision.dtype_policy_scope(config.trainer_options.solver_options.mixed_precision):
    model = builder.build_model(config, descriptor)
    model(tf.zeros([1, options.clip_length, *options.crop_size, 3]), training=False)
  # Strict: every model variable must come from the checkpoint (ValueError
  # listing the unmatched ones otherwise).
  checkpoint_utils.restore_checkpoint(model, checkpoint_path)
  eval_options = config.eval_dataset_options
  post_processor = builder.build_post_processor(
      config, dataset_lib.get_dataset_descriptor(eval_options.dataset))
  if export_format == 'tflite':
    height, width = tflite_input_size or eval_options.crop_size
    return export_tflite(ClipKMaXExportModule(model, post_processor),
                         (eval_options.clip_length, height, width), output_path,
                         tflite_quantization, config)
  return export_saved_model(model, post_processor, config, output_path)


def main(argv):
  del argv
  f = flags.FLAGS
  with cli.one_line_errors(config_lib.ConfigError, ValueError):
    config = config_lib.load_experiment_config(f.config_file)
    checkpoint_utils.resolve_checkpoint_path(f.checkpoint_path)
    output_parent = os.path.dirname(os.path.abspath(f.output_path))
    cli.check_writable_dir(output_parent, 'the folder of --output_path')
    if f.format == 'saved_model' and os.path.isfile(f.output_path):
      raise cli.UsageError(f'--output_path={f.output_path} is a file')
    input_size = None
    if f.tflite_input_size:
      try:
        input_size = tuple(int(v) for v in f.tflite_input_size)
      except ValueError:
        input_size = ()
      if len(input_size) != 2 or min(input_size) < 1:
        raise cli.UsageError('--tflite_input_size must be two positive integers H,W; '
                             f'got {",".join(f.tflite_input_size)}')
    path = export_from_checkpoint(config, f.checkpoint_path, f.output_path, f.format,
                                  f.tflite_quantization, input_size)
  print(f'exported {"TFLite model" if f.format == "tflite" else "SavedModel"} to {path}')


if __name__ == '__main__':
  cli.run_absl(main)
