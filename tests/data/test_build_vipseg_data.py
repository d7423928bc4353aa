"""Tests for deeplab2_vkmax.data.build_vipseg_data (raw and 720p VIPSeg layouts)."""

import os

import numpy as np
import pytest

from deeplab2_vkmax import common
from deeplab2_vkmax.data import build_vipseg_data
from deeplab2_vkmax.data import dataset
import converter_fixtures as fx

_VIPSEG = dataset.get_dataset_descriptor('vipseg')
_H, _W = 6, 10
# 0-based class ids of the names used below (pinned so a reordering is caught).
_WALL, _SKY, _CAR, _PERSON = 0, 28, 48, 60
# Raw panomask value -> panoptic label (1-based categories, objects numbered from 0
# in VIPSeg and from 1 here, 0 = void, a bare thing category = crowd).
_RAW_TO_PANOPTIC = {
    0: 255000,
    1: _WALL * 1000,
    29: _SKY * 1000,
    61: _PERSON * 1000,  # Thing category without object number: instance 0.
    6100: _PERSON * 1000 + 1,
    6101: _PERSON * 1000 + 2,
    6107: _PERSON * 1000 + 8,
    4900: _CAR * 1000 + 1,
}
# Raw layout: split -> video -> frame numbers (gaps, as in VIPSeg).
_RAW_LAYOUT = {'train': {'127_-hIVCYO4C90': (0, 5, 10), '12_abcdEFGhij': (3, 8)},
               'val': {'55_zZ-yyXX0000': (0, 1)},
               'test': {'9_testVideo00': (0, 4)}}


def test_descriptor_ids():
  names = _VIPSEG.class_names
  assert (names[_WALL], names[_SKY], names[_CAR], names[_PERSON]) == (
      'wall', 'sky', 'car', 'person')
  assert _VIPSEG.num_classes == 124 and len(_VIPSEG.thing_class_ids) == 58
  assert _VIPSEG.is_thing(_PERSON) and not _VIPSEG.is_thing(_SKY)


def _write_raw(root, seed=0):
  """Official raw layout; returns {(video, position): panoptic}."""
  rng = np.random.default_rng(seed)
  values = np.array(sorted(_RAW_TO_PANOPTIC))
  truth = {}
  os.makedirs(root, exist_ok=True)
  for split, videos in _RAW_LAYOUT.items():
    with open(os.path.join(root, f'{split}.txt'), 'w') as f:
      f.write('\n'.join(videos) + '\n')
    for video, numbers in videos.items():
      for position, number in enumerate(numbers):
        name = '%08d' % number
        fx.write_jpeg(os.path.join(root, 'imgs', video, name + '.jpg'), rng, _H, _W)
        if split == 'test':
          continue
        mask = rng.choice(values, (_H, _W))
        mask[0, :len(values)] = values  # Every value in every frame.
        fx.write_png(os.path.join(root, 'panomasks', video, name + '.png'),
                     mask.astype(np.uint16))  # Values > 255: a 16-bit PNG.
        truth[(video, position)] = np.vectorize(_RAW_TO_PANOPTIC.get)(mask)
  return truth


def test_raw_round_trip_exact(tmp_path):
  root = str(tmp_path / 'VIPSeg')
  truth = _write_raw(root)
  out = str(tmp_path / 'records')
  frames = {}
  for split in ('train', 'val'):
    summary = build_vipseg_data.convert_split(root, split, out, num_shards=2,
                                              progress=False)
    assert summary.num_sequences == len(_RAW_LAYOUT[split])
    assert summary.classes_seen == (_WALL, _SKY, _CAR, _PERSON)
    frames.update(fx.read_back(summary.shard_paths, _VIPSEG))
  assert sorted(frames) == sorted(truth)
  for (video, position), panoptic in truth.items():
    frame = frames[(video, position)]
    np.testing.assert_array_equal(frame[common.PANOPTIC_LABEL], panoptic)
    assert frame[common.IMAGE].shape == (_H, _W, 3)
    number = _RAW_LAYOUT['train'].get(video, _RAW_LAYOUT['val'].get(video))[position]
    image_path = os.path.join(root, 'imgs', video, '%08d.jpg' % number)
    assert fx.feature_bytes(frame, common.KEY_ENCODED_IMAGE) == open(
        image_path, 'rb').read()
    assert fx.feature_bytes(frame, common.KEY_IMAGE_FORMAT) == b'jpeg'
    assert fx.feature_bytes(frame, common.KEY_IMAGE_FILENAME).decode() == (
        f'{video}_%08d' % number)


