"""The KITTI-STEP panoptic PNG encoding: R = semantic, G = instance // 256, B = instance % 256.

Used by the KITTI-STEP ground truth (data/build_step_data.py), the synthetic data
set, the evaluator's KITTI-STEP predictions and vkmax-predict's panoptic PNGs.
"""

import numpy as np
from PIL import Image


def encode_panoptic_rgb(semantic: np.ndarray, instance: np.ndarray) -> np.ndarray:
  """KITTI-STEP panoptic map: R = semantic, G = instance // 256, B = instance % 256.

  Args:
    semantic: int [H, W] semantic ids in [0, 255].
    instance: int [H, W] instance ids in [0, 65535].

  Returns:
    uint8 [H, W, 3].
  """
  if semantic.min() < 0 or semantic.max() > 255:
    raise ValueError(f'semantic ids must be in [0, 255], got range '
                     f'[{semantic.min()}, {semantic.max()}].')
  if instance.min() < 0 or instance.max() > 65535:
    raise ValueError(f'instance ids must be in [0, 65535], got range '
                     f'[{instance.min()}, {instance.max()}].')
  return np.stack([semantic, instance // 256, instance % 256],
                  axis=-1).astype(np.uint8)


def decode_panoptic_rgb(rgb: np.ndarray,
                        label_divisor: int) -> np.ndarray:
  """Inverse of `encode_panoptic_rgb`: int32 [H, W] `semantic * divisor + inst`."""
  rgb = rgb.astype(np.int32)
  return rgb[..., 0] * label_divisor + rgb[..., 1] * 256 + rgb[..., 2]


def read_panoptic_png(path: str, label_divisor: int) -> np.ndarray:
  """Reads a KITTI-STEP panoptic PNG into int32 [H, W] panoptic labels."""
  with Image.open(path) as image:
    rgb = np.asarray(image.convert('RGB'))
  return decode_panoptic_rgb(rgb, label_divisor)
