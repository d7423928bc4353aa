"""Dataset descriptors: the static facts about each data set the library reads.

A `DatasetDescriptor` holds what the data pipeline, the losses, the post-processor and
the metrics need to know about a data set (number of classes, ignore label, panoptic
label divisor, which classes are things, names, colours, split sizes). DeepLab2 users
know the concept from `deeplab2/data/dataset.py`; here there is one registry dict and a
lookup that raises a `ValueError` listing the valid names (no name-substring dispatch).

Label convention for every panoptic data set: `panoptic = semantic * divisor +
instance`, semantic ids are contiguous and 0-based, `ignore_label` marks void pixels
(panoptic `ignore_label * divisor`), instance 0 on a thing pixel means crowd / untracked.
"""

import dataclasses
import types
from typing import Mapping, Sequence, Tuple

_RGB = Tuple[int, int, int]


@dataclasses.dataclass(frozen=True)
class DatasetDescriptor:
  """Immutable description of one data set.

  Attributes:
    name: Registry name, e.g. 'kitti_step'.
    num_classes: Number of semantic classes (void excluded).
    ignore_label: Semantic id of void pixels.
    panoptic_label_divisor: `panoptic = semantic * divisor + instance`.
    thing_class_ids: Thing class ids (0-based semantic ids).
    class_names: `num_classes` names, index = semantic id.
    colormap: `num_classes` RGB triples for visualisation, index = semantic id.
    splits_to_sizes: Split name -> number of frames (examples); empty where unknown.
    splits_to_num_sequences: Split name -> number of videos; empty for image sets.
    is_video_dataset: Whether examples are frames of videos (sequence / frame ids).
    is_panoptic: False for semantic-only data (VSPW): no instance ids.
  """

  name: str
  num_classes: int
  ignore_label: int
  panoptic_label_divisor: int
  thing_class_ids: Tuple[int, ...]
  class_names: Tuple[str, ...]
  colormap: Tuple[_RGB, ...]
  splits_to_sizes: Mapping[str, int]
  splits_to_num_sequences: Mapping[str, int]
  is_video_dataset: bool
  is_panoptic: bool = True

  def __post_init__(self):
    if len(self.class_names) != self.num_classes:
      raise ValueError(
          f'{self.name}: got {len(self.class_names)} class names, expected '
          f'num_classes={self.num_classes}.')
    if len(self.colormap) != self.num_classes:
      raise ValueError(
          f'{self.name}: got {len(self.colormap)} colours, expected '
          f'num_classes={self.num_classes}.')
    bad = [c for c in self.thing_class_ids
           if not 0 <= c < self.num_classes]
    if bad:
      raise ValueError(f'{self.name}: thing class ids {bad} outside '
                       f'[0, {self.num_classes}).')
    if 0 <= self.ignore_label < self.num_classes:
      raise ValueError(f'{self.name}: ignore_label {self.ignore_label} collides '
                       f'with a class id in [0, {self.num_classes}).')

  def __hash__(self) -> int:
    # The split mappings are read-only proxies, which do not hash; names are unique.
    return hash((self.name, self.num_classes, self.panoptic_label_divisor))

  @property
  def stuff_class_ids(self) -> Tuple[int, ...]:
    """Class ids that are not things, in increasing order."""
    things = set(self.thing_class_ids)
    return tuple(c for c in range(self.num_classes) if c not in things)

  @property
  def void_panoptic_label(self) -> int:
    """Panoptic id of void pixels (also the label padding value)."""
    return self.ignore_label * self.panoptic_label_divisor

  def is_thing(self, class_id: int) -> bool:
    """Whether `class_id` is a thing class."""
    return class_id in self.thing_class_ids


def _frozen(mapping: Mapping[str, int]) -> Mapping[str, int]:
  return types.MappingProxyType(dict(mapping))


def _generated_colormap(num_classes: int) -> Tuple[_RGB, ...]:
  """Distinct, deterministic colours: bit-interleaved class index (PASCAL style)."""
  colours = []
  for index in range(num_classes):
    r = g = b = 0
    value = index + 1  # Skip black, which reads as void in visualisations.
    for shift in range(7, -1, -1):
      r |= ((value >> 0) & 1) << shift
      g |= ((value >> 1) & 1) << shift
      b |= ((value >> 2) & 1) << shift
      value >>= 3
    colours.append((r, g, b))
  return tuple(colours)


_CITYSCAPES_NAMES = (
    'road', 'sidewalk', 'building', 'wall', 'fence', 'pole', 'traffic light',
    'traffic sign', 'vegetation', 'terrain', 'sky', 'person', 'rider', 'car',
    'truck', 'bus', 'train', 'motorcycle', 'bicycle')
_CITYSCAPES_COLORMAP = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156),
    (190, 153, 153), (153, 153, 153), (250, 170, 30), (220, 220, 0),
    (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100),
    (0, 0, 230), (119, 11, 32))