def test_raw_test_split_without_labels(tmp_path):
  root = str(tmp_path / 'VIPSeg')
  _write_raw(root)
  summary = build_vipseg_data.convert_split(root, 'test', str(tmp_path / 'out'),
                                            progress=False)
  frames = fx.read_back(summary.shard_paths, _VIPSEG)
  assert sorted(frames) == [('9_testVideo00', 0), ('9_testVideo00', 1)]
  assert not any(fx.has_label(f) for f in frames.values())


def _raw_error(tmp_path, match, split='train'):
  root = str(tmp_path / 'VIPSeg')
  out = str(tmp_path / 'records')
  fx.expect_error(lambda: build_vipseg_data.convert_split(
      root, split, out, variant='raw', progress=False), out, match)


def test_raw_missing_frame_names_file(tmp_path):
  _write_raw(str(tmp_path / 'VIPSeg'))
  os.remove(tmp_path / 'VIPSeg' / 'imgs' / '12_abcdEFGhij' / '00000008.jpg')
  _raw_error(tmp_path, r'panomasks/12_abcdEFGhij/00000008\.png: no frame')


def test_raw_missing_mask_names_file(tmp_path):
  _write_raw(str(tmp_path / 'VIPSeg'))
  os.remove(tmp_path / 'VIPSeg' / 'panomasks' / '12_abcdEFGhij' / '00000008.png')
  _raw_error(tmp_path, r'imgs/12_abcdEFGhij/00000008\.jpg: no label')


def test_raw_size_mismatch_names_file(tmp_path):
  _write_raw(str(tmp_path / 'VIPSeg'))
  path = tmp_path / 'VIPSeg' / 'panomasks' / '127_-hIVCYO4C90' / '00000005.png'
  fx.write_png(str(path), np.ones((_H + 1, _W), np.uint16))
  _raw_error(tmp_path, r'00000005\.png: label size 7x10 .* 6x10')


def test_raw_corrupt_files_name_file(tmp_path):
  _write_raw(str(tmp_path / 'VIPSeg'))
  path = tmp_path / 'VIPSeg' / 'imgs' / '127_-hIVCYO4C90' / '00000010.jpg'
  path.write_bytes(path.read_bytes()[:60])
  _raw_error(tmp_path, r'imgs/127_-hIVCYO4C90/00000010\.jpg: corrupt')
  _write_raw(str(tmp_path / 'VIPSeg'))
  path = tmp_path / 'VIPSeg' / 'panomasks' / '12_abcdEFGhij' / '00000003.png'
  path.write_bytes(path.read_bytes()[:50])
  _raw_error(tmp_path, r'panomasks/12_abcdEFGhij/00000003\.png: corrupt')


def test_raw_unknown_class_names_file(tmp_path):
  _write_raw(str(tmp_path / 'VIPSeg'))
  path = tmp_path / 'VIPSeg' / 'panomasks' / '127_-hIVCYO4C90' / '00000000.png'
  mask = np.full((_H, _W), 1, np.uint16)
  mask[2, 3] = 12501  # Category 125 of 124.
  fx.write_png(str(path), mask)
  _raw_error(tmp_path, r'00000000\.png: unknown VIPSeg values \[12501\]')


def test_raw_empty_split(tmp_path):
  root = tmp_path / 'VIPSeg'
  _write_raw(str(root))
  (root / 'val.txt').write_text('\n')
  _raw_error(tmp_path, r'val\.txt is empty', split='val')
  (root / 'imgs' / 'empty_video').mkdir()
  (root / 'panomasks' / 'empty_video').mkdir()
  (root / 'val.txt').write_text('empty_video\n')
  _raw_error(tmp_path, "Split 'val' is empty", split='val')


