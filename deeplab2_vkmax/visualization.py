"""Visualisation of panoptic predictions: colour maps, track colours, overlays.

Pure numpy + PIL (no TensorFlow), shared by the predict CLI
(`deeplab2_vkmax.tools.predict`), evaluation dumps and image summaries.

Colours:
  * Stuff pixels take their class colour from the data set descriptor
    (`DatasetDescriptor.colormap`); void pixels are black.
  * Thing pixels with a track id take a colour that is a pure function of the
    track id (`track_colour`): the hue steps by the golden-ratio conjugate per id,
    so consecutive ids land far apart on the colour wheel, and saturation /
    brightness come from an integer hash of the id. No Python `hash()` (salted
    per process), so colours are stable across runs and machines.
  * Crowd thing pixels (instance 0) take their class colour.

Overlays blend the colourised map over the frame, draw segment contours and
label each segment with `<class name> <track id>` (PIL's default bitmap font).
"""

from typing import Sequence, Tuple

import numpy as np
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont

from deeplab2_vkmax.data import dataset as dataset_lib

_GOLDEN_RATIO_CONJUGATE = 0.6180339887498949
_VOID_COLOUR = (0, 0, 0)


def _mix32(value: int) -> int:
  """A 32-bit integer avalanche hash (murmur3 finaliser); deterministic."""
  value &= 0xFFFFFFFF
  value ^= value >> 16
  value = (value * 0x85EBCA6B) & 0xFFFFFFFF
  value ^= value >> 13
  value = (value * 0xC2B2AE35) & 0xFFFFFFFF
  value ^= value >> 16
  return value


def _hsv_to_rgb(hue: float, saturation: float, value: float) -> Tuple[int, int, int]:
  sector = int(hue * 6.0) % 6
  fraction = hue * 6.0 - int(hue * 6.0)
  p = value * (1.0 - saturation)
  q = value * (1.0 - fraction * saturation)
  t = value * (1.0 - (1.0 - fraction) * saturation)
  rgb = ((value, t, p), (q, value, p), (p, value, t),
         (p, q, value), (t, p, value), (value, p, q))[sector]
  return tuple(int(round(255 * c)) for c in rgb)


def track_colour(track_id: int) -> Tuple[int, int, int]:
  """Deterministic RGB colour of a track id.

  Args:
    track_id: A positive track (instance) id.

  Returns:
    (r, g, b) in [0, 255]: the same for the same id in every run; ids next to each
    other differ in hue by about 0.38 of the colour wheel.
  """
  track_id = int(track_id)
  hashed = _mix32(track_id)
  hue = (track_id * _GOLDEN_RATIO_CONJUGATE) % 1.0
  # Saturated, bright colours stay readable over both the frame and white text.
  saturation = 0.65 + 0.35 * ((hashed & 0xFF) / 255.0)
  value = 0.75 + 0.25 * (((hashed >> 8) & 0xFF) / 255.0)
  return _hsv_to_rgb(hue, saturation, value)


def dataset_colormap(descriptor: dataset_lib.DatasetDescriptor) -> np.ndarray:
  """Semantic colour map of a data set.

  Args:
    descriptor: The data set descriptor (its `colormap`, one RGB per class).

  Returns:
    uint8 [max(256, ignore_label + 1), 3]: row c is the colour of semantic id c;
    rows past the classes (the ignore label included) are black.
  """
  size = max(256, descriptor.ignore_label + 1, descriptor.num_classes)
  colormap = np.zeros((size, 3), np.uint8)
  colormap[:descriptor.num_classes] = np.asarray(descriptor.colormap, np.uint8)
  colormap[descriptor.ignore_label] = _VOID_COLOUR
  return colormap


def colourise_panoptic(panoptic: np.ndarray,
                       descriptor: dataset_lib.DatasetDescriptor) -> np.ndarray:
  """Colour image of a panoptic map.

  Args:
    panoptic: int [H, W], `semantic * label_divisor + instance`.
    descriptor: The data set descriptor.

  Returns:
    uint8 [H, W, 3]: class colours for stuff and crowd, `track_colour` for thing
    pixels with an instance id, black for void.
  """
  panoptic = np.asarray(panoptic, np.int64)
  divisor = descriptor.panoptic_label_divisor
  ids, inverse = np.unique(panoptic, return_inverse=True)
  colormap = dataset_colormap(descriptor)
  semantic = ids // divisor
  instance = ids % divisor
  palette = colormap[np.clip(semantic, 0, len(colormap) - 1)]
  things = np.isin(semantic, descriptor.thing_class_ids) & (instance > 0)
  for index in np.flatnonzero(things):
    palette[index] = track_colour(instance[index])
  return palette[inverse.reshape(panoptic.shape)]


