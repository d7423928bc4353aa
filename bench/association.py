"""Association ablations on synthetic tracking scenarios (paper Tables 5-9).

The scenarios live in `deeplab2_vkmax.evaluation.association_scenarios` (tested
in tests/association/test_association_bench.py); this script prints the tables.
Ground truth and predictions are generated in numpy (no TensorFlow). Every
scenario is a street-like video (sky, road, optional static occluders such as
poles or parked trucks, all stuff) with moving thing tracks (cars, people) drawn
in depth order (lanes overlap in the image, so nearer tracks hide farther ones).
Five families; the first four are lane scenes, each a stress test of one
mechanism, the fifth is KITTI-STEP's geometry:

- `traffic`: per lane, a stream of look-alike tracks entering through one image
  edge and leaving through the other (ego-motion past parked cars): many tracks
  end and many new ones start.
- `crossing`: pairs of same-class (look-alike) tracks in one lane moving towards
  each other; the far one is partly hidden by the near one while they pass (its
  top rows stay visible, so it is rarely fully hidden: see `--tables stats`).
- `occlusion`: static occluders 12-90 px wide that tracks pass behind: hidden for
  0 to ~20 frames depending on width and speed.
- `reentry`: tracks leave through an image edge, turn around out of view and come
  back 3-15 frames later.
- `ego`: a camera driving forward down a street (KITTI-STEP's set-up, with its
  camera calibration and frame rate): parked cars and pedestrians grow out of the
  vanishing point and leave through the side edges or the bottom, with oncoming
  cars and a lead car; nearer objects hide farther ones (see `_ego_motion_tracks`).
  The lane families were designed first; `ego` was added (with its parameters
  fixed before any association result on it) because KITTI-STEP's objects do not
  enter and leave through the same edges, which decides how often a departed
  object is a plausible match for a new one.

Predictions imitate clip-kMaX output in the associater's input contract: clips of
T frames (T = 1 online; T = 2 near-online, consecutive clips share one frame),
predicted independently per clip, clip-local ids randomly relabelled per clip and
constant across the clip's frames. Noise: every box edge jitters by up to
`--jitter_px` pixels per frame and clip; a tube is missed in a whole clip with
probability `--miss_rate`; segments with fewer than `--min_visible_px` visible
pixels are not detected. A missed object's visible pixels are predicted as road
(background), not as the object it hides. Appearance: each class has a
prototype; a track's identity is `normalise(prototype + spread * u)`
(same-class tracks look alike: cosine ~0.9 between them); each clip observes
`identity + noise` with the noise growing as the track gets occluded.

AQ is the official one (deeplab2_vkmax.evaluation.stq.STQuality), pooled over all
sequences of a seed, then mean +- std over seeds.

Tables (`--tables`, comma-separated; default all): `stats` (what the scenarios
contain), `table5` (association features, near-online and online), `occlusion`
(the gain from location per track, by how long the track was hidden), `table6`
(match space), `table7` (tau x alpha grid), `table8` (temperature T), `table9`
(lam).

Run: `python bench/association.py` (about 6 minutes on the shared 2-core
machine; `--seeds 1 --videos_per_family 1` for a quick look, `--tables table7`
for one table, `--families ego` for one family).
"""

import argparse
import dataclasses
import time

import numpy as np

from deeplab2_vkmax.evaluation.association_scenarios import FAMILIES
from deeplab2_vkmax.evaluation.association_scenarios import identity
from deeplab2_vkmax.evaluation.association_scenarios import longest_gaps
from deeplab2_vkmax.evaluation.association_scenarios import make_data
from deeplab2_vkmax.evaluation.association_scenarios import Options
from deeplab2_vkmax.evaluation.association_scenarios import run_variant
from deeplab2_vkmax.evaluation.association_scenarios import SYNTHETIC_LABELS
from deeplab2_vkmax.evaluation.association_scenarios import track_visibility
from deeplab2_vkmax.evaluation.association_scenarios import true_runs

