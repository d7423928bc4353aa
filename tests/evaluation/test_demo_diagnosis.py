"""The demo diagnosis' AQ decomposition and oracle association (bench/demo_diagnosis.py)."""

import importlib.util
import json
import pathlib

import numpy as np
import pytest

from deeplab2_vkmax.data import dataset as dataset_lib
from deeplab2_vkmax.protos import config_pb2

_PATH = pathlib.Path(__file__).resolve().parents[2] / 'bench' / 'demo_diagnosis.py'
DESCRIPTOR = dataset_lib.get_dataset_descriptor('synthetic')
CAR, PERSON, ROAD = 4, 5, 0
DIVISOR = DESCRIPTOR.panoptic_label_divisor


@pytest.fixture(name='diagnosis', scope='module')
def diagnosis_fixture():
  spec = importlib.util.spec_from_file_location('demo_diagnosis', _PATH)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _two_tracks(frames=4):
  """int32 [F, 8, 16]: road, a car (track 1) left and a person (track 2) right."""
  gt = np.full((frames, 8, 16), ROAD * DIVISOR, np.int32)
  gt[:, 2:6, 1:6] = CAR * DIVISOR + 1
  gt[:, 2:7, 10:13] = PERSON * DIVISOR + 2
  return gt


def test_shortfall_parts_sum_to_one_minus_aq(diagnosis):
  rng = np.random.default_rng(0)
  gt = _two_tracks()
  ids = np.array([ROAD * DIVISOR, CAR * DIVISOR + 3, CAR * DIVISOR + 4, PERSON * DIVISOR + 7])
  pred = ids[rng.integers(0, len(ids), gt.shape)]
  for row in diagnosis.track_shortfall(gt, pred, DESCRIPTOR):
    parts = row['missed'] + row['switches'] + row['incomplete'] + row['leakage']
    assert parts == pytest.approx(1.0 - row['aq'], abs=1e-12)
    assert 0.0 <= row['aq'] < 1.0


def test_a_track_split_over_two_ids_keeps_half_its_aq(diagnosis):
  gt = _two_tracks()
  pred = gt.copy()
  car = gt == CAR * DIVISOR + 1
  pred[2:][car[2:]] = CAR * DIVISOR + 9  # The car's last two frames under another id.
  rows = {r['track']: r for r in diagnosis.track_shortfall(gt, pred, DESCRIPTOR)}
  car_row, person_row = rows[CAR * DIVISOR + 1], rows[PERSON * DIVISOR + 2]
  assert person_row['aq'] == 1.0 and person_row['num_ids'] == 1
  assert car_row['aq'] == pytest.approx(0.5)  # 2 x (weight 0.5 x IoU 0.5).
  assert car_row['num_ids'] == 2 and car_row['missed'] == 0.0
  assert car_row['switches'] == pytest.approx(0.25)


def test_oracle_association_undoes_id_switches_but_not_merges(diagnosis):
  gt = _two_tracks()
  pred = gt.copy()
  for f in range(len(gt)):  # A new id in every frame for both tracks.
    pred[f][gt[f] == CAR * DIVISOR + 1] = CAR * DIVISOR + 10 + f
    pred[f][gt[f] == PERSON * DIVISOR + 2] = PERSON * DIVISOR + 20 + f
  pred[0, 0, 0] = PERSON * DIVISOR + 50  # A false positive over road.
  oracle = diagnosis.oracle_association(gt, pred, DESCRIPTOR)
  rows = diagnosis.track_shortfall(gt, oracle, DESCRIPTOR)
  assert [r['aq'] for r in rows] == [1.0, 1.0]
  assert oracle[0, 0, 0] % DIVISOR not in (1, 2)  # Unmatched: not given to a track.
  before = diagnosis.track_shortfall(gt, pred, DESCRIPTOR)
  assert all(r['aq'] == pytest.approx(0.25) for r in before)  # 4 ids of weight 1/4.

  merged = gt.copy()
  merged[gt == PERSON * DIVISOR + 2] = CAR * DIVISOR + 1  # One segment over both.
  oracle_rows = diagnosis.track_shortfall(
      gt, diagnosis.oracle_association(gt, merged, DESCRIPTOR), DESCRIPTOR)
  assert max(r['leakage'] for r in oracle_rows) > 0.0


