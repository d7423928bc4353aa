"""Loads and validates experiment configs (`ExperimentOptions` text protos).

Every problem with a config is a `ConfigError` whose message is one line naming
the file, the line (where the text has one) and the field, e.g.

  configs/x.textproto:12:5: unknown field "num_mask_slot" in ClipKMaXOptions

`trainer/train.py` prints that line and exits non-zero, without a traceback.
Defaults live in the protos (the classes take them through `protos.fields`); the
few repeated fields that cannot carry a proto default are documented there and
take the class's signature default when empty (`deeplab2_vkmax.builder`).
"""

import os
import re
import sys
from typing import Optional

from google.protobuf import message as proto_message
from google.protobuf import text_format

from deeplab2_vkmax import trainer
from deeplab2_vkmax.association import matching
from deeplab2_vkmax.association import video_associater
from deeplab2_vkmax.model import backbones
from deeplab2_vkmax.model import loss
from deeplab2_vkmax.model import post_processor
from deeplab2_vkmax.model import precision
from deeplab2_vkmax.model import transformer_decoder
from deeplab2_vkmax.protos import config_pb2

# The encoder's output stride: a crop must give every stage at least one pixel.
_MIN_CROP = 32

_PARSE_ERROR_RE = re.compile(r'^(\d+):(\d+) : (.*)$', re.DOTALL)

# Allowed values of the string fields that select behaviour, as the modules that
# implement them declare them (none imports TensorFlow):
# (message path, field) -> allowed values.
_CHOICES = {
    ('model_options.backbone', 'name'): backbones.NAMES,
    ('model_options.clip_kmax', 'transformer_cross_attention'): (
        transformer_decoder.CROSS_ATTENTIONS),
    ('trainer_options.solver_options', 'optimizer'): trainer.OPTIMIZERS,
    ('trainer_options.solver_options', 'learning_policy'): trainer.LEARNING_POLICIES,
    ('trainer_options.solver_options', 'mixed_precision'): precision.MIXED_PRECISION_POLICIES,
    ('trainer_options.loss_options.semantic_loss', 'name'): loss.SEMANTIC_LOSSES,
    ('evaluator_options', 'transformer_post_processing'): post_processor.POST_PROCESSING_MODES,
    ('evaluator_options.association', 'memory_type'): video_associater.MEMORY_TYPES,
    ('evaluator_options.association', 'stitching_score'): matching.OVERLAP_SCORES,
    ('evaluator_options.association', 'distance'): matching.BOX_DISTANCES,
}


class ConfigError(ValueError):
  """A config file that cannot be used; the message is one line."""


def _field_line(text: str, field: str) -> Optional[int]:
  """Returns the 1-based line of the first `field:` or `field {` in `text`."""
  pattern = re.compile(r'^\s*' + re.escape(field) + r'\s*[:{]')
  for number, line in enumerate(text.splitlines(), start=1):
    if pattern.match(line.split('#', 1)[0]):
      return number
  return None


def _error(path: str, text: str, field_path: str, message: str) -> ConfigError:
  leaf = field_path.rsplit('.', 1)[-1]
  line = _field_line(text, leaf) if text else None
  where = f'{path}:{line}' if line else path
  return ConfigError(f'{where}: field {field_path}: {message}')


def _get(config: proto_message.Message, dotted: str):
  """Returns the sub-message at `dotted` (without marking it as set)."""
  value = config
  for name in dotted.split('.'):
    value = getattr(value, name)
  return value