# 720p layout: video -> frames, each a list of (segment id, category 0-based,
# iscrowd) in the JSON and the segment ids painted into the PNG.
_720P_VIDEOS = {
    '127_-hIVCYO4C90': [
        [(1, _WALL, 0), (6100, _PERSON, 0), (6101, _PERSON, 0), (4900, _CAR, 1)],
        [(1, _WALL, 0), (6101, _PERSON, 0)],  # 6101 keeps instance 2.
        [(29, _SKY, 0), (6102, _PERSON, 0), (6100, _PERSON, 0)],
    ],
    '12_abcdEFGhij': [[(6101, _PERSON, 0), (4901, _CAR, 0)],
                      [(4901, _CAR, 0), (70000, _SKY, 0)]],
}
# Per video, segment id -> instance in order of first appearance.
_720P_INSTANCES = {'127_-hIVCYO4C90': {6100: 1, 6101: 2, 6102: 3},
                   '12_abcdEFGhij': {6101: 1, 4901: 1}}


def _write_720p(root, seed=0):
  rng = np.random.default_rng(seed)
  truth = {}
  annotations = []
  for video, frames in _720P_VIDEOS.items():
    frame_annotations = []
    for position, segments in enumerate(frames):
      name = '%08d' % (position * 5)
      ids = rng.choice([0] + [s[0] for s in segments], (_H, _W))
      ids[0, :len(segments)] = [s[0] for s in segments]
      fx.write_id_map(os.path.join(root, 'panomasksRGB', video, name + '.png'), ids)
      fx.write_jpeg(os.path.join(root, 'images', video, name + '.jpg'), rng, _H, _W)
      table = {0: 255000}
      for segment_id, category, crowd in segments:
        instance = 0 if crowd or not _VIPSEG.is_thing(category) else (
            _720P_INSTANCES[video][segment_id])
        table[segment_id] = category * 1000 + instance
      truth[(video, position)] = np.vectorize(table.get)(ids)
      frame_annotations.append({
          'file_name': name + '.png', 'image_id': f'{video}_{name}',
          'segments_info': [{'id': s, 'category_id': c, 'iscrowd': k,
                             'area': int((ids == s).sum())}
                            for s, c, k in segments]})
    annotations.append({'video_id': video, 'annotations': frame_annotations})
  fx.write_json(os.path.join(root, 'panoptic_gt_VIPSeg_train.json'), {
      'videos': [{'video_id': v} for v in _720P_VIDEOS],
      'annotations': annotations,
      'categories': fx.json_categories(_VIPSEG, range(124))})
  return truth


def test_720p_round_trip_exact(tmp_path):
  root = str(tmp_path / 'VIPSeg_720P')
  truth = _write_720p(root)
  assert build_vipseg_data.resolve_variant(root, 'auto') == '720p'
  summary = build_vipseg_data.convert_split(root, 'train', str(tmp_path / 'out'),
                                            progress=False)
  assert (summary.num_frames, summary.num_sequences) == (5, 2)
  frames = fx.read_back(summary.shard_paths, _VIPSEG)
  assert sorted(frames) == sorted(truth)
  for key, panoptic in truth.items():
    np.testing.assert_array_equal(frames[key][common.PANOPTIC_LABEL], panoptic)


def test_720p_bad_input_names_file(tmp_path):
  root = tmp_path / 'VIPSeg_720P'
  _write_720p(str(root))
  out = str(tmp_path / 'out')

  def convert():
    build_vipseg_data.convert_split(str(root), 'train', out, progress=False)

  fx.write_id_map(str(root / 'panomasksRGB' / '12_abcdEFGhij' / '00000005.png'),
                  np.full((_H, _W), 777))
  fx.expect_error(convert, out, r'12_abcdEFGhij/00000005\.png: segment ids \[777\] '
                  r'are not in the JSON')
  os.remove(root / 'images' / '12_abcdEFGhij' / '00000000.jpg')
  fx.expect_error(convert, out, r'images/12_abcdEFGhij/00000000\.jpg: file does '
                  r'not exist')


def test_summary_line(tmp_path):
  root = tmp_path / 'VIPSeg'
  _write_raw(str(root))
  summary = build_vipseg_data.convert_split(str(root), 'val', str(tmp_path / 'out'),
                                            progress=False)
  assert summary.describe() == (
      "val: 2 frames, 1 sequences, 1 shards, 4/124 classes seen "
      "['wall', 'sky', 'car', 'person']")


def test_unknown_variant():
  with pytest.raises(ValueError, match=r"Unknown VIPSeg variant 'hd'"):
    build_vipseg_data.resolve_variant('/nowhere', 'hd')