def test_aq_by_role_reads_the_generator_roles_and_averages_per_class_and_role(
    diagnosis, tmp_path):
  metadata = {'sequences': {'val': {'0128': {'tracks': [
      {'class_id': CAR, 'instance_id': 1, 'role': 'crossing'},
      {'class_id': CAR, 'instance_id': 2, 'role': 'crossing'},
      {'class_id': PERSON, 'instance_id': 3, 'role': 'random'}]}}}}
  (tmp_path / 'metadata.json').write_text(json.dumps(metadata))
  config = config_pb2.ExperimentOptions()
  config.eval_dataset_options.dataset = 'synthetic'
  config.eval_dataset_options.synthetic.root_dir = str(tmp_path)
  roles = diagnosis.track_roles(config)
  assert roles == {'0128': {CAR * DIVISOR + 1: 'crossing', CAR * DIVISOR + 2: 'crossing',
                            PERSON * DIVISOR + 3: 'random'}}
  config.eval_dataset_options.dataset = 'kitti_step'
  assert diagnosis.track_roles(config) == {}

  rows = [{'track': CAR * DIVISOR + 1, 'role': 'crossing', 'aq': 0.2, 'oracle_aq': 0.6,
           'switches': 0.4},
          {'track': CAR * DIVISOR + 2, 'role': 'crossing', 'aq': 0.4, 'oracle_aq': 0.8,
           'switches': 0.2},
          {'track': PERSON * DIVISOR + 3, 'role': 'random', 'aq': 0.5, 'oracle_aq': 0.5,
           'switches': 0.0}]
  table = diagnosis.aq_by_role(rows, DESCRIPTOR)
  assert [(r['class'], r['role'], r['tracks']) for r in table] == [
      ('car', 'crossing', 2), ('person', 'random', 1)]
  assert table[0]['aq'] == pytest.approx(0.3)
  assert table[0]['oracle_aq'] == pytest.approx(0.7)
  assert table[0]['switches'] == pytest.approx(0.3)


def test_clip_checks_find_a_tube_that_jumps_between_tracks_inside_a_clip(diagnosis):
  spec = importlib.util.spec_from_file_location(
      'demo_clip_checks', _PATH.parent / 'demo_clip_checks.py')
  checks = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(checks)
  gt = _two_tracks(frames=2)
  car, person = gt == CAR * DIVISOR + 1, gt == PERSON * DIVISOR + 2
  pred = np.full_like(gt, ROAD * DIVISOR)
  pred[car] = CAR * DIVISOR + 7  # A tube on the car in both frames.
  assert checks.tube_switch_pixels(gt, pred, DESCRIPTOR) == (0, int(car.sum()))
  relabelled, _ = diagnosis.relabel_to_majority_tracks(gt, pred, DESCRIPTOR, DIVISOR - 1)
  assert np.all(relabelled[car] == CAR * DIVISOR + 1)

  jumping = pred.copy()  # One tube: the car in frame 0, the person in frame 1.
  jumping[1][car[1]] = ROAD * DIVISOR
  jumping[1][person[1]] = CAR * DIVISOR + 7
  switched, total = checks.tube_switch_pixels(gt, jumping, DESCRIPTOR)
  assert switched == total == int(car[0].sum() + person[1].sum())
  # The clip oracle gives the whole tube to the track under most of it (the car,
  # 20 px against the person's 15), so the person in frame 1 keeps the car's id.
  relabelled, _ = diagnosis.relabel_to_majority_tracks(gt, jumping, DESCRIPTOR, DIVISOR - 1)
  assert np.all(relabelled[0][car[0]] == CAR * DIVISOR + 1)
  assert np.all(relabelled[1][person[1]] == CAR * DIVISOR + 1)
