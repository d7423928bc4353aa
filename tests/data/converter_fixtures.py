"""Helpers the converter tests share: fixture files in the official encodings and
reading converted records back through the training decoder."""

import json
import os
from typing import Dict, Iterable, Mapping, Tuple

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from deeplab2_vkmax import common
from deeplab2_vkmax.data import clip_reader


def write_png(path: str, array: np.ndarray) -> None:
  """uint8 [H, W] / [H, W, 3] or uint16 [H, W] (a 16-bit PNG) -> PNG file."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path, format='PNG')


def write_jpeg(path: str, rng: np.random.Generator, height: int,
               width: int) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
  Image.fromarray(image).save(path, format='JPEG')


def write_id_map(path: str, ids: np.ndarray) -> None:
  """Segment ids int [H, W] -> RGB PNG with id = R + 256 G + 256^2 B."""
  ids = np.asarray(ids, np.int64)
  rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1)
  write_png(path, rgb.astype(np.uint8))


def write_json(path: str, data) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    json.dump(data, f)


def json_categories(descriptor, category_ids: Iterable[int]):
  """COCO-style categories for `descriptor`'s classes, in class order."""
  return [{'id': int(i), 'name': name, 'isthing': int(descriptor.is_thing(c)),
           'supercategory': 'x'}
          for c, (i, name) in enumerate(zip(category_ids, descriptor.class_names))]


def read_back(paths: Iterable[str], descriptor) -> Dict[Tuple[str, int], Mapping]:
  """{(sequence_id, frame_id): decoded frame + raw example} in record order."""
  frames = {}
  for path in paths:
    for record in tf.data.TFRecordDataset(path):
      decoded = clip_reader.decode_example(record, descriptor)  # Training decoder.
      decoded = {k: v.numpy() for k, v in decoded.items()}
      decoded['example'] = tf.train.Example.FromString(record.numpy())
      decoded['shard'] = path
      key = (decoded[common.SEQUENCE_ID].decode(), int(decoded[common.FRAME_ID]))
      assert key not in frames
      frames[key] = decoded
  return frames


def feature_bytes(frame: Mapping, key: str) -> bytes:
  return frame['example'].features.feature[key].bytes_list.value[0]


def has_label(frame: Mapping) -> bool:
  return common.KEY_ENCODED_LABEL in frame['example'].features.feature


def expect_error(convert, output_dir: str, match: str) -> None:
  """`convert()` raises a ValueError matching `match`; no shard is left behind."""
  with pytest.raises(ValueError, match=match):
    convert()
  assert not os.path.exists(output_dir) or not os.listdir(output_dir)


def write_image_set(descriptor, category_ids, images, json_path, mask_dir,
                    names_fn, image_path_fn, seed=0, image_format='JPEG'):
  """A COCO-format panoptic image set (COCO, Cityscapes).

  Args:
    descriptor: The data set's descriptor (categories in class order).
    category_ids: JSON category id of each class.
    images: {image id: [(segment id, class id, iscrowd)]}.
    json_path: Where the JSON goes.
    mask_dir: Where the RGB id maps go.
    names_fn: image id -> (image file name, id map file name), official style.
    image_path_fn: image file name -> its path.
    seed: Pixel randomness.
    image_format: 'JPEG' or 'PNG'.

  Returns:
    ({image id: expected panoptic int [H, W]}, the JSON dict). Things are
    expected numbered 1, 2, ... per class in segments_info order, crowd 0.
  """
  rng = np.random.default_rng(seed)
  category_ids = list(category_ids)
  truth, json_images, annotations = {}, [], []
  for index, (image_id, segments) in enumerate(images.items()):
    height, width = 5 + index, 8
    ids = rng.choice([0] + [s[0] for s in segments], (height, width))
    ids[0, :len(segments)] = [s[0] for s in segments]
    file_name, mask_name = names_fn(image_id)
    path = image_path_fn(file_name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format=image_format)
    write_id_map(os.path.join(mask_dir, mask_name), ids)
    table, counts = {0: descriptor.void_panoptic_label}, {}
    for segment_id, class_id, crowd in segments:
      instance = 0
      if descriptor.is_thing(class_id) and not crowd:
        counts[class_id] = instance = counts.get(class_id, 0) + 1
      table[segment_id] = class_id * descriptor.panoptic_label_divisor + instance
    truth[image_id] = np.vectorize(table.get)(ids)
    json_images.append({'id': image_id, 'file_name': file_name,
                        'height': height, 'width': width})
    annotations.append({
        'image_id': image_id, 'file_name': mask_name,
        'segments_info': [{'id': s, 'category_id': category_ids[c],
                           'iscrowd': k, 'area': int((ids == s).sum())}
                          for s, c, k in segments]})
  data = {'images': json_images, 'annotations': annotations,
          'categories': json_categories(descriptor, category_ids)}
  write_json(json_path, data)
  return truth, data