def segment_boundaries(panoptic: np.ndarray) -> np.ndarray:
  """bool [H, W]: pixels whose right or lower neighbour has another id (and
  the neighbour itself), i.e. two-pixel-wide contours between segments."""
  panoptic = np.asarray(panoptic)
  boundary = np.zeros(panoptic.shape, bool)
  horizontal = panoptic[:, 1:] != panoptic[:, :-1]
  vertical = panoptic[1:, :] != panoptic[:-1, :]
  boundary[:, 1:] |= horizontal
  boundary[:, :-1] |= horizontal
  boundary[1:, :] |= vertical
  boundary[:-1, :] |= vertical
  return boundary


def segment_label(panoptic_id: int, descriptor: dataset_lib.DatasetDescriptor) -> str:
  """'<class name> <track id>' for tracked things, '<class name>' otherwise."""
  semantic, instance = divmod(int(panoptic_id), descriptor.panoptic_label_divisor)
  if 0 <= semantic < descriptor.num_classes:
    name = descriptor.class_names[semantic]
  else:
    name = 'void' if semantic == descriptor.ignore_label else f'class {semantic}'
  if descriptor.is_thing(semantic) and instance > 0:
    return f'{name} {instance}'
  return name


def _label_anchor(mask: np.ndarray) -> Tuple[int, int]:
  """(y, x) of the mask pixel nearest to the mask's centroid (inside the mask
  even for non-convex segments)."""
  ys, xs = np.nonzero(mask)
  cy, cx = ys.mean(), xs.mean()
  nearest = np.argmin((ys - cy) ** 2 + (xs - cx) ** 2)
  return int(ys[nearest]), int(xs[nearest])


