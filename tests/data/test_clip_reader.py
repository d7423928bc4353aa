"""Tests for deeplab2_vkmax.data.clip_reader (tf.data clip pipeline)."""

import os

import numpy as np
import pytest
import tensorflow as tf

from deeplab2_vkmax import common
from deeplab2_vkmax.data import build_step_data
from deeplab2_vkmax.data import clip_reader
from deeplab2_vkmax.data import dataset
from deeplab2_vkmax.data import synthetic

_DESCRIPTOR = dataset.get_dataset_descriptor('synthetic')
_PARAMS = dict(seed=0, num_train_sequences=2, train_frames=6, num_val_sequences=1,
               val_frames=5, height=32, width=64, max_objects=4)


@pytest.fixture(scope='module')
def data(tmp_path_factory):
  """Synthetic set converted to TFRecords; truth[(seq, frame)] = (image, label)."""
  base = tmp_path_factory.mktemp('clips')
  root = synthetic.ensure_synthetic_dataset(str(base / 'synthetic'), **_PARAMS)
  records = str(base / 'records')
  for split in synthetic.SPLITS:
    build_step_data.convert_split(root, split, records, num_shards=2,
                                  dataset_name='synthetic')
  params = synthetic.SyntheticParams(**_PARAMS)
  truth = {}
  for split in synthetic.SPLITS:
    for index in range(params.split_shape(split)[0]):
      sequence = synthetic.generate_sequence(params, split, index)
      for f in range(sequence.images.shape[0]):
        truth[(sequence.sequence_id, f)] = (sequence.images[f], sequence.panoptic[f])
  return {'train': os.path.join(records, 'train-*'),
          'val': os.path.join(records, 'val-*'), 'truth': truth}


def _build(pattern, **kwargs):
  options = dict(descriptor=_DESCRIPTOR, clip_length=2, batch_size=1,
                 crop_size=(32, 64), is_training=False, deterministic=True)
  options.update(kwargs)
  return clip_reader.build_clip_dataset(pattern, **options)


def _clips(ds, count=None):
  ds = ds.unbatch()
  if count is not None:
    ds = ds.take(count)
  return list(ds.as_numpy_iterator())


@pytest.mark.parametrize('clip_length,frame_stride', [(2, 1), (3, 2)])
def test_eval_clips_are_exact_in_order_and_complete(data, clip_length, frame_stride):
  clips = _clips(_build(data['train'], clip_length=clip_length,
                        frame_stride=frame_stride))
  span = (clip_length - 1) * frame_stride
  assert len(clips) == 2 * (6 - span)  # Every window of every sequence, no more.
  starts = set()
  for clip in clips:
    sequence_id = clip[common.SEQUENCE_ID].decode()
    frames = clip[common.FRAME_ID]
    np.testing.assert_array_equal(np.diff(frames), frame_stride)
    starts.add((sequence_id, int(frames[0])))
    for t, f in enumerate(frames):
      image, label = data['truth'][(sequence_id, int(f))]
      np.testing.assert_array_equal(clip[common.IMAGE][t], image)
      np.testing.assert_array_equal(clip[common.PANOPTIC_LABEL][t], label)
  assert starts == {(s, f) for s in ('0000', '0001') for f in range(6 - span)}


def test_shapes_dtypes_and_static_spec(data):
  ds = _build(data['train'], batch_size=3, clip_length=2, is_training=True,
              crop_size=(24, 40), seed=1, min_scale_factor=0.5,
              max_scale_factor=1.5, scale_factor_step_size=0.25,
              photometric=True)
  spec = ds.element_spec
  assert spec[common.IMAGE].shape == (3, 2, 24, 40, 3)
  assert spec[common.PANOPTIC_LABEL].shape == (3, 2, 24, 40)
  assert spec[common.FRAME_ID].shape == (3, 2)
  batch = next(iter(ds))
  assert batch[common.IMAGE].dtype == tf.float32
  assert batch[common.PANOPTIC_LABEL].dtype == tf.int32
  assert batch[common.SEQUENCE_ID].dtype == tf.string
  assert batch[common.SEQUENCE_ID].shape == (3,)
  assert batch[common.FRAME_ID].dtype == tf.int32
  images = batch[common.IMAGE].numpy()
  assert images.min() >= 0.0 and images.max() <= 255.0
  # Exactly these keys (the loss derives semantic labels from the panoptic ones).
  assert set(batch) == {common.IMAGE, common.PANOPTIC_LABEL, common.SEQUENCE_ID,
                        common.FRAME_ID}


def test_eval_padding_uses_mean_and_ignore_label(data):
  clip = _clips(_build(data['val'], crop_size=(40, 70)), 1)[0]
  assert clip[common.IMAGE].shape == (2, 40, 70, 3)
  image, label = data['truth'][(clip[common.SEQUENCE_ID].decode(), 0)]
  np.testing.assert_array_equal(clip[common.IMAGE][0, :32, :64], image)
  np.testing.assert_array_equal(clip[common.PANOPTIC_LABEL][0, :32, :64], label)
  assert np.all(clip[common.IMAGE][:, 32:] == 127.5)
  assert np.all(clip[common.IMAGE][:, :, 64:] == 127.5)
  assert np.all(clip[common.PANOPTIC_LABEL][:, 32:] == 255000)
  assert np.all(clip[common.PANOPTIC_LABEL][:, :, 64:] == 255000)


