"""Tests for deeplab2_vkmax.data.build_vspw_data (VSPW_480p -> TFRecords)."""

import os
import subprocess
import sys

import numpy as np

from deeplab2_vkmax import common
from deeplab2_vkmax.data import build_vspw_data
from deeplab2_vkmax.data import dataset
import converter_fixtures as fx

_VSPW = dataset.get_dataset_descriptor('vspw')
_H, _W = 5, 9
# split -> video -> frame numbers.
_LAYOUT = {'train': {'1001_5z_ijQjUf_0': (0, 1, 2), '127_-hIVCYO4C90': (10, 20)},
           'val': {'2_abc': (3, 4)}, 'test': {'9_test': (0,)}}
# Official remap: 0 (others) and 255 -> void, v -> v - 1.
_OFFICIAL = {0: 255000, 1: 0, 7: 6000, 124: 123000, 255: 255000}
# Already remapped masks (--noremap_others_to_void): 0..123 classes, 255 void.
_REMAPPED = {0: 0, 6: 6000, 123: 123000, 255: 255000}


def _write_vspw(root, values_to_panoptic, seed=0):
  rng = np.random.default_rng(seed)
  values = np.array(sorted(values_to_panoptic))
  truth = {}
  for split, videos in _LAYOUT.items():
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, f'{split}.txt'), 'w') as f:
      f.write('\n'.join(videos) + '\n')
    for video, numbers in videos.items():
      for position, number in enumerate(numbers):
        name = '%08d' % number
        folder = os.path.join(root, 'data', video)
        fx.write_jpeg(os.path.join(folder, 'origin', name + '.jpg'), rng, _H, _W)
        if split == 'test':
          continue
        mask = rng.choice(values, (_H, _W)).astype(np.uint8)
        mask[0, :len(values)] = values
        fx.write_png(os.path.join(folder, 'mask', name + '.png'), mask)
        truth[(video, position)] = np.vectorize(values_to_panoptic.get)(mask)
  return truth


def _convert_all(root, out, **kwargs):
  frames = {}
  for split in ('train', 'val'):
    summary = build_vspw_data.convert_split(root, split, out, progress=False,
                                            **kwargs)
    frames.update(fx.read_back(summary.shard_paths, _VSPW))
  return frames


def test_official_remap_round_trip_exact(tmp_path):
  root = str(tmp_path / 'VSPW_480p')
  truth = _write_vspw(root, _OFFICIAL)
  frames = _convert_all(root, str(tmp_path / 'out'))
  assert sorted(frames) == sorted(truth)
  for key, panoptic in truth.items():
    np.testing.assert_array_equal(frames[key][common.PANOPTIC_LABEL], panoptic)
  assert fx.feature_bytes(frames[('127_-hIVCYO4C90', 1)],
                          common.KEY_IMAGE_FILENAME) == b'127_-hIVCYO4C90_00000020'


def test_without_remap_round_trip_exact(tmp_path):
  root = str(tmp_path / 'VSPW_480p')
  truth = _write_vspw(root, _REMAPPED)
  frames = _convert_all(root, str(tmp_path / 'out'), remap_others_to_void=False)
  for key, panoptic in truth.items():
    np.testing.assert_array_equal(frames[key][common.PANOPTIC_LABEL], panoptic)


def test_test_split_without_labels(tmp_path):
  root = str(tmp_path / 'VSPW_480p')
  _write_vspw(root, _OFFICIAL)
  summary = build_vspw_data.convert_split(root, 'test', str(tmp_path / 'out'),
                                          progress=False)
  frames = fx.read_back(summary.shard_paths, _VSPW)
  assert list(frames) == [('9_test', 0)]
  assert not fx.has_label(frames[('9_test', 0)])


def _error(tmp_path, match, split='train', **kwargs):
  out = str(tmp_path / 'out')
  fx.expect_error(lambda: build_vspw_data.convert_split(
      str(tmp_path / 'VSPW_480p'), split, out, progress=False, **kwargs), out, match)


def test_bad_input_names_file(tmp_path):
  root = tmp_path / 'VSPW_480p'
  _write_vspw(str(root), _OFFICIAL)
  video = root / 'data' / '127_-hIVCYO4C90'
  # Unknown class: 124 is no class when the masks are taken as remapped.
  _error(tmp_path,
         r'1001_5z_ijQjUf_0/mask/00000000\.png: unknown class ids \[124\]',
         remap_others_to_void=False)
  (video / 'mask' / '00000020.png').write_bytes(b'\x89PNG broken')
  _error(tmp_path, r'127_-hIVCYO4C90/mask/00000020\.png: corrupt')
  fx.write_png(str(video / 'mask' / '00000020.png'), np.ones((_H, _W + 1), np.uint8))
  _error(tmp_path, r'mask/00000020\.png: label size 5x10 .* 5x9')
  os.remove(video / 'origin' / '00000020.jpg')
  _error(tmp_path, r'mask/00000020\.png: no frame')
  os.remove(video / 'mask' / '00000020.png')
  (root / 'val.txt').write_text('')
  _error(tmp_path, r'val\.txt is empty', split='val')


def test_cli_no_remap_flag(tmp_path):
  root = tmp_path / 'VSPW_480p'
  _write_vspw(str(root), _REMAPPED)
  result = subprocess.run(
      [sys.executable, '-m', 'deeplab2_vkmax.data.build_vspw_data',
       f'--vspw_root={root}', f'--output_dir={tmp_path / "out"}', '--splits=val',
       '--noremap_others_to_void'], check=True, capture_output=True, text=True)
  assert 'val: 2 frames, 1 sequences, 1 shards, 3/124 classes seen' in result.stdout