def overlay_panoptic(image: np.ndarray, panoptic: np.ndarray,
                     descriptor: dataset_lib.DatasetDescriptor, *,
                     alpha: float = 0.5, draw_contours: bool = True,
                     draw_labels: bool = True, min_label_area: int = 16,
                     contour_colour: Sequence[int] = (255, 255, 255)) -> np.ndarray:
  """Blends the colourised panoptic map over a frame, with contours and labels.

  Args:
    image: uint8 [H, W, 3] RGB frame.
    panoptic: int [H, W] panoptic map of the frame.
    descriptor: The data set descriptor (names, colours, divisor).
    alpha: Weight of the segmentation colours (0 = frame only).
    draw_contours: Draw segment boundaries in `contour_colour`.
    draw_labels: Write `<class name> <track id>` on every non-void segment of
      at least `min_label_area` pixels.
    min_label_area: Smallest segment that gets a label.
    contour_colour: RGB of the contours.

  Returns:
    uint8 [H, W, 3] RGB overlay.

  Raises:
    ValueError: `image` and `panoptic` differ in height / width.
  """
  image = np.asarray(image)
  panoptic = np.asarray(panoptic)
  if image.ndim != 3 or image.shape[:2] != panoptic.shape:
    raise ValueError(f'image {image.shape} and panoptic {panoptic.shape} must be '
                     f'[H, W, 3] and [H, W] of the same size.')
  colours = colourise_panoptic(panoptic, descriptor).astype(np.float32)
  blended = (1.0 - alpha) * image.astype(np.float32) + alpha * colours
  void = (panoptic // descriptor.panoptic_label_divisor) == descriptor.ignore_label
  blended[void] = image[void]  # Void is left as it was, not darkened.
  result = np.clip(np.round(blended), 0, 255).astype(np.uint8)
  if draw_contours:
    result[segment_boundaries(panoptic)] = np.asarray(contour_colour, np.uint8)
  if not draw_labels:
    return result
  canvas = Image.fromarray(result)
  draw = ImageDraw.Draw(canvas)
  font = ImageFont.load_default()
  ids, counts = np.unique(panoptic, return_counts=True)
  height, width = panoptic.shape
  for panoptic_id, count in zip(ids, counts):
    if (panoptic_id // descriptor.panoptic_label_divisor == descriptor.ignore_label
        or count < min_label_area):
      continue
    text = segment_label(panoptic_id, descriptor)
    y, x = _label_anchor(panoptic == panoptic_id)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    text_width, text_height = right - left, bottom - top
    x0 = min(max(x - text_width // 2, 0), max(width - text_width - 2, 0))
    y0 = min(max(y - text_height // 2, 0), max(height - text_height - 2, 0))
    # A dark box behind the text keeps it readable on any colour.
    draw.rectangle((x0, y0, x0 + text_width + 1, y0 + text_height + 1), fill=(0, 0, 0))
    draw.text((x0 + 1 - left, y0 + 1 - top), text, fill=(255, 255, 255), font=font)
  return np.asarray(canvas)


def video_strip(frames: np.ndarray, ground_truth: np.ndarray, prediction: np.ndarray,
                descriptor: dataset_lib.DatasetDescriptor, *, num_frames: int = 4,
                scale: int = 2) -> np.ndarray:
  """A picture of tracking over a video: input | ground truth | prediction, labelled.

  `num_frames` frames spread evenly over the video, one per row; the ground truth
  and the prediction are overlays with contours and `<class> <track id>` labels,
  thing tracks in their `track_colour` (so an object that keeps its id keeps its
  colour down the rows). Frames are enlarged `scale` times (nearest neighbour)
  first, so the labels stay readable on small frames.

  Args:
    frames: uint8 [F, H, W, 3] the video.
    ground_truth: int [F, H, W] panoptic labels.
    prediction: int [F, H, W] predicted panoptic maps with video-level track ids.
    descriptor: The data set descriptor (names, colours, divisor).
    num_frames: Rows (at most F).
    scale: Enlargement factor.

  Returns:
    uint8 [rows * scale * H, 3 * scale * W, 3].

  Raises:
    ValueError: If the inputs do not share [F, H, W].
  """
  frames, ground_truth, prediction = (np.asarray(frames), np.asarray(ground_truth),
                                      np.asarray(prediction))
  if (frames.ndim != 4 or frames.shape[:3] != ground_truth.shape or
      ground_truth.shape != prediction.shape):
    raise ValueError(f'frames {frames.shape}, ground_truth {ground_truth.shape} and prediction '
                     f'{prediction.shape} must be [F, H, W, 3], [F, H, W] and [F, H, W].')
  chosen = np.unique(np.linspace(0, len(frames) - 1, min(num_frames, len(frames))).round()
                     .astype(int))

  def enlarge(x):
    return np.repeat(np.repeat(x, scale, axis=0), scale, axis=1)

  rows = []
  for f in chosen:
    image = enlarge(frames[f].astype(np.uint8))
    rows.append(np.concatenate([
        image,
        overlay_panoptic(image, enlarge(ground_truth[f]), descriptor),
        overlay_panoptic(image, enlarge(prediction[f]), descriptor)], axis=1))
  return np.concatenate(rows, axis=0)


def clip_summary_image(frames: np.ndarray, ground_truth: np.ndarray, prediction: np.ndarray,
                       descriptor: dataset_lib.DatasetDescriptor) -> np.ndarray:
  """One image of a clip: per frame (rows) the input, ground truth and prediction.

  Used for the trainer's image summaries. Thing tubes take `track_colour` of their
  id, so a tube has one colour in every frame of the clip.

  Args:
    frames: [T, H, W, 3] pixel values in [0, 255] (any real or integer dtype).
    ground_truth: int [T, H, W] panoptic labels.
    prediction: int [T, H, W] predicted panoptic maps.
    descriptor: The data set descriptor (colours, divisor, thing classes).

  Returns:
    uint8 [T * H, 3 * W, 3]: row t is frame t | ground truth t | prediction t.

  Raises:
    ValueError: If the three inputs do not share [T, H, W].
  """
  frames = np.asarray(frames)
  ground_truth = np.asarray(ground_truth)
  prediction = np.asarray(prediction)
  if (frames.ndim != 4 or frames.shape[:3] != ground_truth.shape or
      ground_truth.shape != prediction.shape):
    raise ValueError(f'frames {frames.shape}, ground_truth {ground_truth.shape} and prediction '
                     f'{prediction.shape} must be [T, H, W, 3], [T, H, W] and [T, H, W].')
  rows = [np.concatenate([np.clip(np.round(frame), 0, 255).astype(np.uint8),
                          colourise_panoptic(truth, descriptor),
                          colourise_panoptic(predicted, descriptor)], axis=1)
          for frame, truth, predicted in zip(frames, ground_truth, prediction)]
  return np.concatenate(rows, axis=0)
