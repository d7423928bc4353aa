"""Tests for deeplab2_vkmax.data.synthetic (deterministic synthetic video set)."""

import json
import os
import subprocess
import sys
import threading

import numpy as np
from PIL import Image
import pytest

from deeplab2_vkmax.data import dataset
from deeplab2_vkmax.data import step_png
from deeplab2_vkmax.data import synthetic

_SMALL = dict(num_train_sequences=2, train_frames=10, num_val_sequences=1, val_frames=10)


def _all_files(root):
  out = {}
  for folder, _, names in os.walk(root):
    for name in names:
      path = os.path.join(folder, name)
      with open(path, 'rb') as f:
        out[os.path.relpath(path, root)] = f.read()
  return out


def test_same_seed_identical_bytes_different_seed_differs(tmp_path):
  a = synthetic.ensure_synthetic_dataset(str(tmp_path / 'a'), seed=3, **_SMALL)
  b = synthetic.ensure_synthetic_dataset(str(tmp_path / 'b'), seed=3, **_SMALL)
  c = synthetic.ensure_synthetic_dataset(str(tmp_path / 'c'), seed=4, **_SMALL)
  files_a, files_b, files_c = _all_files(a), _all_files(b), _all_files(c)
  assert files_a == files_b
  assert files_a.keys() == files_c.keys()
  pngs = [k for k in files_a if k.endswith('.png')]
  assert any(files_a[k] != files_c[k] for k in pngs)


def test_layout_and_kitti_step_encoding(tmp_path):
  params = synthetic.SyntheticParams(seed=0, **_SMALL)
  root = synthetic.ensure_synthetic_dataset(str(tmp_path / 's'), seed=0, **_SMALL)
  assert sorted(os.listdir(os.path.join(root, 'images', 'train'))) == ['0000', '0001']
  assert sorted(os.listdir(os.path.join(root, 'images', 'val'))) == ['0002']
  sequence = synthetic.generate_sequence(params, 'train', 1)
  for f in range(params.train_frames):
    name = '%06d.png' % f
    image = Image.open(os.path.join(root, 'images', 'train', '0001', name))
    label = Image.open(os.path.join(root, 'panoptic_maps', 'train', '0001', name))
    assert image.mode == 'RGB' and label.mode == 'RGB'
    assert image.size == label.size == (params.width, params.height)
    np.testing.assert_array_equal(np.asarray(image), sequence.images[f])
    rgb = np.asarray(label).astype(np.int32)
    semantic, instance = rgb[..., 0], rgb[..., 1] * 256 + rgb[..., 2]
    np.testing.assert_array_equal(semantic, sequence.semantic[f])
    np.testing.assert_array_equal(instance, sequence.instance[f])
    assert set(np.unique(semantic)) <= {0, 1, 2, 3, 4, 5, 255}
    things = np.isin(semantic, (4, 5))
    assert np.all(instance[~things] == 0)  # Stuff and void carry no instance.
  assert np.any(sequence.semantic == 255)  # Void pixels exist.
  for stuff in range(4):
    assert np.any(sequence.semantic == stuff)


def test_codec_round_trip():
  rng = np.random.default_rng(0)
  semantic = rng.integers(0, 256, (5, 7))
  instance = rng.integers(0, 65536, (5, 7))
  rgb = step_png.encode_panoptic_rgb(semantic, instance)
  np.testing.assert_array_equal(step_png.decode_panoptic_rgb(rgb, 100000),
                                semantic * 100000 + instance)


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_every_sequence_needs_association(seed):
  params = synthetic.SyntheticParams(seed=seed)
  for split in synthetic.SPLITS:
    num_sequences, num_frames = params.split_shape(split)
    for index in range(num_sequences):
      sequence = synthetic.generate_sequence(params, split, index)
      tracks = [t.to_json() for t in sequence.tracks]
      assert len(tracks) == params.max_objects
      assert any(synthetic.left_and_reentered(t) for t in tracks)
      crossing = [t for t in tracks if t['role'] == 'crossing']
      assert any(synthetic.occluded_frames(t) for t in crossing)
      assert (crossing[0]['track_id'], crossing[1]['track_id']) in (
          synthetic.look_alike_pairs(tracks))
      # Look-alikes really look alike: same colour.
      assert crossing[0]['colour'] == crossing[1]['colour']
      # Several things per frame on average.
      visible = np.array([t['visible_area'] for t in tracks]) > 0
      assert visible.sum(axis=0).mean() >= 3
      # Metadata agrees with the labels.
      for t in tracks:
        for f in range(num_frames):
          mask = sequence.semantic[f] == t['class_id']
          if t['instance_id']:
            mask &= sequence.instance[f] == t['instance_id']
            assert mask.sum() == t['visible_area'][f]


def test_near_constant_velocity_on_screen():
  params = synthetic.SyntheticParams(seed=0)
  for index in range(params.num_train_sequences):
    sequence = synthetic.generate_sequence(params, 'train', index)
    for track in sequence.tracks:
      xs = np.array([c[1] for c in track.centres])
      inside = np.array(track.in_frame_area) > 0
      # Direction reversals only happen while the object is out of the image:
      # within each run of frames that show it, the x steps keep one sign.
      run = []
      for f in range(len(xs)):
        if inside[f]:
          run.append(xs[f])
        if not inside[f] or f == len(xs) - 1:
          steps = np.diff(run)
          if steps.size > 1:
            assert np.all(steps > -1.5) or np.all(steps < 1.5), (track.role, run)
          run = []