# Paper Table 5 rows: name -> (clip_length, use_stitching, memory_type).
# memory_type: 'naive' = appearance, 'location' = location, 'hila' = both.
TABLE5_NEAR_ONLINE = {
    'stitching only': (2, True, 'none'),
    'appearance only (naive-MB)': (2, False, 'naive'),
    'location only': (2, False, 'location'),
    'appearance + location (HiLA-MB w/o stitching)': (2, False, 'hila'),
    'stitching + appearance': (2, True, 'naive'),
    'stitching + location': (2, True, 'location'),
    'stitching + appearance + location (full HiLA-MB)': (2, True, 'hila'),
}


TABLE5_ONLINE = {
    'none': (1, False, 'none'),
    'appearance (naive-MB)': (1, False, 'naive'),
    'location': (1, False, 'location'),
    'appearance + location (HiLA-MB)': (1, False, 'hila'),
}


FULL_HILA = (2, True, 'hila')


TAUS = (1, 3, 10, 20)


ALPHAS = (0.6, 0.7, 0.8)


TEMPERATURES = (0.5, 1.0, 1.5)


LAMS = (0.0, 0.5, 0.7, 0.8, 0.9, 1.0)


TABLES = ('stats', 'table5', 'occlusion', 'table6', 'table7', 'table8', 'table9')


def _mean_std(values) -> str:
  values = np.asarray(values, dtype=np.float64) * 100
  return f'{values.mean():.1f} +- {values.std():.1f}'


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--seeds', type=int, default=3)
  parser.add_argument('--videos_per_family', type=int, default=2)
  parser.add_argument('--families', default=','.join(FAMILIES),
                      help=f'comma-separated subset of {",".join(FAMILIES)}')
  parser.add_argument('--tables', default=','.join(TABLES),
                      help=f'comma-separated subset of {",".join(TABLES)} '
                           '(stats: scenario statistics; tableN: paper Table N)')
  for field in dataclasses.fields(Options):
    parser.add_argument(f'--{field.name}', type=field.type, default=field.default)
  args = parser.parse_args()
  tables = args.tables.split(',')
  unknown = sorted(set(tables) - set(TABLES))
  if unknown:
    parser.error(f'--tables: unknown {unknown}; valid: {",".join(TABLES)}.')
  families = args.families.split(',')
  unknown = sorted(set(families) - set(FAMILIES))
  if unknown:
    parser.error(f'--families: unknown {unknown}; valid: {",".join(FAMILIES)}.')
  options = Options(**{f.name: getattr(args, f.name)
                       for f in dataclasses.fields(Options)})
  tic = time.time()
  seeds = list(range(args.seeds))
  datasets = [make_data(seed, options, args.videos_per_family, families)
              for seed in seeds]

  print(f'\nScenarios: {len(families)} families ({",".join(families)}) x '
        f'{args.videos_per_family} videos x {options.num_frames} frames '
        f'({options.height}x{options.width}), seeds {seeds}; {options}\n')
  if 'stats' in tables:
    _scenario_statistics(datasets, options)
  if 'table5' in tables:
    print_table5(datasets)
  if 'table6' in tables:
    _table6(datasets)
  if 'occlusion' in tables:
    print_occlusion_table(datasets, options.min_visible_px)
  if 'table7' in tables:
    print_table7(datasets, seeds, families)
  if 'table8' in tables:
    _sweep(datasets, 'temperature', TEMPERATURES, 'Table 8: temperature T')
  if 'table9' in tables:
    _sweep(datasets, 'lam', LAMS, 'Table 9: moving-average weight lam')
  print(f'\n({time.time() - tic:.0f} s)')