def test_one_flip_for_all_frames_of_a_clip(data):
  clips = _clips(_build(data['train'], is_training=True, seed=3, flip=True,
                        repeat=False))
  flipped = 0
  for clip in clips:
    sequence_id = clip[common.SEQUENCE_ID].decode()
    decisions = []
    for t, f in enumerate(clip[common.FRAME_ID]):
      image, label = data['truth'][(sequence_id, int(f))]
      got = clip[common.PANOPTIC_LABEL][t]
      if np.array_equal(got, label):
        decisions.append(False)
        np.testing.assert_array_equal(clip[common.IMAGE][t], image)
      else:
        np.testing.assert_array_equal(got, label[:, ::-1])
        np.testing.assert_array_equal(clip[common.IMAGE][t], image[:, ::-1])
        decisions.append(True)
    assert len(set(decisions)) == 1  # Same decision for every frame.
    flipped += decisions[0]
  assert 0 < flipped < len(clips)  # Both outcomes occur.


def test_one_crop_for_all_frames_of_a_clip(data):
  clips = _clips(_build(data['train'], is_training=True, seed=4, flip=False,
                        crop_size=(16, 24), repeat=False))
  offsets_seen = set()
  for clip in clips:
    sequence_id = clip[common.SEQUENCE_ID].decode()
    frames = [int(f) for f in clip[common.FRAME_ID]]
    first_image, _ = data['truth'][(sequence_id, frames[0])]
    matches = [(y, x) for y in range(32 - 16 + 1) for x in range(64 - 24 + 1)
               if np.array_equal(first_image[y:y + 16, x:x + 24],
                                 clip[common.IMAGE][0])]
    assert matches
    y, x = matches[0]
    offsets_seen.add((y, x))
    for t, f in enumerate(frames):
      image, label = data['truth'][(sequence_id, f)]
      np.testing.assert_array_equal(clip[common.IMAGE][t], image[y:y + 16, x:x + 24])
      np.testing.assert_array_equal(clip[common.PANOPTIC_LABEL][t],
                                    label[y:y + 16, x:x + 24])
  assert len(offsets_seen) > 1


def test_scaling_keeps_label_values_and_pads_with_ignore(data):
  clips = _clips(_build(data['train'], is_training=True, seed=5,
                        min_scale_factor=0.5, max_scale_factor=0.5, flip=False,
                        repeat=False))
  for clip in clips:
    labels = clip[common.PANOPTIC_LABEL]
    sequence_id = clip[common.SEQUENCE_ID].decode()
    source = set()
    for f in clip[common.FRAME_ID]:
      source |= set(np.unique(data['truth'][(sequence_id, int(f))][1]))
    # Nearest-neighbour resizing creates no new ids; half size pads the rest.
    assert set(np.unique(labels)) <= source | {255000}
    assert np.all(labels[:, 16:] == 255000) and np.all(labels[:, :, 32:] == 255000)
    assert np.all(clip[common.IMAGE][:, 16:] == 127.5)


def test_seeded_pipeline_is_reproducible(data):
  def first(seed, photometric=False):
    ds = _build(data['train'], is_training=True, seed=seed, batch_size=2,
                min_scale_factor=0.75, max_scale_factor=1.25,
                photometric=photometric)
    return [{k: v.numpy() for k, v in b.items()} for b in ds.take(3)]

  a, b, c = first(7), first(7), first(8)
  for x, y in zip(a, b):
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])
  assert any(not np.array_equal(x[common.IMAGE], z[common.IMAGE])
             for x, z in zip(a, c))
  # Photometric jitter changes pixels only; geometry draws stay the same.
  jittered = first(7, photometric=True)
  for x, j in zip(a, jittered):
    np.testing.assert_array_equal(x[common.PANOPTIC_LABEL], j[common.PANOPTIC_LABEL])
    assert not np.array_equal(x[common.IMAGE], j[common.IMAGE])


def test_training_repeats_and_shuffles(data):
  ds = _build(data['train'], is_training=True, seed=0, batch_size=4)
  batches = list(ds.take(6).as_numpy_iterator())  # 10 clips: needs repetition.
  assert len(batches) == 6
  order = [(s, int(f[0])) for b in batches
           for s, f in zip(b[common.SEQUENCE_ID], b[common.FRAME_ID])]
  assert order[:10] != sorted(order[:10])


def test_max_thing_id_error_names_sequence(data):
  ds = _build(data['train'], max_thing_id=1)  # Synthetic ids go up to 4.
  with pytest.raises(tf.errors.InvalidArgumentError, match=r'max_thing_id=1.*000'):
    for _ in ds:
      pass
  assert sum(1 for _ in _build(data['train'], max_thing_id=999)) == 10


def test_read_sequences_matches_ground_truth(data):
  got = list(clip_reader.read_sequences([data['val'], data['train']], _DESCRIPTOR))
  assert sorted(s for s, _, _ in got) == ['0000', '0001', '0002']
  for sequence_id, images, labels in got:
    assert images.dtype == np.uint8 and labels.dtype == np.int32
    expected = [data['truth'][(sequence_id, f)] for f in range(images.shape[0])]
    np.testing.assert_array_equal(images, np.stack([e[0] for e in expected]))
    np.testing.assert_array_equal(labels, np.stack([e[1] for e in expected]))


def test_invalid_arguments(data):
  with pytest.raises(ValueError, match='No TFRecord file matches'):
    _build('/nonexistent/train-*')
  with pytest.raises(ValueError, match='clip_length'):
    _build(data['train'], clip_length=0)
  with pytest.raises(ValueError, match='crop_size'):
    _build(data['train'], crop_size=(32,))
  with pytest.raises(ValueError, match='min_scale_factor'):
    _build(data['train'], min_scale_factor=2.0, max_scale_factor=1.0)