def _validate_dataset(path, text, config, prefix):
  options = _get(config, prefix)
  if not config.HasField(prefix):
    raise _error(path, text, prefix, 'is required')
  if not options.dataset:
    raise _error(path, text, f'{prefix}.dataset', 'is required (a dataset registry name)')
  if len(options.crop_size) != 2 or min(options.crop_size) <= 0:
    raise _error(path, text, f'{prefix}.crop_size',
                 f'needs two positive values [height, width], got {list(options.crop_size)}')
  if min(options.crop_size) < _MIN_CROP:
    raise _error(path, text, f'{prefix}.crop_size',
                 f'{list(options.crop_size)} is smaller than the encoder\'s output stride '
                 f'{_MIN_CROP}; use at least {_MIN_CROP} per side (DeepLab2 uses 32k + 1)')
  if options.dataset != 'synthetic' and not options.file_pattern:
    raise _error(path, text, f'{prefix}.file_pattern',
                 f'is required for dataset "{options.dataset}"')
  if options.batch_size <= 0:
    raise _error(path, text, f'{prefix}.batch_size', f'must be positive, got {options.batch_size}')
  if options.clip_length < 1:
    raise _error(path, text, f'{prefix}.clip_length', f'must be >= 1, got {options.clip_length}')
  if options.frame_stride < 1:
    raise _error(path, text, f'{prefix}.frame_stride', f'must be >= 1, got {options.frame_stride}')
  if options.synthetic.frame_size and len(options.synthetic.frame_size) != 2:
    raise _error(path, text, f'{prefix}.synthetic.frame_size',
                 f'needs [height, width], got {list(options.synthetic.frame_size)}')


def validate_experiment_config(config: config_pb2.ExperimentOptions, path: str = '<config>',
                               text: str = '') -> None:
  """Checks required values and choices; raises ConfigError naming the field."""
  if not config.experiment_name:
    raise _error(path, text, 'experiment_name', 'is required')
  if config.model_options.WhichOneof('meta_architecture') != 'clip_kmax':
    raise _error(path, text, 'model_options.clip_kmax',
                 'is required (the meta-architecture oneof must select clip_kmax)')
  kmax = config.model_options.clip_kmax
  if kmax.num_mask_slots <= 0:
    raise _error(path, text, 'model_options.clip_kmax.num_mask_slots',
                 f'must be positive, got {kmax.num_mask_slots}')
  if kmax.decoder_output_stride not in (2, 4):
    raise _error(path, text, 'model_options.clip_kmax.decoder_output_stride',
                 f'must be 4 or 2, got {kmax.decoder_output_stride}')
  for field, size in (('pixel_decoder_block_counts', 4), ('transformer_decoder_block_counts', 3)):
    values = list(getattr(kmax, field))
    if values and len(values) != size:
      raise _error(path, text, f'model_options.clip_kmax.{field}',
                   f'needs {size} values, got {values}')
  block_counts = list(config.model_options.backbone.block_counts)
  if block_counts and len(block_counts) != 4:
    raise _error(path, text, 'model_options.backbone.block_counts',
                 f'needs 4 values (stages 2..5), got {block_counts}')
  for (prefix, field), allowed in _CHOICES.items():
    value = getattr(_get(config, prefix), field)
    if value not in allowed:
      raise _error(path, text, f'{prefix}.{field}',
                   f'got "{value}", expected one of {", ".join(allowed)}')
  _validate_dataset(path, text, config, 'train_dataset_options')
  _validate_dataset(path, text, config, 'eval_dataset_options')
  association = config.evaluator_options.association
  if not 0.0 <= association.lam <= 1.0:
    raise _error(path, text, 'evaluator_options.association.lam',
                 f'must be in [0, 1], got {association.lam}')
  if association.tau < 0:
    raise _error(path, text, 'evaluator_options.association.tau',
                 f'must be >= 0, got {association.tau}')
  if association.temperature <= 0:
    raise _error(path, text, 'evaluator_options.association.temperature',
                 f'must be positive, got {association.temperature}')
  loss_options = config.trainer_options.loss_options
  for name in ('pq_style_loss', 'mask_id_cross_entropy_loss', 'instance_discrimination_loss'):
    single = getattr(loss_options, name)
    for field in ('name', 'top_k_percent'):
      if single.HasField(field):
        raise _error(path, text, f'trainer_options.loss_options.{name}.{field}',
                     'is only used by semantic_loss; remove it here')
  trainer = config.trainer_options
  if trainer.steps_per_loop <= 0 or trainer.save_summaries_steps % trainer.steps_per_loop:
    raise _error(path, text, 'trainer_options.save_summaries_steps',
                 f'must be a multiple of steps_per_loop ({trainer.steps_per_loop}), got '
                 f'{trainer.save_summaries_steps}')
  if (trainer.save_image_summaries_steps < 0 or
      trainer.save_image_summaries_steps % trainer.steps_per_loop):
    raise _error(path, text, 'trainer_options.save_image_summaries_steps',
                 f'must be 0 (off) or a positive multiple of steps_per_loop '
                 f'({trainer.steps_per_loop}), got {trainer.save_image_summaries_steps}')
  solver = config.trainer_options.solver_options
  if solver.training_number_of_steps <= 0:
    raise _error(path, text, 'trainer_options.solver_options.training_number_of_steps',
                 f'must be positive, got {solver.training_number_of_steps}')


