"""`memory_type` choices flow from a textproto to the associater's memory."""

import pathlib

import pytest

from deeplab2_vkmax import config
from deeplab2_vkmax.association import hila_memory_buffer
from deeplab2_vkmax.association import naive_memory_buffer
from deeplab2_vkmax.data import dataset as dataset_lib
from deeplab2_vkmax import builder

TINY = (pathlib.Path(__file__).resolve().parents[2] / 'configs' / 'synthetic'
        / 'clip_kmax_tiny.textproto')


@pytest.mark.parametrize('memory_type,memory_class,uses_appearance', [
    ('location', hila_memory_buffer.LocationMemoryBuffer, False),
    ('naive', naive_memory_buffer.NaiveMemoryBuffer, True),
    ('hila', hila_memory_buffer.HiLAMemoryBuffer, True),
])
def test_build_associater_memory_type(memory_type, memory_class, uses_appearance):
  text = TINY.read_text()
  assert 'memory_type: "hila"' in text
  options = config.parse_experiment_config(
      text.replace('memory_type: "hila"', f'memory_type: "{memory_type}"'))
  descriptor = dataset_lib.get_dataset_descriptor(
      options.eval_dataset_options.dataset)
  assoc = builder.build_associater(options, descriptor)
  assert type(assoc.memory) is memory_class
  assert assoc.memory.uses_appearance == uses_appearance


def test_unknown_memory_type_is_rejected():
  text = TINY.read_text().replace('memory_type: "hila"', 'memory_type: "locations"')
  with pytest.raises(config.ConfigError,
                     match='expected one of hila, naive, location, none'):
    config.parse_experiment_config(text)