def test_crowd_is_rare_and_instance_zero():
  crowd_sequences = 0
  total = 0
  for seed in range(8):
    params = synthetic.SyntheticParams(seed=seed)
    for index in range(params.num_train_sequences):
      total += 1
      sequence = synthetic.generate_sequence(params, 'train', index)
      crowd = [t for t in sequence.tracks if t.role == 'crowd']
      if crowd:
        crowd_sequences += 1
        assert crowd[0].instance_id == 0
        assert crowd[0].class_id in dataset.SYNTHETIC_THING_CLASS_IDS
      ids = {t.instance_id for t in sequence.tracks if t.role != 'crowd'}
      assert 0 not in ids and len(ids) == len(sequence.tracks) - len(crowd)
  assert 0 < crowd_sequences < total / 2


def test_ensure_reuses_regenerates_and_refuses(tmp_path):
  root = str(tmp_path / 'syn')
  synthetic.ensure_synthetic_dataset(root, seed=0, **_SMALL)
  marker = os.path.join(root, synthetic.MARKER_FILENAME)
  first_inode = os.stat(marker).st_ino
  synthetic.ensure_synthetic_dataset(root, seed=0, **_SMALL)
  assert os.stat(marker).st_ino == first_inode  # Not regenerated.
  synthetic.ensure_synthetic_dataset(root, seed=1, **_SMALL)
  with open(marker) as f:
    assert json.load(f)['params']['seed'] == 1
  assert synthetic.load_metadata(root)['params']['seed'] == 1
  assert sorted(os.listdir(tmp_path)) == ['.syn.lock', 'syn']  # No leftovers.

  other = tmp_path / 'user_data'
  other.mkdir()
  (other / 'keep.txt').write_text('precious')
  with pytest.raises(ValueError, match='refusing'):
    synthetic.ensure_synthetic_dataset(str(other), **_SMALL)
  assert (other / 'keep.txt').read_text() == 'precious'
  with pytest.raises(ValueError, match='frames_per_sequence'):
    synthetic.ensure_synthetic_dataset(root, frames_per_sequence=3)


def test_ensure_concurrent_threads(tmp_path):
  root = str(tmp_path / 'syn')
  errors = []

  def work():
    try:
      synthetic.ensure_synthetic_dataset(root, seed=5, **_SMALL)
    except Exception as e:  # pylint: disable=broad-except
      errors.append(e)

  threads = [threading.Thread(target=work) for _ in range(4)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert not errors
  assert sorted(os.listdir(tmp_path)) == ['.syn.lock', 'syn']
  reference = str(tmp_path / 'ref')
  synthetic.ensure_synthetic_dataset(reference, seed=5, **_SMALL)
  assert _all_files(root) == _all_files(reference)


def test_ground_truth_sequences(tmp_path):
  root = synthetic.ensure_synthetic_dataset(str(tmp_path / 's'), seed=2, **_SMALL)
  params = synthetic.SyntheticParams(seed=2, **_SMALL)
  got = list(synthetic.ground_truth_sequences(root, 'val'))
  assert [s for s, _ in got] == ['0002']
  np.testing.assert_array_equal(
      got[0][1], synthetic.generate_sequence(params, 'val', 0).panoptic)


def test_cli(tmp_path):
  out = tmp_path / 'cli'
  subprocess.run(
      [sys.executable, '-m', 'deeplab2_vkmax.data.synthetic',
       f'--output_dir={out}', '--seed=7', '--num_train_sequences=1',
       '--num_val_sequences=1', '--train_frames=3', '--val_frames=2'],
      check=True, capture_output=True)
  assert synthetic.load_metadata(str(out))['params']['seed'] == 7
  assert len(os.listdir(out / 'images' / 'train' / '0000')) == 3


def test_invalid_params():
  with pytest.raises(ValueError, match='max_objects'):
    synthetic.SyntheticParams(max_objects=2)
  with pytest.raises(ValueError, match='height'):
    synthetic.SyntheticParams(height=8)


def test_ensure_concurrent_processes(tmp_path):
  root = tmp_path / 'syn'
  code = ('import sys; from deeplab2_vkmax.data import synthetic; '
          'synthetic.ensure_synthetic_dataset(sys.argv[1], seed=6, '
          'num_train_sequences=1, num_val_sequences=1, train_frames=4, '
          'val_frames=3)')
  processes = [subprocess.Popen([sys.executable, '-c', code, str(root)])
               for _ in range(2)]
  assert [p.wait() for p in processes] == [0, 0]
  assert sorted(os.listdir(tmp_path)) == ['.syn.lock', 'syn']
  assert synthetic.load_metadata(str(root))['params']['seed'] == 6


def test_failed_generation_leaves_nothing(tmp_path, monkeypatch):
  def broken(output_dir, params):
    os.makedirs(os.path.join(output_dir, 'images'))
    raise RuntimeError('disk full')

  monkeypatch.setattr(synthetic, 'write_synthetic_dataset', broken)
  with pytest.raises(RuntimeError, match='disk full'):
    synthetic.ensure_synthetic_dataset(str(tmp_path / 'syn'), **_SMALL)
  assert os.listdir(tmp_path) == ['.syn.lock']
