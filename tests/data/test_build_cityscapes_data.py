"""Tests for deeplab2_vkmax.data.build_cityscapes_data (panoptic -> T = 1 records)."""

import os
import subprocess
import sys

import numpy as np

from deeplab2_vkmax import common
from deeplab2_vkmax.data import build_cityscapes_data
from deeplab2_vkmax.data import dataset
import converter_fixtures as fx

_CITYSCAPES = dataset.get_dataset_descriptor('cityscapes_panoptic')
# Cityscapes label ids of the 19 train ids, as in cityscapes_panoptic_*.json.
_LABEL_IDS = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32,
              33]
_ROAD, _SKY, _PERSON, _CAR, _BICYCLE = 0, 10, 11, 13, 18
# Segment ids as the official script makes them: stuff = label id, things =
# label id * 1000 + k, crowd (group) = label id with iscrowd 1.
_IMAGES = {
    'train': {
        'aachen_000000_000019': [(7, _ROAD, 0), (24000, _PERSON, 0),
                                 (24001, _PERSON, 0), (26, _CAR, 1),
                                 (26000, _CAR, 0)],
        'bochum_000000_000313': [(23, _SKY, 0), (33002, _BICYCLE, 0)],
    },
    'val': {'frankfurt_000000_000294': [(7, _ROAD, 0), (26005, _CAR, 0)]},
}


def _names(image_id):
  return f'{image_id}_leftImg8bit.png', f'{image_id}_gtFine_panoptic.png'


def _write_cityscapes(root, split):
  def image_path(name):
    return os.path.join(root, 'leftImg8bit', split, name.split('_')[0], name)
  truth, _ = fx.write_image_set(
      _CITYSCAPES, _LABEL_IDS, _IMAGES[split],
      os.path.join(root, 'gtFine', f'cityscapes_panoptic_{split}.json'),
      os.path.join(root, 'gtFine', f'cityscapes_panoptic_{split}'), _names,
      image_path, image_format='PNG')
  return truth


def test_round_trip_exact(tmp_path):
  root = str(tmp_path / 'cityscapes')
  for split in ('train', 'val'):
    truth = _write_cityscapes(root, split)
    summary = build_cityscapes_data.convert_split(root, split, str(tmp_path / 'out'),
                                                  progress=False)
    frames = fx.read_back(summary.shard_paths, _CITYSCAPES)
    assert sorted(frames) == sorted((i, 0) for i in truth)
    for image_id, panoptic in truth.items():
      np.testing.assert_array_equal(frames[(image_id, 0)][common.PANOPTIC_LABEL],
                                    panoptic)
  assert set(np.unique(truth['frankfurt_000000_000294'])) <= {0, 13001, 255000}


def test_cli_missing_image_keeps_earlier_records(tmp_path):
  root = tmp_path / 'cityscapes'
  _write_cityscapes(str(root), 'train')
  summary = build_cityscapes_data.convert_split(str(root), 'train',
                                                str(tmp_path / 'out'),
                                                progress=False)
  assert summary.classes_seen == (_ROAD, _SKY, _PERSON, _CAR, _BICYCLE)
  os.remove(root / 'leftImg8bit' / 'train' / 'bochum' /
            'bochum_000000_000313_leftImg8bit.png')
  result = subprocess.run(
      [sys.executable, '-m', 'deeplab2_vkmax.data.build_cityscapes_data',
       f'--cityscapes_root={root}', f'--output_dir={tmp_path / "out"}',
       '--splits=train'], capture_output=True, text=True)
  assert result.returncode != 0
  assert 'bochum_000000_000313_leftImg8bit.png: file does not exist' in result.stderr
  # The earlier complete conversion is left as it was.
  assert sorted(os.listdir(tmp_path / 'out')) == [
      'train-00000-of-00002.tfrecord', 'train-00001-of-00002.tfrecord']
