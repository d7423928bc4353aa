"""Tests of deeplab2_vkmax.visualization (numpy / PIL only)."""

import subprocess
import sys

import numpy as np
import pytest

from deeplab2_vkmax import visualization
from deeplab2_vkmax.data import dataset as dataset_lib

_SYNTHETIC = dataset_lib.get_dataset_descriptor('synthetic')  # divisor 1000, car = 4


def test_track_colour_is_deterministic_and_valid():
  colours = [visualization.track_colour(i) for i in range(1, 500)]
  assert colours == [visualization.track_colour(i) for i in range(1, 500)]
  assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in colours)


def test_track_colour_is_stable_across_processes():
  # Python's hash() is salted per process; the colours must not depend on it.
  code = ('from deeplab2_vkmax import visualization as v; '
          'print([v.track_colour(i) for i in (1, 2, 3, 999)])')
  runs = {subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         check=True, env={'PYTHONHASHSEED': seed}).stdout
          for seed in ('1', '2')}
  assert runs == {str([visualization.track_colour(i) for i in (1, 2, 3, 999)]) + '\n'}


def test_neighbouring_track_ids_get_distinct_colours():
  colours = np.array([visualization.track_colour(i) for i in range(1, 1001)], np.float64)
  neighbour_distance = np.linalg.norm(colours[1:] - colours[:-1], axis=1)
  assert neighbour_distance.min() > 60.0
  assert len({tuple(c) for c in colours[:100]}) == 100


def test_dataset_colormap_follows_descriptor():
  colormap = visualization.dataset_colormap(_SYNTHETIC)
  assert colormap.dtype == np.uint8 and colormap.shape == (256, 3)
  np.testing.assert_array_equal(colormap[:6], np.array(_SYNTHETIC.colormap))
  np.testing.assert_array_equal(colormap[_SYNTHETIC.ignore_label], [0, 0, 0])
  kitti = dataset_lib.get_dataset_descriptor('kitti_step')
  np.testing.assert_array_equal(visualization.dataset_colormap(kitti)[:kitti.num_classes],
                                np.array(kitti.colormap))


def test_colourise_panoptic_stuff_things_crowd_void():
  panoptic = np.array([[0, 3000, 4007, 4000, 255000]])  # road, sky, car 7, crowd car, void
  colours = visualization.colourise_panoptic(panoptic, _SYNTHETIC)
  assert colours.shape == (1, 5, 3) and colours.dtype == np.uint8
  assert tuple(colours[0, 0]) == _SYNTHETIC.colormap[0]
  assert tuple(colours[0, 1]) == _SYNTHETIC.colormap[3]
  assert tuple(colours[0, 2]) == visualization.track_colour(7)
  assert tuple(colours[0, 3]) == _SYNTHETIC.colormap[4]
  assert tuple(colours[0, 4]) == (0, 0, 0)


def test_segment_boundaries():
  panoptic = np.zeros((4, 6), np.int32)
  panoptic[:, 3:] = 4001
  boundary = visualization.segment_boundaries(panoptic)
  expected = np.zeros((4, 6), bool)
  expected[:, 2:4] = True
  np.testing.assert_array_equal(boundary, expected)
  assert not visualization.segment_boundaries(np.zeros((3, 3))).any()


def test_segment_label():
  assert visualization.segment_label(4003, _SYNTHETIC) == 'car 3'
  assert visualization.segment_label(5000, _SYNTHETIC) == 'person'
  assert visualization.segment_label(1000, _SYNTHETIC) == 'vegetation'


def _scene():
  image = np.full((48, 96, 3), 90, np.uint8)
  panoptic = np.zeros((48, 96), np.int64)  # road
  panoptic[10:40, 20:60] = 4012  # car, track 12
  panoptic[:, 80:] = 255000  # void
  return image, panoptic


def test_overlay_blends_and_keeps_void():
  image, panoptic = _scene()
  overlay = visualization.overlay_panoptic(image, panoptic, _SYNTHETIC, alpha=0.5,
                                           draw_contours=False, draw_labels=False)
  assert overlay.shape == image.shape and overlay.dtype == np.uint8
  np.testing.assert_array_equal(overlay[:, 82:], image[:, 82:])
  expected_car = np.round(0.5 * 90 + 0.5 * np.array(visualization.track_colour(12)))
  np.testing.assert_array_equal(overlay[25, 40], expected_car)
  plain = visualization.overlay_panoptic(image, panoptic, _SYNTHETIC, alpha=0.0,
                                         draw_contours=False, draw_labels=False)
  np.testing.assert_array_equal(plain, image)


def test_overlay_draws_contours_and_labels():
  image, panoptic = _scene()
  bare = visualization.overlay_panoptic(image, panoptic, _SYNTHETIC, draw_contours=False,
                                        draw_labels=False)
  contours = visualization.overlay_panoptic(image, panoptic, _SYNTHETIC, draw_labels=False)
  np.testing.assert_array_equal(contours[10, 30], [255, 255, 255])  # Top edge of the car.
  labelled = visualization.overlay_panoptic(image, panoptic, _SYNTHETIC, draw_contours=False)
  changed = np.any(labelled != bare, axis=-1)
  # Light text on a black box, around the car's centre (25, 40).
  ys, xs = np.nonzero(changed)
  assert ys.min() <= 25 <= ys.max() and xs.min() <= 40 <= xs.max()
  assert (labelled[changed] > 200).all(axis=-1).any()
  assert (labelled[changed] == 0).all(axis=-1).any()


def test_overlay_rejects_size_mismatch():
  with pytest.raises(ValueError, match='same size'):
    visualization.overlay_panoptic(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5)), _SYNTHETIC)


def test_video_strip_shows_input_truth_and_prediction_per_chosen_frame():
  rng = np.random.default_rng(0)
  frames = rng.integers(0, 255, (7, 8, 12, 3), dtype=np.uint8)
  truth = np.zeros((7, 8, 12), np.int64)
  for f in range(7):  # A car (thing 4, track 2) moving right over road (class 0).
    truth[f, 2:6, f:f + 4] = 4 * 1000 + 2
  prediction = np.where(truth > 0, 4 * 1000 + 5, 0)  # The same car, another track id.
  strip = visualization.video_strip(frames, truth, prediction, _SYNTHETIC, num_frames=3,
                                    scale=2)
  assert strip.shape == (3 * 16, 3 * 24, 3) and strip.dtype == np.uint8

  def enlarge(x):
    return np.repeat(np.repeat(x, 2, axis=0), 2, axis=1)

  for row, f in enumerate((0, 3, 6)):  # Evenly spread: first, middle, last.
    block = strip[row * 16:(row + 1) * 16]
    image = enlarge(frames[f])
    np.testing.assert_array_equal(block[:, :24], image)
    np.testing.assert_array_equal(
        block[:, 24:48], visualization.overlay_panoptic(image, enlarge(truth[f]), _SYNTHETIC))
    np.testing.assert_array_equal(
        block[:, 48:], visualization.overlay_panoptic(image, enlarge(prediction[f]),
                                                      _SYNTHETIC))
  assert not np.array_equal(strip[:, 24:48], strip[:, 48:])  # Track 2 vs track 5.
  with pytest.raises(ValueError, match='must be'):
    visualization.video_strip(frames, truth[:, :4], prediction, _SYNTHETIC)