# VIPSeg's 124 categories in order (0-based id = position) and the 58 thing names.
_VIPSEG_NAMES = (
    'wall', 'ceiling', 'door', 'stair', 'ladder', 'escalator', 'playground_slide',
    'handrail_or_fence', 'window', 'rail', 'goal', 'pillar', 'pole', 'floor',
    'ground', 'grass', 'sand', 'athletic_field', 'road', 'path', 'crosswalk',
    'building', 'house', 'bridge', 'tower', 'windmill', 'well_or_well_lid',
    'other_construction', 'sky', 'mountain', 'stone', 'wood', 'ice', 'snowfield',
    'grandstand', 'sea', 'river', 'lake', 'waterfall', 'water',
    'billboard_or_bulletin_board', 'sculpture', 'pipeline', 'flag',
    'parasol_or_umbrella', 'cushion_or_carpet', 'tent', 'roadblock', 'car', 'bus',
    'truck', 'bicycle', 'motorcycle', 'wheeled_machine', 'ship_or_boat', 'raft',
    'airplane', 'tyre', 'traffic_light', 'lamp', 'person', 'cat', 'dog', 'horse',
    'cattle', 'other_animal', 'tree', 'flower', 'other_plant', 'toy', 'ball_net',
    'backboard', 'skateboard', 'bat', 'ball',
    'cupboard_or_showcase_or_storage_rack', 'box', 'traveling_case_or_trolley_case',
    'basket', 'bag_or_package', 'trash_can', 'cage', 'plate', 'tub_or_bowl_or_pot',
    'bottle_or_cup', 'barrel', 'fishbowl', 'bed', 'pillow', 'table_or_desk',
    'chair_or_seat', 'bench', 'sofa', 'shelf', 'bathtub', 'gun', 'commode',
    'roaster', 'other_machine', 'refrigerator', 'washing_machine', 'microwave_oven',
    'fan', 'curtain', 'textiles', 'clothes', 'painting_or_poster', 'mirror',
    'flower_pot_or_vase', 'clock', 'book', 'tool', 'blackboard', 'tissue',
    'screen_or_television', 'computer', 'printer', 'mobile_phone', 'keyboard',
    'other_electronic_product', 'fruit', 'food', 'instrument', 'train')
_VIPSEG_THING_NAMES = frozenset((
    'door', 'ladder', 'window', 'goal', 'sculpture', 'flag', 'parasol_or_umbrella',
    'tent', 'roadblock', 'car', 'bus', 'truck', 'bicycle', 'motorcycle',
    'ship_or_boat', 'raft', 'airplane', 'person', 'cat', 'dog', 'horse', 'cattle',
    'other_animal', 'skateboard', 'ball', 'box', 'traveling_case_or_trolley_case',
    'basket', 'bag_or_package', 'plate', 'tub_or_bowl_or_pot', 'bottle_or_cup',
    'barrel', 'fishbowl', 'bed', 'pillow', 'table_or_desk', 'chair_or_seat',
    'bench', 'sofa', 'gun', 'commode', 'roaster', 'refrigerator',
    'washing_machine', 'microwave_oven', 'fan', 'painting_or_poster', 'mirror',
    'flower_pot_or_vase', 'clock', 'screen_or_television', 'computer', 'printer',
    'mobile_phone', 'keyboard', 'instrument', 'train'))

# COCO panoptic, contiguous 0-based ids: the 80 things, then the 53 stuff classes,
# i.e. the official categories sorted by their COCO id.
_COCO_THING_NAMES = (
    'person', 'bicycle', 'car', 'motorcycle', 'airplane', 'bus', 'train', 'truck',
    'boat', 'traffic light', 'fire hydrant', 'stop sign', 'parking meter', 'bench',
    'bird', 'cat', 'dog', 'horse', 'sheep', 'cow', 'elephant', 'bear', 'zebra',
    'giraffe', 'backpack', 'umbrella', 'handbag', 'tie', 'suitcase', 'frisbee',
    'skis', 'snowboard', 'sports ball', 'kite', 'baseball bat', 'baseball glove',
    'skateboard', 'surfboard', 'tennis racket', 'bottle', 'wine glass', 'cup',
    'fork', 'knife', 'spoon', 'bowl', 'banana', 'apple', 'sandwich', 'orange',
    'broccoli', 'carrot', 'hot dog', 'pizza', 'donut', 'cake', 'chair', 'couch',
    'potted plant', 'bed', 'dining table', 'toilet', 'tv', 'laptop', 'mouse',
    'remote', 'keyboard', 'cell phone', 'microwave', 'oven', 'toaster', 'sink',
    'refrigerator', 'book', 'clock', 'vase', 'scissors', 'teddy bear',
    'hair drier', 'toothbrush')
_COCO_STUFF_NAMES = (
    'banner', 'blanket', 'bridge', 'cardboard', 'counter', 'curtain', 'door-stuff',
    'floor-wood', 'flower', 'fruit', 'gravel', 'house', 'light', 'mirror-stuff',
    'net', 'pillow', 'platform', 'playingfield', 'railroad', 'river', 'road',
    'roof', 'sand', 'sea', 'shelf', 'snow', 'stairs', 'tent', 'towel',
    'wall-brick', 'wall-stone', 'wall-tile', 'wall-wood', 'water-other',
    'window-blind', 'window-other', 'tree-merged', 'fence-merged',
    'ceiling-merged', 'sky-other-merged', 'cabinet-merged', 'table-merged',
    'floor-other-merged', 'pavement-merged', 'mountain-merged', 'grass-merged',
    'dirt-merged', 'paper-merged', 'food-other-merged', 'building-other-merged',
    'rock-merged', 'wall-other-merged', 'rug-merged')