def _scenario_statistics(datasets, options):
  """What the scenarios contain, per family, over all seeds and videos."""
  families = list(datasets[0])
  print('### Scenario statistics (all seeds and videos)\n')
  print('| family | tracks / video | visible things / frame (mean, max) | '
        'gaps / track | gap frames (mean, max) | gaps >= 5 frames | '
        'track lifetime, frames (mean) |')
  print('| --- | --- | --- | --- | --- | --- | --- |')
  for family in families:
    tracks, per_frame, gaps, lifetimes = [], [], [], []
    for data in datasets:
      for video in data[family]:
        detectable = (track_visibility(video.ground_truth)[1]
                      >= options.min_visible_px)
        tracks.append(int(detectable.any(axis=0).sum()))
        per_frame.extend(detectable.sum(axis=1).tolist())
        for k in range(detectable.shape[1]):
          seen = np.nonzero(detectable[:, k])[0]
          if not len(seen):
            continue
          lifetimes.append(seen[-1] - seen[0] + 1)
          # Gaps: runs of undetectable frames between detectable ones
          # (occluded, or out of view and back).
          gaps.extend(true_runs(~detectable[seen[0]:seen[-1] + 1, k]))
    gaps = np.asarray(gaps)
    print(f'| {family} | {np.mean(tracks):.1f} | {np.mean(per_frame):.1f}, '
          f'{np.max(per_frame)} | {len(gaps) / max(sum(tracks), 1):.2f} | '
          f'{gaps.mean() if len(gaps) else 0:.1f}, {gaps.max() if len(gaps) else 0} | '
          f'{int((gaps >= 5).sum())} of {len(gaps)} | {np.mean(lifetimes):.0f} |')
  # Appearance: the generator's distributions, sampled.
  rng = np.random.default_rng(0)
  p = rng.normal(size=options.embedding_dim)
  p /= np.linalg.norm(p)
  identities = np.stack([identity(p, options.identity_spread, rng)
                         for _ in range(200)])

  def observe(identity, visible_fraction):
    sigma = options.appearance_noise * (2.0 - visible_fraction)
    return identity + sigma * rng.normal(size=identity.shape) / np.sqrt(identity.size)

  def cos(a, b):
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))

  between = [cos(identities[i], identities[i + 1]) for i in range(0, 200, 2)]
  observed_between = [cos(observe(identities[i], 1.0), observe(identities[i + 1], 1.0))
                      for i in range(0, 200, 2)]
  print(f'\nAppearance: cos between two same-class tracks (identities) '
        f'{np.mean(between):.3f}; cos between two observations of one track: '
        + ', '.join(
            f'{np.mean([cos(observe(x, v), observe(x, v)) for x in identities]):.3f}'
            f' (both {v:.0%} visible)' for v in (1.0, 0.5, 0.0))
        + '; cos between observations of two same-class tracks (fully visible) '
        f'{np.mean(observed_between):.3f}.'
        f' Missed tubes: {options.miss_rate:.0%} per tube per clip, plus segments '
        f'under {options.min_visible_px} visible px.\n')


def print_table5(datasets, labels=SYNTHETIC_LABELS):
  """Paper Table 5: AQ per association feature set (tau = 10, alpha = 0.7)."""
  families = list(datasets[0])
  rows = {}
  for mode, variants in (('near-online', TABLE5_NEAR_ONLINE),
                         ('online', TABLE5_ONLINE)):
    print(f'### Table 5 ({"a" if mode == "near-online" else "b"}), {mode}: AQ '
          f'(tau = 10, alpha = 0.7; mean +- std over seeds, %)\n')
    print('| features | AQ all | ' + ' | '.join(families) + ' |')
    print('| --- | --- |' + ' --- |' * len(families))
    for name, (clip_length, stitching, memory) in variants.items():
      results = [run_variant(d, clip_length, stitching, memory, labels=labels)
                 for d in datasets]
      rows[(mode, memory, stitching)] = results
      cells = [_mean_std([r[0] for r in results])]
      cells += [_mean_std([r[1][f] for r in results]) for f in families]
      print(f'| {name} | ' + ' | '.join(cells) + ' |')
    print()

  print('### Gain from adding location to appearance (HiLA-MB minus naive-MB; '
        'AQ points, mean +- std over seeds)\n')
  print('| mode | all | ' + ' | '.join(families) + ' |')
  print('| --- | --- |' + ' --- |' * len(families))
  for label, mode, stitching in (('online', 'online', False),
                                 ('near-online, no stitching', 'near-online', False),
                                 ('near-online, with stitching', 'near-online', True)):
    hila = rows[(mode, 'hila', stitching)]
    naive = rows[(mode, 'naive', stitching)]
    cells = [_mean_std([h[0] - n[0] for h, n in zip(hila, naive)])]
    cells += [_mean_std([h[1][f] - n[1][f] for h, n in zip(hila, naive)])
              for f in families]
    print(f'| {label} | ' + ' | '.join(cells) + ' |')


