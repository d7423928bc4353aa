"""Resizing and clip (frame-stacking) reshapes.

Video-kMaX (Shin et al. 2024, Sec. 3.1) turns kMaX-DeepLab into clip-kMaX by
stacking the T frames of a clip along the height axis before the transformer
decoder, so one k-means assignment covers all T*h*w pixels. DeepLab2 resizes with
`align_corners=True` so that odd crop sizes (n - 1) / os + 1 line up across strides.
"""

import tensorflow as tf


def resize_bilinear(images: tf.Tensor, size) -> tf.Tensor:
  """Bilinear resize with aligned corners: [B, h, w, C] -> [B, size[0], size[1], C].

  The result keeps the input's dtype (TF's bilinear resize returns float32, which
  would break bfloat16/float16 compute under a mixed-precision policy).
  """
  resized = tf.compat.v1.image.resize(
      images, size, method=tf.image.ResizeMethod.BILINEAR, align_corners=True)
  return tf.cast(resized, images.dtype)


def stack_frames(features: tf.Tensor, num_frames) -> tf.Tensor:
  """[B*T, h, w, C] -> [B, T*h, w, C] (frames stacked along height)."""
  shape = tf.shape(features)
  height, width, channels = shape[1], shape[2], shape[3]
  static_channels = features.shape[-1]
  stacked = tf.reshape(features, [-1, num_frames * height, width, channels])
  return tf.ensure_shape(stacked, [None, None, None, static_channels])


def unstack_frames(features: tf.Tensor, num_frames) -> tf.Tensor:
  """[B, T*h, w, C] -> [B*T, h, w, C]."""
  shape = tf.shape(features)
  static_channels = features.shape[-1]
  frames = tf.reshape(features, [-1, shape[1] // num_frames, shape[2], shape[3]])
  return tf.ensure_shape(frames, [None, None, None, static_channels])
