"""Official prediction formats: written predictions read back score the same."""

import numpy as np
import pytest

from deeplab2_vkmax.evaluation import mean_iou
from deeplab2_vkmax.evaluation import prediction_io
from deeplab2_vkmax.evaluation import stq
from deeplab2_vkmax.evaluation import video_panoptic_quality

ARGS = dict(num_classes=3, thing_class_ids=[1], ignore_label=255, label_divisor=1000)
VOID = 255000


def _video(rng, num_frames=4):
  table = np.array([0, 2000, 1001, 1002, 1003, 1000, VOID])
  gt = table[np.kron(rng.integers(0, 7, (num_frames, 3, 4)), np.ones((1, 4, 4), int))]
  pred = np.where(rng.random(gt.shape) < 0.2, table[rng.integers(0, 7, gt.shape)], gt)
  return gt, pred


def _scores(videos):
  vpq = video_panoptic_quality.VideoPanopticQuality(**ARGS, window_sizes=[1, 2])
  quality = stq.STQuality(3, [1], 255, 1000, 2 ** 32)
  for name, gt, pred in videos:
    vpq.update_state(gt, pred, name)
    quality.update_state(gt, pred, name)
  return vpq.result()['VPQ'], quality.result()['STQ']


@pytest.mark.parametrize('format_name', ['kitti_step', 'vipseg'])
def test_panoptic_formats_round_trip_with_equal_metrics(tmp_path, format_name):
  rng = np.random.default_rng(0)
  videos = [(name,) + _video(rng) for name in ('0002', '0007')]
  writer = prediction_io.make_writer(format_name, str(tmp_path), label_divisor=1000,
                                     ignore_label=255)
  for name, _, pred in videos:
    for frame_id, frame in enumerate(pred):
      writer.write(name, frame_id, frame)
  if format_name == 'vipseg':
    prediction_io.write_vipseg_json(str(tmp_path), [writer.finish()])
    read = {}
    for video, image_id, panoptic in prediction_io.read_vipseg(
        str(tmp_path), label_divisor=1000, ignore_label=255, thing_class_ids=[1]):
      read.setdefault(video, []).append(panoptic)
    assert sorted(read) == ['0002', '0007'] and (tmp_path / 'pan_pred' / '0002').is_dir()
  else:
    read = {name: [prediction_io.read_kitti_step(
        str(tmp_path / name / f'{i:06d}.png'), 1000) for i in range(len(pred))]
            for name, _, pred in videos}
    np.testing.assert_array_equal(np.stack(read['0002']), videos[0][2])
  written = _scores(videos)
  reread = _scores([(name, gt, np.stack(read[name])) for name, gt, _ in videos])
  assert reread == pytest.approx(written, abs=1e-12)
  assert written[0] < 1.0


def test_vspw_class_pngs_round_trip(tmp_path):
  rng = np.random.default_rng(1)
  gt, pred = _video(rng)
  writer = prediction_io.make_writer('vspw', str(tmp_path), label_divisor=1000,
                                     ignore_label=255)
  for frame_id, frame in enumerate(pred):
    writer.write('v', frame_id, frame)
  read = np.stack([prediction_io.read_vspw(str(tmp_path / 'v' / f'{i:08d}.png'))
                   for i in range(len(pred))])
  np.testing.assert_array_equal(read, pred // 1000)
  direct, reread = mean_iou.MeanIoU(3, label_divisor=1000), mean_iou.MeanIoU(3)
  direct.update_state(gt, pred)
  reread.update_state(gt // 1000, read)
  assert reread.result()['mIoU'] == pytest.approx(direct.result()['mIoU'])


def test_unknown_format_lists_the_valid_ones(tmp_path):
  with pytest.raises(ValueError, match='kitti_step'):
    prediction_io.make_writer('coco', str(tmp_path), label_divisor=1000, ignore_label=255)