GAP_BUCKETS = (('never detectable', -1, -1), ('not hidden', 0, 0),
               ('hidden 1-4 frames', 1, 4), ('hidden >= 5 frames', 5, 1 << 30))


def print_occlusion_table(datasets, min_visible_px, labels=SYNTHETIC_LABELS):
  """Location gain per track, by how long the track was hidden (paper Sec. 3.2).

  The paper argues location matters most when appearance is unreliable, after a
  long occlusion. Per-track AQ terms (the official AQ is their mean) are
  bucketed by the track's longest undetectable run between detections; mean
  per-track AQ per bucket over the tracks of all seeds, and the gain per seed,
  pooled over all families and for `ego` (KITTI-STEP's geometry) alone.
  """
  gaps = [{family: [longest_gaps(video.ground_truth, min_visible_px, labels)
                     for video in videos]
           for family, videos in data.items()} for data in datasets]
  scopes = [('all', list(datasets[0]))]
  if 'ego' in datasets[0] and len(datasets[0]) > 1:
    scopes.append(('ego', ['ego']))
  print('\n### Location gain by occlusion length (tau = 10, alpha = 0.7; mean '
        'per-track AQ % over the tracks of all seeds; gain per seed where the '
        'seed has such tracks)\n')
  print('| families | mode | track hidden | tracks | appearance only | '
        'appearance + location | gain from location | gain per seed |')
  print('| --- | --- | --- | --- | --- | --- | --- | --- |')
  modes = (('online', 1, False), ('near-online, no stitching', 2, False),
           ('near-online, with stitching', 2, True))
  per_track = {(label, memory): [run_variant(d, clip_length, stitching, memory,
                                             labels=labels)[3] for d in datasets]
               for label, clip_length, stitching in modes
               for memory in ('naive', 'hila')}
  for scope, families in scopes:
    for label, _, _ in modes:
      for bucket, low, high in GAP_BUCKETS:
        values = {'naive': [], 'hila': []}  # memory -> per seed [tracks]
        for seed, seed_gaps in enumerate(gaps):
          for memory, per_seed in values.items():
            per_seed.append(np.array(
                [aq for family in families
                 for v, video_gaps in enumerate(seed_gaps[family])
                 for key, aq in per_track[(label, memory)][seed][family][v].items()
                 if low <= video_gaps[key] <= high]) * 100)
        naive, hila = (np.concatenate(values[m]) for m in ('naive', 'hila'))
        if not len(naive):
          continue
        per_seed = ', '.join(f'{h.mean() - n.mean():.1f}' if len(n) else '-'
                             for n, h in zip(values['naive'], values['hila']))
        print(f'| {scope} | {label} | {bucket} | {len(naive)} | {naive.mean():.1f} | '
              f'{hila.mean():.1f} | {hila.mean() - naive.mean():.1f} | {per_seed} |')


