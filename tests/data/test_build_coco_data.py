"""Tests for deeplab2_vkmax.data.build_coco_data (COCO panoptic -> T = 1 records)."""

import os

import numpy as np

from deeplab2_vkmax import common
from deeplab2_vkmax.data import build_coco_data
from deeplab2_vkmax.data import dataset
from deeplab2_vkmax.data import tfrecord_writer
import converter_fixtures as fx

_COCO = dataset.get_dataset_descriptor('coco_panoptic')
# Official-style ids with gaps: things within 1..90, stuff from 92 on.
_CATEGORY_IDS = [i + 1 + i // 8 for i in range(80)] + [
    92 + 2 * j for j in range(53)]
_PERSON, _CAR, _WALL, _RUG = 0, 2, 131, 132
# image id -> [(segment id, class id, iscrowd)]; ids above 255 use G and B.
_IMAGES = {
    'train': {
        139: [(1001, _PERSON, 0), (70000, _PERSON, 0), (3, _PERSON, 1),
              (5000000, _WALL, 0), (9, _CAR, 0)],
        285: [(4, _RUG, 0), (8, _CAR, 0), (2, _CAR, 0), (300, _CAR, 1)],
        632: [(77, _WALL, 0)],
    },
    'val': {724: [(12, _PERSON, 0), (13, _RUG, 0)]},
}


def _names(image_id):
  return '%012d.jpg' % image_id, '%012d.png' % image_id


def _write_coco(root, split, images=None):
  return fx.write_image_set(
      _COCO, _CATEGORY_IDS, images or _IMAGES[split],
      os.path.join(root, 'annotations', f'panoptic_{split}2017.json'),
      os.path.join(root, 'annotations', f'panoptic_{split}2017'), _names,
      lambda name: os.path.join(root, f'{split}2017', name))


def test_descriptor_order():
  assert _COCO.class_names[_WALL] == 'wall-other-merged'
  assert _COCO.class_names[_RUG] == 'rug-merged'
  assert _COCO.num_classes == 133 and _COCO.thing_class_ids == tuple(range(80))


def test_round_trip_exact(tmp_path):
  root = str(tmp_path / 'coco')
  out = str(tmp_path / 'out')
  for split in ('train', 'val'):
    truth, _ = _write_coco(root, split)
    summary = build_coco_data.convert_split(root, split, out, num_shards=2,
                                            progress=False)
    assert (summary.num_frames, summary.num_sequences) == (len(truth), len(truth))
    frames = fx.read_back(summary.shard_paths, _COCO)
    assert sorted(frames) == sorted((str(i), 0) for i in truth)  # T = 1 each.
    for image_id, panoptic in truth.items():
      frame = frames[(str(image_id), 0)]
      np.testing.assert_array_equal(frame[common.PANOPTIC_LABEL], panoptic)
      assert frame[common.IMAGE].shape == panoptic.shape + (3,)
  # Crowd person: instance 0; persons 1, 2 in segments_info order; void 255000.
  assert set(np.unique(fx.read_back(
      build_coco_data.convert_split(root, 'train', out, progress=False)
      .shard_paths, _COCO)[('139', 0)][common.PANOPTIC_LABEL])) == {
          0, 1, 2, 2001, 131000, 255000}


def _error(tmp_path, match):
  out = str(tmp_path / 'out')
  fx.expect_error(lambda: build_coco_data.convert_split(
      str(tmp_path / 'coco'), 'train', out, progress=False), out, match)


def test_bad_input_names_file(tmp_path):
  root = tmp_path / 'coco'
  _, data = _write_coco(str(root), 'train')
  masks = root / 'annotations' / 'panoptic_train2017'
  fx.write_id_map(str(masks / '000000000285.png'), np.full((6, 8), 555))
  _error(tmp_path, r'000000000285\.png: segment ids \[555\] are not in the JSON')
  fx.write_id_map(str(masks / '000000000285.png'), np.full((7, 8), 4))
  _error(tmp_path, r'000000000285\.png: label size 7x8 .* 6x8')
  (masks / '000000000285.png').write_bytes(b'not a png')
  _error(tmp_path, r'000000000285\.png: corrupt')
  _write_coco(str(root), 'train')
  os.remove(root / 'train2017' / '000000000632.jpg')
  _error(tmp_path, r'train2017/000000000632\.jpg: file does not exist')
  json_path = root / 'annotations' / 'panoptic_train2017.json'
  data['annotations'][0]['segments_info'][0]['category_id'] = 91
  fx.write_json(str(json_path), data)
  _error(tmp_path, r'panoptic_train2017\.json: segment 1001 has unknown '
         r'category_id 91')
  data['categories'][0]['name'] = 'human'
  fx.write_json(str(json_path), data)
  _error(tmp_path, r"panoptic_train2017\.json: category id 1 is named 'human'")
  fx.write_json(str(json_path), {'images': [], 'annotations': [],
                                 'categories': data['categories'][1:]})
  _error(tmp_path, r'panoptic_train2017\.json: 132 categories, expected 133')
  fx.write_json(str(json_path), {'images': [], 'annotations': [],
                                 'categories': fx.json_categories(_COCO,
                                                                  _CATEGORY_IDS)})
  _error(tmp_path, "Split 'train' is empty")


def test_shared_category_map_ranks_ids():
  categories = fx.json_categories(_COCO, _CATEGORY_IDS)
  mapping = tfrecord_writer.json_category_map(categories[::-1], 'x.json', _COCO)
  assert mapping == {i: c for c, i in enumerate(_CATEGORY_IDS)}
