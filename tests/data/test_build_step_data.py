"""Tests for deeplab2_vkmax.data.build_step_data (KITTI-STEP -> TFRecords)."""

import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from deeplab2_vkmax import common
from deeplab2_vkmax.data import build_step_data
from deeplab2_vkmax.data import clip_reader
from deeplab2_vkmax.data import dataset

_KITTI = dataset.get_dataset_descriptor('kitti_step')
# Fixture: split -> sequence -> number of frames (HxW 6x10, odd sizes on purpose).
_LAYOUT = {'train': {'0001': 3, '0003': 2, '0010': 4}, 'val': {'0002': 2},
           'test': {'0000': 2}}
_HEIGHT, _WIDTH = 6, 10


def _write_png(path, array):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path, format='PNG')


def _write_fixture(root, layout=None, seed=0):
  """Writes an official-layout KITTI-STEP tree; returns {(split, seq, frame): panoptic}."""
  rng = np.random.default_rng(seed)
  truth = {}
  for split, sequences in (layout or _LAYOUT).items():
    for sequence_id, num_frames in sequences.items():
      for f in range(num_frames):
        name = '%06d.png' % f
        image = rng.integers(0, 256, (_HEIGHT, _WIDTH, 3), dtype=np.uint8)
        _write_png(os.path.join(root, 'images', split, sequence_id, name), image)
        if split == 'test':
          continue
        semantic = rng.choice([0, 2, 8, 10, 11, 13, 255], (_HEIGHT, _WIDTH))
        instance = np.where(np.isin(semantic, (11, 13)),
                            rng.choice([0, 1, 7, 300, 999], (_HEIGHT, _WIDTH)), 0)
        rgb = np.stack([semantic, instance // 256, instance % 256], -1)
        _write_png(os.path.join(root, 'panoptic_maps', split, sequence_id, name),
                   rgb.astype(np.uint8))
        truth[(split, sequence_id, f)] = (image, semantic * 1000 + instance)
  return truth


def _read_records(paths):
  examples = []
  for path in paths:
    for record in tf.data.TFRecordDataset(path):
      example = tf.train.Example.FromString(record.numpy())
      decoded = clip_reader.decode_example(record, _KITTI)  # The training decoder.
      examples.append((path, example, {k: v.numpy() for k, v in decoded.items()}))
  return examples


def _bytes(example, key):
  return example.features.feature[key].bytes_list.value[0]


def _int(example, key):
  return example.features.feature[key].int64_list.value[0]


def test_round_trip_exact(tmp_path):
  truth = _write_fixture(str(tmp_path / 'step'))
  out = str(tmp_path / 'records')
  for split in ('train', 'val'):
    paths = build_step_data.convert_split(str(tmp_path / 'step'), split, out,
                                          num_shards=2)
    examples = _read_records(paths)
    assert len(examples) == sum(_LAYOUT[split].values())
    seen_sequences = {}
    for path, example, decoded in examples:
      sequence_id = _bytes(example, common.KEY_SEQUENCE_ID).decode()
      frame_name = _bytes(example, common.KEY_FRAME_ID).decode()
      image, panoptic = truth[(split, sequence_id, int(frame_name))]
      np.testing.assert_array_equal(decoded[common.PANOPTIC_LABEL], panoptic)
      np.testing.assert_array_equal(decoded[common.IMAGE], image)
      assert decoded[common.SEQUENCE_ID].decode() == sequence_id
      assert decoded[common.FRAME_ID] == int(frame_name)
      assert _int(example, common.KEY_IMAGE_HEIGHT) == _HEIGHT
      assert _int(example, common.KEY_IMAGE_WIDTH) == _WIDTH
      assert _int(example, common.KEY_IMAGE_CHANNELS) == 3
      assert _bytes(example, common.KEY_IMAGE_FORMAT) == b'png'
      assert _bytes(example, common.KEY_LABEL_FORMAT) == b'raw'
      assert _bytes(example, common.KEY_IMAGE_FILENAME).decode() == (
          f'{sequence_id}_{frame_name}')
      image_path = tmp_path / 'step' / 'images' / split / sequence_id / (
          frame_name + '.png')
      assert _bytes(example, common.KEY_ENCODED_IMAGE) == image_path.read_bytes()
      seen_sequences.setdefault(sequence_id, []).append((path, int(frame_name)))
    for sequence_id, frames in seen_sequences.items():
      assert len({p for p, _ in frames}) == 1  # A sequence never straddles shards.
      assert [f for _, f in frames] == list(range(_LAYOUT[split][sequence_id]))
  # Contiguity: within a shard each sequence's records form one run.
  ids = [_bytes(e, common.KEY_SEQUENCE_ID) for _, e, _ in _read_records(
      sorted(tf.io.gfile.glob(os.path.join(out, 'train-*'))))]
  runs = [ids[0]] + [b for a, b in zip(ids, ids[1:]) if a != b]
  assert len(runs) == len(set(runs))


def test_shard_names_and_counts(tmp_path):
  _write_fixture(str(tmp_path / 'step'))
  out = str(tmp_path / 'records')
  paths = build_step_data.convert_split(str(tmp_path / 'step'), 'train', out,
                                        num_shards=10)
  # Capped at 3 sequences.
  assert [os.path.basename(p) for p in paths] == [
      'train-%05d-of-00003.tfrecord' % i for i in range(3)]
  paths = build_step_data.convert_split(str(tmp_path / 'step'), 'train', out,
                                        num_shards=2)
  # Older shards of the split are replaced, nothing temporary left.
  assert sorted(os.listdir(out)) == ['train-00000-of-00002.tfrecord',
                                     'train-00001-of-00002.tfrecord']
  sizes = [sum(1 for _ in tf.data.TFRecordDataset(p)) for p in paths]
  assert sorted(sizes) == [4, 5]  # Balanced by frames: {0010} vs {0001, 0003}.


def test_test_split_without_labels(tmp_path):
  _write_fixture(str(tmp_path / 'step'))
  paths = build_step_data.convert_split(str(tmp_path / 'step'), 'test',
                                        str(tmp_path / 'records'), num_shards=0)
  examples = _read_records(paths)
  assert len(examples) == 2
  for _, example, decoded in examples:
    assert common.KEY_ENCODED_LABEL not in example.features.feature
    assert np.all(decoded[common.PANOPTIC_LABEL] == 255000)


def _expect_error(tmp_path, match, split='train'):
  out = tmp_path / 'records'
  with pytest.raises(ValueError, match=match):
    build_step_data.convert_split(str(tmp_path / 'step'), split, str(out))
  assert not out.exists() or not os.listdir(out)  # No partial or temp shard.


def test_missing_label_names_file(tmp_path):
  _write_fixture(str(tmp_path / 'step'))
  os.remove(tmp_path / 'step' / 'panoptic_maps' / 'train' / '0003' / '000001.png')
  _expect_error(tmp_path, r'images/train/0003/000001\.png: no label')


def test_size_mismatch_names_file(tmp_path):
  _write_fixture(str(tmp_path / 'step'))
  path = tmp_path / 'step' / 'panoptic_maps' / 'train' / '0010' / '000002.png'
  _write_png(str(path), np.zeros((_HEIGHT + 1, _WIDTH, 3), np.uint8))
  _expect_error(tmp_path, r'0010/000002\.png: label size 7x10 .* 6x10')


def test_corrupt_png_names_file(tmp_path):
  _write_fixture(str(tmp_path / 'step'))
  path = tmp_path / 'step' / 'images' / 'train' / '0001' / '000000.png'
  path.write_bytes(path.read_bytes()[:40])
  _expect_error(tmp_path, r'images/train/0001/000000\.png: corrupt')


def test_unknown_class_names_file(tmp_path):
  _write_fixture(str(tmp_path / 'step'))
  path = tmp_path / 'step' / 'panoptic_maps' / 'train' / '0003' / '000000.png'
  rgb = np.zeros((_HEIGHT, _WIDTH, 3), np.uint8)
  rgb[0, 0, 0] = 19
  _write_png(str(path), rgb)
  _expect_error(tmp_path, r'0003/000000\.png: unknown class ids \[19\]')


def test_grayscale_label_rejected(tmp_path):
  _write_fixture(str(tmp_path / 'step'))
  path = tmp_path / 'step' / 'panoptic_maps' / 'train' / '0003' / '000000.png'
  _write_png(str(path), np.zeros((_HEIGHT, _WIDTH), np.uint8))
  _expect_error(tmp_path, r'0003/000000\.png: panoptic map must be an RGB PNG')


def test_empty_or_missing_split(tmp_path):
  (tmp_path / 'step' / 'images' / 'train').mkdir(parents=True)
  (tmp_path / 'step' / 'panoptic_maps' / 'train').mkdir(parents=True)
  _expect_error(tmp_path, "Split 'train' is empty")
  _expect_error(tmp_path, 'does not exist', split='val')


def test_cli(tmp_path):
  _write_fixture(str(tmp_path / 'step'), {'train': {'0001': 2}, 'val': {'0002': 2}})
  subprocess.run(
      [sys.executable, '-m', 'deeplab2_vkmax.data.build_step_data',
       f'--step_root={tmp_path / "step"}', f'--output_dir={tmp_path / "out"}',
       '--splits=train,val', '--num_shards=4'],
      check=True, capture_output=True)
  assert sorted(os.listdir(tmp_path / 'out')) == [
      'train-00000-of-00001.tfrecord', 'val-00000-of-00001.tfrecord']