def print_table7(datasets, seeds, families, labels=SYNTHETIC_LABELS):
  """Paper Table 7: tau x alpha grid, near-online."""
  grid_variants = {'naive-MB': (2, False, 'naive'), 'HiLA-MB': FULL_HILA}
  print('\n### Table 7: tau x alpha grid, near-online (AQ %, mean over seeds)\n')
  print('| memory | ' + ' | '.join(f'{tau} / {alpha}' for alpha in ALPHAS
                                    for tau in TAUS)
        + ' | grid mean | grid std | std without tau = 1 |')
  print('| --- |' + ' --- |' * (len(TAUS) * len(ALPHAS) + 3))
  grids, family_grids = {}, {}
  for name, (clip_length, stitching, memory) in grid_variants.items():
    results = [[[run_variant(d, clip_length, stitching, memory, tau=tau, alpha=alpha,
                             labels=labels)
                 for d in datasets] for tau in TAUS] for alpha in ALPHAS]
    grid = np.array([[[r[0] for r in row] for row in per_alpha]
                     for per_alpha in results]) * 100  # [A, T, S]
    grids[name] = grid
    family_grids[name] = {
        f: np.array([[[r[1][f] for r in row] for row in per_alpha]
                     for per_alpha in results]) * 100 for f in families}
    cells = [f'{grid[a, t].mean():.1f}' for a in range(len(ALPHAS))
             for t in range(len(TAUS))]
    # Std over the 12 cells per seed, then averaged over seeds (the paper's
    # table-wise std is over the cells of one run).
    per_seed_std = grid.reshape(-1, len(seeds)).std(axis=0)
    without_1 = grid[:, 1:].reshape(-1, len(seeds)).std(axis=0)
    cells += [f'{grid.mean():.1f}',
              f'{per_seed_std.mean():.2f} (per seed: '
              + ', '.join(f'{x:.2f}' for x in per_seed_std) + ')',
              f'{without_1.mean():.2f}']
    print(f'| {name} | ' + ' | '.join(cells) + ' |')
  # The paper's column-wise statistics (fixed tau, alpha varied) and the mean
  # over alphas per tau: where the grid std comes from.
  print('\nPer tau (mean over alphas and seeds / std over alphas, mean over seeds):\n')
  print('| memory | ' + ' | '.join(f'tau = {tau}' for tau in TAUS) + ' |')
  print('| --- |' + ' --- |' * len(TAUS))
  for name, grid in grids.items():
    print(f'| {name} | ' + ' | '.join(
        f'{grid[:, t].mean():.1f} / {grid[:, t].std(axis=0).mean():.2f}'
        for t in range(len(TAUS))) + ' |')
  print('\nPer family (grid mean / grid std over the 12 cells, std per seed '
        'averaged over seeds; then the mean over alphas per tau):\n')
  print('| family | memory | grid mean | grid std | '
        + ' | '.join(f'tau = {tau}' for tau in TAUS) + ' |')
  print('| --- | --- | --- | --- |' + ' --- |' * len(TAUS))
  for family in families:
    for name in grids:
      g = family_grids[name][family]
      print(f'| {family} | {name} | {g.mean():.1f} | '
            f'{g.reshape(-1, len(seeds)).std(axis=0).mean():.2f} | '
            + ' | '.join(f'{g[:, t].mean():.1f}' for t in range(len(TAUS))) + ' |')


def _table6(datasets):
  """Paper Table 6: memory match space M x N, near-online."""
  print('\n### Table 6: memory match space M x N per step, near-online\n')
  print('| memory | tau | mean | max |')
  print('| --- | --- | --- | --- |')
  for name, (clip_length, stitching, memory), taus in (
      ('naive-MB (all pairs)', (2, False, 'naive'), (1000, 1, 10)),
      ('HiLA-MB (hierarchical)', FULL_HILA, (1000, 1, 10))):
    for tau in taus:
      stats = [s for d in datasets
               for s in run_variant(d, clip_length, stitching, memory, tau=tau)[2]]
      steps = np.array([s['num_clips'] for s in stats], dtype=np.float64)
      means = np.array([s['match_space_size_mean'] for s in stats])
      mean = np.sum(means * steps) / steps.sum()
      peak = max(s['match_space_size_max'] for s in stats)
      print(f'| {name} | {tau} | {mean:.1f} | {peak:.0f} |')


def _sweep(datasets, parameter, values, title):
  """Paper Tables 8-9: full HiLA-MB near-online with one parameter varied."""
  families = list(datasets[0])
  print(f'\n### {title}, full HiLA-MB near-online (tau = 10, alpha = 0.7; '
        f'AQ %, mean +- std over seeds)\n')
  print(f'| {parameter} | AQ all | ' + ' | '.join(families) + ' |')
  print('| --- | --- |' + ' --- |' * len(families))
  for value in values:
    results = [run_variant(d, *FULL_HILA, **{parameter: value}) for d in datasets]
    cells = [_mean_std([r[0] for r in results])]
    cells += [_mean_std([r[1][f] for r in results]) for f in families]
    print(f'| {value} | ' + ' | '.join(cells) + ' |')


if __name__ == '__main__':
  main()