# Synthetic set (deeplab2_vkmax.data.synthetic): class ids are part of its format.
SYNTHETIC_CLASS_NAMES = ('road', 'vegetation', 'building', 'sky', 'car', 'person')
SYNTHETIC_THING_CLASS_IDS = (4, 5)
_SYNTHETIC_COLORMAP = ((128, 64, 128), (107, 142, 35), (70, 70, 70),
                       (70, 130, 180), (0, 0, 142), (220, 20, 60))


def _names_to_ids(names: Sequence[str], thing_names) -> Tuple[int, ...]:
  return tuple(i for i, n in enumerate(names) if n in thing_names)


_DATASETS = {
    'kitti_step': DatasetDescriptor(
        name='kitti_step',
        num_classes=19,
        ignore_label=255,
        panoptic_label_divisor=1000,
        thing_class_ids=(11, 13),
        class_names=_CITYSCAPES_NAMES,
        colormap=_CITYSCAPES_COLORMAP,
        splits_to_sizes=_frozen({'train': 5027, 'val': 2981, 'test': 11095}),
        splits_to_num_sequences=_frozen({'train': 12, 'val': 9, 'test': 29}),
        is_video_dataset=True),
    'vipseg': DatasetDescriptor(
        name='vipseg',
        num_classes=124,
        ignore_label=255,
        panoptic_label_divisor=1000,
        thing_class_ids=_names_to_ids(_VIPSEG_NAMES, _VIPSEG_THING_NAMES),
        class_names=_VIPSEG_NAMES,
        colormap=_generated_colormap(124),
        splits_to_sizes=_frozen({}),  # Frame counts per split not pinned here.
        splits_to_num_sequences=_frozen({'train': 2806, 'val': 343, 'test': 387}),
        is_video_dataset=True),
    'vspw': DatasetDescriptor(
        name='vspw',
        num_classes=124,
        ignore_label=255,
        panoptic_label_divisor=1000,
        thing_class_ids=(),
        class_names=tuple(f'class_{i}' for i in range(124)),
        colormap=_generated_colormap(124),
        splits_to_sizes=_frozen({}),
        splits_to_num_sequences=_frozen({'train': 2806, 'val': 343, 'test': 387}),
        is_video_dataset=True,
        is_panoptic=False),
    'coco_panoptic': DatasetDescriptor(
        name='coco_panoptic',
        num_classes=133,
        ignore_label=255,
        panoptic_label_divisor=1000,
        thing_class_ids=tuple(range(80)),
        class_names=_COCO_THING_NAMES + _COCO_STUFF_NAMES,
        colormap=_generated_colormap(133),
        splits_to_sizes=_frozen({'train': 118287, 'val': 5000, 'test': 40670}),
        splits_to_num_sequences=_frozen({}),
        is_video_dataset=False),
    'cityscapes_panoptic': DatasetDescriptor(
        name='cityscapes_panoptic',
        num_classes=19,
        ignore_label=255,
        panoptic_label_divisor=1000,
        thing_class_ids=tuple(range(11, 19)),
        class_names=_CITYSCAPES_NAMES,
        colormap=_CITYSCAPES_COLORMAP,
        splits_to_sizes=_frozen({'train': 2975, 'val': 500, 'test': 1525}),
        splits_to_num_sequences=_frozen({}),
        is_video_dataset=False),
    'synthetic': DatasetDescriptor(
        name='synthetic',
        num_classes=6,
        ignore_label=255,
        panoptic_label_divisor=1000,
        thing_class_ids=SYNTHETIC_THING_CLASS_IDS,
        class_names=SYNTHETIC_CLASS_NAMES,
        colormap=_SYNTHETIC_COLORMAP,
        # Default generation parameters (train 4 x 20 frames, val 2 x 12 frames).
        splits_to_sizes=_frozen({'train': 80, 'val': 24}),
        splits_to_num_sequences=_frozen({'train': 4, 'val': 2}),
        is_video_dataset=True),
}


def dataset_names() -> Tuple[str, ...]:
  """Registered data set names, sorted."""
  return tuple(sorted(_DATASETS))


def get_dataset_descriptor(name: str) -> DatasetDescriptor:
  """Returns the descriptor registered under `name`.

  Args:
    name: Registry name, e.g. 'kitti_step'.

  Returns:
    The frozen `DatasetDescriptor`.

  Raises:
    ValueError: If `name` is not registered; the message lists the valid names.
  """
  try:
    return _DATASETS[name]
  except (KeyError, TypeError):
    raise ValueError(f'Unknown dataset {name!r}; expected one of '
                     f'{list(dataset_names())}.') from None
