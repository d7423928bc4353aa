"""Tests for deeplab2_vkmax.config: parsing, validation and one-line errors."""

import os
import pathlib

import pytest

from deeplab2_vkmax import config

REPO = pathlib.Path(__file__).resolve().parents[1]
SHIPPED = sorted(str(p) for p in (REPO / 'configs').rglob('*.textproto'))
TINY = REPO / 'configs' / 'synthetic' / 'clip_kmax_tiny.textproto'


def _write(tmp_path, text):
  path = tmp_path / 'bad.textproto'
  path.write_text(text)
  return str(path)


def _one_line(message):
  assert '\n' not in message, message
  return message


@pytest.mark.parametrize('path', SHIPPED)
def test_shipped_configs_parse_and_have_headers(path):
  options = config.load_experiment_config(path)
  assert options.experiment_name
  head = pathlib.Path(path).read_text().splitlines()[:2]
  assert head == ['# proto-file: deeplab2_vkmax/protos/config.proto',
                  '# proto-message: ExperimentOptions']


def test_defaults_come_from_the_protos():
  options = config.load_experiment_config(str(TINY))
  association = options.evaluator_options.association
  assert association.distance == 'squared_l2'  # Not set in the file.
  assert options.trainer_options.solver_options.poly_learning_power == pytest.approx(0.9)
  assert options.train_dataset_options.frame_stride == 1


def test_misspelled_field_names_file_line_and_field(tmp_path):
  text = TINY.read_text().replace('num_mask_slots: 32', 'num_mask_slot: 32')
  line = next(i for i, l in enumerate(text.splitlines(), 1) if 'num_mask_slot:' in l)
  path = _write(tmp_path, text)
  with pytest.raises(config.ConfigError) as error:
    config.load_experiment_config(path)
  message = _one_line(str(error.value))
  assert message.startswith(f'{path}:{line}:')
  assert 'num_mask_slot' in message


def test_wrong_type_names_line(tmp_path):
  text = TINY.read_text().replace('num_mask_slots: 32', 'num_mask_slots: "many"')
  line = next(i for i, l in enumerate(text.splitlines(), 1) if 'num_mask_slots:' in l)
  path = _write(tmp_path, text)
  with pytest.raises(config.ConfigError) as error:
    config.load_experiment_config(path)
  assert _one_line(str(error.value)).startswith(f'{path}:{line}:')


def test_missing_required_value_names_field(tmp_path):
  text = TINY.read_text().replace('experiment_name: "clip_kmax_tiny_synthetic"', '')
  path = _write(tmp_path, text)
  with pytest.raises(config.ConfigError, match='experiment_name: is required'):
    config.load_experiment_config(path)


def test_bad_choice_names_line_and_allowed_values(tmp_path):
  text = TINY.read_text().replace('memory_type: "hila"', 'memory_type: "hilla"')
  line = next(i for i, l in enumerate(text.splitlines(), 1) if 'memory_type:' in l)
  path = _write(tmp_path, text)
  with pytest.raises(config.ConfigError) as error:
    config.load_experiment_config(path)
  message = _one_line(str(error.value))
  assert message.startswith(f'{path}:{line}: field evaluator_options.association.memory_type')
  assert 'hila, naive, location, none' in message


def test_crop_size_is_checked_and_removed_clip_overlap_is_dropped_with_a_warning(
    tmp_path, capsys):
  text = TINY.read_text().replace('crop_size: [65, 129]', 'crop_size: [65]', 1)
  with pytest.raises(config.ConfigError, match='train_dataset_options.crop_size'):
    config.load_experiment_config(_write(tmp_path, text))
  text = TINY.read_text().replace('clip_length: 2\n  synthetic', 'clip_length: 2\n  '
                                  'clip_overlap: 1\n  synthetic')
  line = text.splitlines().index('  clip_overlap: 1') + 1
  # A config written before the field was removed (or a SavedModel's copy) loads.
  loaded = config.load_experiment_config(_write(tmp_path, text))
  assert loaded == config.load_experiment_config(str(TINY))
  assert capsys.readouterr().err == (
      f'{tmp_path / "bad.textproto"}:{line}: warning: clip_overlap is ignored: the overlap '
      'follows from clip_length (one shared frame for T >= 2, none for T = 1); delete the line\n')
  # A crop below the encoder's stride 32 used to train without a word.
  text = TINY.read_text().replace('crop_size: [65, 129]', 'crop_size: [3, 3]', 1)
  with pytest.raises(config.ConfigError, match=r'\.textproto:\d+:\d*:? ?.*train_dataset_options'
                     r'\.crop_size.*\[3, 3\] is smaller than the encoder\'s output stride 32'):
    config.load_experiment_config(_write(tmp_path, text))


def test_missing_file():
  with pytest.raises(config.ConfigError, match='not found'):
    config.load_experiment_config(os.path.join('no', 'such.textproto'))


def test_fields_a_loss_does_not_use_are_rejected(tmp_path):
  # The demo config sets loss_options (its mask-ID weight): add the field there.
  text = TINY.read_text().replace(
      '  loss_options {', '  loss_options { pq_style_loss { top_k_percent: 0.5 }', 1)
  assert 'top_k_percent: 0.5' in text
  with pytest.raises(config.ConfigError,
                     match='loss_options.pq_style_loss.top_k_percent: is only used by semantic_loss'):
    config.load_experiment_config(_write(tmp_path, text))


def test_keep_every_segment_returns_a_changed_copy():
  loaded = config.load_experiment_config(str(TINY))
  kept = config.keep_every_segment(loaded)
  assert kept is not loaded
  assert loaded == config.load_experiment_config(str(TINY))  # Left as loaded.
  evaluator = kept.evaluator_options
  assert evaluator.transformer_post_processing == 'pixelwise'
  assert evaluator.pixel_confidence_threshold == 0.0
  assert evaluator.maskwise_postprocessing.overlapping_threshold == 0.0
  assert kept.model_options == loaded.model_options
