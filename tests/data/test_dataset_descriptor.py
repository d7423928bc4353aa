"""Tests for deeplab2_vkmax.data.dataset (descriptor registry)."""

import dataclasses

import pytest

from deeplab2_vkmax.data import dataset


def test_registry_names():
  assert set(dataset.dataset_names()) == {
      'kitti_step', 'vipseg', 'vspw', 'coco_panoptic', 'cityscapes_panoptic',
      'synthetic'}


def test_kitti_step_matches_deeplab2():
  d = dataset.get_dataset_descriptor('kitti_step')
  assert (d.num_classes, d.ignore_label, d.panoptic_label_divisor) == (19, 255, 1000)
  assert d.thing_class_ids == (11, 13)
  assert d.class_names[11] == 'person' and d.class_names[13] == 'car'
  assert d.colormap[0] == (128, 64, 128)
  assert dict(d.splits_to_sizes) == {'train': 5027, 'val': 2981, 'test': 11095}
  assert d.is_video_dataset
  assert d.void_panoptic_label == 255000


@pytest.mark.parametrize('name,num_classes,num_things', [
    ('vipseg', 124, 58), ('vspw', 124, 0), ('coco_panoptic', 133, 80),
    ('cityscapes_panoptic', 19, 8), ('synthetic', 6, 2)])
def test_class_counts(name, num_classes, num_things):
  d = dataset.get_dataset_descriptor(name)
  assert d.num_classes == num_classes
  assert len(d.thing_class_ids) == num_things
  assert len(d.class_names) == len(d.colormap) == num_classes
  assert len(set(d.colormap)) == num_classes  # Distinguishable in visualisations.
  assert len(d.stuff_class_ids) == num_classes - num_things


def test_vipseg_things_by_name():
  d = dataset.get_dataset_descriptor('vipseg')
  things = {d.class_names[i] for i in d.thing_class_ids}
  assert {'person', 'car', 'train', 'door'} <= things
  assert not {'wall', 'sky', 'tree', 'road'} & things


def test_synthetic_classes():
  d = dataset.get_dataset_descriptor('synthetic')
  assert d.class_names == ('road', 'vegetation', 'building', 'sky', 'car', 'person')
  assert d.thing_class_ids == (4, 5)
  assert d.is_thing(4) and not d.is_thing(3)


def test_unknown_name_lists_valid_names():
  with pytest.raises(ValueError, match='kitti_step') as info:
    dataset.get_dataset_descriptor('kitti')
  assert "'kitti'" in str(info.value)


def test_descriptor_is_immutable_and_hashable():
  d = dataset.get_dataset_descriptor('kitti_step')
  with pytest.raises(dataclasses.FrozenInstanceError):
    d.num_classes = 3
  with pytest.raises(TypeError):
    d.splits_to_sizes['train'] = 1
  assert hash(d) == hash(dataset.get_dataset_descriptor('kitti_step'))


def test_invalid_descriptor_rejected():
  d = dataset.get_dataset_descriptor('synthetic')
  with pytest.raises(ValueError, match='class names'):
    dataclasses.replace(d, class_names=('a',))
  with pytest.raises(ValueError, match='ignore_label'):
    dataclasses.replace(d, ignore_label=2)
  with pytest.raises(ValueError, match='thing class ids'):
    dataclasses.replace(d, thing_class_ids=(9,))
