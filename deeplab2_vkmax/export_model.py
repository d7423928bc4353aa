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
"""

import contextlib
import os
from typing import Dict, Iterator

from absl import flags

from deeplab2_vkmax import cli

if __name__ == '__main__':
  # Defined only when run as a program, so importing this module (as
  # trainer/train.py does) never clashes with the importer's flags; defined
  # before TensorFlow loads so that --help and flag errors answer at once.
  flags.DEFINE_string('config_file', None, 'ExperimentOptions textproto.')
  flags.DEFINE_string('checkpoint_path', None, 'A checkpoint (ckpt-N) or a run directory.')
  flags.DEFINE_string('output_path', None, 'Where the SavedModel is written.')
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
from deeplab2_vkmax.model import builder
from deeplab2_vkmax.model import checkpoint_utils
from deeplab2_vkmax.protos import config_pb2
# pylint: enable=g-import-not-at-top,g-bad-import-order

_GRID = 32  # kMaX crops are 32k + 1 pixels: every stride-2 stage stays aligned.
# `SolverOptions.mixed_precision` values: Keras 3 dtype policy names.
MIXED_PRECISION_POLICIES = ('float32', 'mixed_float16', 'mixed_bfloat16')


@contextlib.contextmanager
def dtype_policy_scope(policy: str) -> Iterator[None]:
  """Makes `policy` the global Keras dtype policy inside the block only.

  Keras 3 layers take the global policy when they are constructed and keep it,
  so building a model inside this block gives a mixed-precision model while
  code that runs after it (other models, tests in the same process) still
  sees the previous policy.

  Args:
    policy: One of `MIXED_PRECISION_POLICIES`.

  Raises:
    ValueError: If `policy` is not one of them.
  """
  if policy not in MIXED_PRECISION_POLICIES:
    raise ValueError(f'mixed_precision must be one of {", ".join(MIXED_PRECISION_POLICIES)}; '
                     f'got "{policy}"')
  previous = keras.config.dtype_policy()
  keras.config.set_dtype_policy(policy)
  try:
    yield
  finally:
    keras.config.set_dtype_policy(previous)


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


def export_from_checkpoint(config: config_pb2.ExperimentOptions, checkpoint_path: str,
                           output_path: str) -> str:
  """Builds the model of `config`, restores `checkpoint_path` and exports it."""
  descriptor = dataset_lib.get_dataset_descriptor(config.train_dataset_options.dataset)
  options = config.train_dataset_options
  # The run's dtype policy, as train_and_eval's export; variables are float32
  # under every policy, so any run's checkpoint restores.
  with dtype_policy_scope(config.trainer_options.solver_options.mixed_precision):
    model = builder.build_model(config, descriptor)
    model(tf.zeros([1, options.clip_length, *options.crop_size, 3]), training=False)
  # Strict: every model variable must come from the checkpoint (ValueError
  # listing the unmatched ones otherwise).
  checkpoint_utils.restore_checkpoint(model, checkpoint_path)
  eval_descriptor = dataset_lib.get_dataset_descriptor(config.eval_dataset_options.dataset)
  return export_saved_model(model, builder.build_post_processor(config, eval_descriptor),
                            config, output_path)


def main(argv):
  del argv
  flag_values = flags.FLAGS
  with cli.one_line_errors(config_lib.ConfigError, ValueError):
    config = config_lib.load_experiment_config(flag_values.config_file)
    checkpoint_utils.resolve_checkpoint_path(flag_values.checkpoint_path)
    output_parent = os.path.dirname(os.path.abspath(flag_values.output_path))
    cli.check_writable_dir(output_parent, 'the folder of --output_path')
    if os.path.isfile(flag_values.output_path):
      raise cli.UsageError(f'--output_path={flag_values.output_path} is a file')
    path = export_from_checkpoint(config, flag_values.checkpoint_path, flag_values.output_path)
  print(f'exported SavedModel to {path}')


if __name__ == '__main__':
  cli.run_absl(main)