# Fields configs once had, with why they can be dropped: a config (or a
# SavedModel's config.textproto) written before is read with a warning.
_REMOVED_FIELDS = {
    'clip_overlap': 'the overlap follows from clip_length (one shared frame for T >= 2, '
                    'none for T = 1)',
}
_REMOVED_FIELD_RE = re.compile(
    r'^\s*(' + '|'.join(_REMOVED_FIELDS) + r')\s*:\s*[-\w.]+\s*(#.*)?$')


def _drop_removed_fields(text: str, path: str) -> str:
  """`text` without the lines setting a removed scalar field, each one warned about."""
  lines = text.split('\n')
  for number, line in enumerate(lines, start=1):
    match = _REMOVED_FIELD_RE.match(line)
    if match:
      field = match.group(1)
      print(f'{path}:{number}: warning: {field} is ignored: {_REMOVED_FIELDS[field]}; '
            'delete the line', file=sys.stderr)
      lines[number - 1] = ''
  return '\n'.join(lines)


def parse_experiment_config(text: str, path: str = '<config>') -> config_pb2.ExperimentOptions:
  """Parses and validates textproto `text`; `path` is used in error messages."""
  config = config_pb2.ExperimentOptions()
  text = _drop_removed_fields(text, path)
  try:
    text_format.Parse(text, config)
  except text_format.ParseError as e:
    match = _PARSE_ERROR_RE.match(str(e))
    if match:
      line, column, message = match.groups()
      raise ConfigError(f'{path}:{line}:{column}: {" ".join(message.split())}') from None
    raise ConfigError(f'{path}: {" ".join(str(e).split())}') from None
  validate_experiment_config(config, path, text)
  return config


def load_experiment_config(path: str) -> config_pb2.ExperimentOptions:
  """Reads, parses and validates the ExperimentOptions textproto at `path`.

  Args:
    path: A `.textproto` file.

  Returns:
    The parsed `ExperimentOptions`.

  Raises:
    ConfigError: the file is missing or unreadable, has a syntax error, an
      unknown field, a value of the wrong type, a missing required value or a
      value outside its choices. The message is one line naming the file, the
      line and the field.
  """
  if not os.path.isfile(path):
    raise ConfigError(f'{path}: config file not found')
  try:
    with open(path, encoding='utf-8') as f:
      text = f.read()
  except (OSError, UnicodeDecodeError) as e:
    raise ConfigError(f'{path}: cannot read config: {e}') from None
  return parse_experiment_config(text, path)


def keep_every_segment(config: config_pb2.ExperimentOptions) -> config_pb2.ExperimentOptions:
  """A copy of `config` whose post-processing keeps every segment of an untrained model.

  Random weights never pass the real class and mask thresholds, so smoke runs,
  tests and benchmarks of untrained models would see empty maps: the copy uses
  pixel-wise merging with every threshold and area limit at 0. `config` itself
  is left as loaded.
  """
  copy = config_pb2.ExperimentOptions()
  copy.CopyFrom(config)
  config = copy
  evaluator = config.evaluator_options
  evaluator.transformer_post_processing = 'pixelwise'
  evaluator.pixel_confidence_threshold = 0.0
  masks = evaluator.maskwise_postprocessing
  masks.transformer_class_confidence_threshold_thing = 0.0
  masks.transformer_class_confidence_threshold_stuff = 0.0
  masks.overlapping_threshold = 0.0
  evaluator.thing_area_limit = evaluator.stuff_area_limit = 0
  return config
