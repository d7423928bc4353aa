"""Sequence evaluator of an exported SavedModel: clips -> association -> metrics.

  python -m deeplab2_vkmax.evaluation.evaluate --saved_model=<dir> \
      --dataset=kitti_step --file_pattern='<records>/val-*.tfrecord' \
      --output_dir=<dir> [--clip_length=2] [--config_file=<textproto>] \
      [--num_workers=N] [--metrics=stq,vpq] [--vpq_windows=video_kmax] \
      [--save_predictions=kitti_step|vipseg|vspw] [--max_num_sequences=N]

Each sequence is read whole and in frame order (`clip_reader.read_sequences`) and
cut into clips of `clip_length` frames: near-online (T >= 2) clips advance by
T - 1 and share one frame, which video stitching matches on; online (T = 1)
clips do not overlap (Video-kMaX, Sec. 3.2). The SavedModel's `serving_default`
signature segments a clip (pre- and post-processing inside the graph); the
stateful associater (`builder.build_associater`: stitching + HiLA-MB or
naive-MB, options from the config) gives video-level ids; `video_scorer.VideoScorer`
feeds every frame, once, with its final ids to the metrics. This is the same
scorer the trainer's eval mode uses.

Sequences are independent: with `--num_workers=N` they are dealt round-robin to
N worker processes (each loads the SavedModel) and the metric states are merged
(`merge_state`). Writes `<output_dir>/metrics.json` (overall, per sequence, the
protocols) and prints a table. TensorFlow is used here only to load and run the
SavedModel; the metrics are numpy.
"""

import concurrent.futures
import itertools
import json
import multiprocessing
import os
import sys
import time
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from deeplab2_vkmax import cli
from deeplab2_vkmax import common
from deeplab2_vkmax import config as config_lib
from deeplab2_vkmax import overlap as overlap_lib
from deeplab2_vkmax.data import clips
from deeplab2_vkmax.data import dataset as dataset_lib
from deeplab2_vkmax.evaluation import mean_iou
from deeplab2_vkmax.evaluation import panoptic_quality
from deeplab2_vkmax.evaluation import prediction_io
from deeplab2_vkmax.evaluation import stq
from deeplab2_vkmax.evaluation import video_consistency
from deeplab2_vkmax.evaluation import video_panoptic_quality
from deeplab2_vkmax.evaluation import video_scorer
from deeplab2_vkmax.protos import config_pb2

METRICS = ('stq', 'vpq', 'pq', 'miou', 'vc8', 'vc16')
_REQUIRED_OUTPUTS = (common.PANOPTIC_PRED, common.SEGMENT_IDS, common.PRED_QUERY_EMBEDDINGS)
# Published protocol of each data set (docs/evaluation.md).
_DEFAULT_METRICS = {'vspw': ('miou', 'vc8', 'vc16')}
_DEFAULT_VPQ_WINDOWS = {'vipseg': 'vipseg', 'cityscapes_vps': 'cityscapes_vps'}


def default_metrics(dataset: str) -> List[str]:
  return list(_DEFAULT_METRICS.get(dataset, ('stq', 'vpq')))


def default_vpq_windows(dataset: str) -> str:
  return _DEFAULT_VPQ_WINDOWS.get(dataset, 'video_kmax')


def parse_vpq_windows(value: str):
  """A preset name ('vipseg') or a comma list ('1,2,4,6')."""
  value = value.strip()
  if value and all(part.strip().isdigit() for part in value.split(',')):
    return [int(part) for part in value.split(',')]
  return value


def build_metrics(names: Sequence[str], descriptor: dataset_lib.DatasetDescriptor,
                  vpq_windows) -> Dict[str, Any]:
  """Fresh streaming metrics, by name, for `descriptor` (inputs: panoptic maps).

  Raises:
    ValueError: an unknown metric name (the message lists the valid ones).
  """
  unknown = [n for n in names if n not in METRICS]
  if unknown or not names:
    raise ValueError(f'unknown metrics {unknown or names}; expected some of {list(METRICS)}.')
  d = descriptor
  things = list(d.thing_class_ids)
  divisor = d.panoptic_label_divisor
  factories = {
      'stq': lambda: stq.STQuality(d.num_classes, things, d.ignore_label, divisor,
                                   offset=panoptic_quality.PAIR_OFFSET),
      'vpq': lambda: video_panoptic_quality.VideoPanopticQuality(
          d.num_classes, things, d.ignore_label, divisor, window_sizes=vpq_windows),
      'pq': lambda: panoptic_quality.PanopticQuality(d.num_classes, things, d.ignore_label,
                                                     divisor),
      'miou': lambda: mean_iou.MeanIoU(d.num_classes, label_divisor=divisor),
      'vc8': lambda: video_consistency.VideoConsistency(8, label_divisor=divisor),
      'vc16': lambda: video_consistency.VideoConsistency(16, label_divisor=divisor),
  }
  return {name: factories[name]() for name in names}


def load_serving_signature(saved_model: str):
  """The `serving_default` signature of a clip-kMaX SavedModel.

  Raises:
    ValueError: no SavedModel at the path, or no `serving_default` taking
      `input_tensor` and returning panoptic_pred, segment_ids, query_embeddings.
  """
  cli.quiet_tensorflow()
  cli.initialise_devices()
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    loaded = tf.saved_model.load(saved_model)
  except (OSError, ValueError, tf.errors.OpError) as e:
    raise ValueError(f'no loadable SavedModel at {saved_model}: '
                     f'{str(e).splitlines()[0]}') from None
  signature = loaded.signatures.get('serving_default')
  if signature is None:
    raise ValueError(f'SavedModel {saved_model} has no serving_default signature; found '
                     f'{sorted(loaded.signatures)} (export with deeplab2_vkmax.export_model).')
  inputs = sorted(signature.structured_input_signature[1])
  outputs = sorted(signature.structured_outputs)
  missing = [k for k in _REQUIRED_OUTPUTS if k not in outputs]
  if inputs != [common.EXPORT_INPUT_NAME] or missing:
    raise ValueError(f'SavedModel {saved_model} serving_default takes {inputs} and returns '
                     f'{outputs}; expected input [{common.EXPORT_INPUT_NAME!r}] and outputs '
                     f'including {list(_REQUIRED_OUTPUTS)}.')
  # Keep the loaded object alive as long as the signature.
  signature.loaded_model = loaded
  return signature


def check_dataset_matches(saved_model: str,
                          descriptor: dataset_lib.DatasetDescriptor) -> None:
  """Refuses a --dataset whose classes or label divisor are not the model's.

  A model trained on another data set would run and score 0 silently. The
  SavedModel's own config.textproto names its data set; a SavedModel without
  one is not checked.

  Raises:
    ValueError: naming both data sets, their class counts and divisors.
  """
  path = os.path.join(saved_model, common.CONFIG_FILENAME)
  if not os.path.isfile(path):
    return
  trained = config_lib.load_experiment_config(path)
  name = (trained.eval_dataset_options.dataset or
          trained.train_dataset_options.dataset)
  if not name:
    return
  model_data = dataset_lib.get_dataset_descriptor(name)
  if (model_data.num_classes, model_data.panoptic_label_divisor) != (
      descriptor.num_classes, descriptor.panoptic_label_divisor):
    raise ValueError(
        f'{saved_model}: the model was trained on "{name}" ({model_data.num_classes} '
        f'classes, label divisor {model_data.panoptic_label_divisor}) but '
        f'--dataset={descriptor.name} has {descriptor.num_classes} classes, label '
        f'divisor {descriptor.panoptic_label_divisor}')


def load_config(saved_model: str,
                config_file: Optional[str]) -> config_pb2.ExperimentOptions:
  """The association options: --config_file, else the SavedModel's own config."""
  path = config_file or os.path.join(saved_model, common.CONFIG_FILENAME)
  if config_file or os.path.isfile(path):
    return config_lib.load_experiment_config(path)
  return config_pb2.ExperimentOptions()


def score_sequences(segment: Callable[[np.ndarray], Mapping[str, Any]],
                    sequences: Iterable[Tuple[str, np.ndarray, np.ndarray]],
                    scorer: video_scorer.VideoScorer, *, clip_length: int,
                    queue_depth: int = 2, writer=None, progress: bool = False,
                    position: int = 0) -> Dict[str, Any]:
  """The evaluation loop of every evaluation: this CLI and the trainer's.

  Cuts each sequence into clips (`deeplab2_vkmax.data.clips`), segments each clip
  with `segment` (the export's serving function: pre- and post-processing in the
  graph), and hands it to `scorer` (association, then metrics) and `writer`. The
  model stage runs up to `queue_depth` clips ahead of the host stage
  (`deeplab2_vkmax.overlap`).

  Args:
    segment: uint8 [T, H, W, 3] -> the serving outputs (tensors or arrays).
    sequences: (sequence id, uint8 images [F, H, W, 3], int32 labels [F, H, W]).
    scorer: receives every clip in order.
    clip_length: T.
    queue_depth: clips the model stage may run ahead; 0 = one after the other.
    writer: optional `prediction_io` writer of the emitted frames.
    progress: show a progress bar per sequence.
    position: the progress bars' line (one per worker).

  Returns:
    The stages' throughput (`StageClock.report`).
  """
  import tqdm  # pylint: disable=g-import-not-at-top

  def model_stage():
    """(sequence id, frame ids, outputs, labels, progress, frames new in the clip)."""
    for sequence_id, images, labels in sequences:
      bar = tqdm.tqdm(total=len(labels), desc=f'sequence {sequence_id}', unit='frame',
                      position=position, leave=False, file=sys.stderr, disable=not progress)
      for clip in clips.sequence_clips(len(labels), clip_length):
        outputs = segment(images[clip.take])
        yield (sequence_id, clip.frame_ids,
               {name: np.asarray(outputs[name]) for name in _REQUIRED_OUTPUTS},
               labels[clip.take], bar, clip.num_new)

  clock = overlap_lib.StageClock()
  last_bar = None
  for sequence_id, frame_ids, outputs, labels, bar, _ in overlap_lib.run_ahead(
      clock.timed('model', model_stage(), lambda item: item[5]), queue_depth):
    start = time.perf_counter()
    emitted = scorer.add_clip(
        sequence_id=sequence_id, frame_ids=frame_ids,
        panoptic=outputs[common.PANOPTIC_PRED], segment_ids=outputs[common.SEGMENT_IDS],
        query_embeddings=outputs[common.PRED_QUERY_EMBEDDINGS], labels=labels)
    for frame_id, frame in emitted:
      if writer is not None:
        writer.write(sequence_id, frame_id, frame)
    clock.add('host', time.perf_counter() - start, len(emitted))
    if last_bar is not None and bar is not last_bar:
      last_bar.close()
    last_bar = bar
    bar.update(len(emitted))
  if last_bar is not None:
    last_bar.close()
  return clock.report()


def _evaluate_shard(options: Dict[str, Any], worker: int, num_workers: int) -> Dict[str, Any]:
  """Evaluates the sequences with index % num_workers == worker (runs in a worker)."""
  from deeplab2_vkmax.data import clip_reader  # pylint: disable=g-import-not-at-top
  from deeplab2_vkmax import builder  # pylint: disable=g-import-not-at-top
  descriptor = dataset_lib.get_dataset_descriptor(options['dataset'])
  config = load_config(options['saved_model'], options['config_file'])
  signature = load_serving_signature(options['saved_model'])
  metrics = build_metrics(options['metrics'], descriptor, options['vpq_windows'])
  scorer = video_scorer.VideoScorer(
      associater_fn=lambda: builder.build_associater(config, descriptor), metrics=metrics)
  writer = None
  if options['save_predictions']:
    writer = prediction_io.make_writer(
        options['save_predictions'], os.path.join(options['output_dir'], 'predictions'),
        label_divisor=descriptor.panoptic_label_divisor, ignore_label=descriptor.ignore_label)
  sequences = clip_reader.read_sequences(options['file_pattern'], descriptor)
  mine = (sequence for index, sequence in enumerate(
      itertools.islice(sequences, options['max_num_sequences'])
      if options['max_num_sequences'] >= 0 else sequences) if index % num_workers == worker)
  throughput = score_sequences(
      lambda clip: signature(**{common.EXPORT_INPUT_NAME: clip}), mine, scorer,
      clip_length=options['clip_length'], queue_depth=options['queue_depth'], writer=writer,
      progress=options['progress'], position=worker)
  return {'metrics': metrics, 'num_frames': scorer.num_frames,
          'num_sequences': scorer.num_sequences,
          'association': scorer.association_statistics,
          'predictions': writer.finish() if writer is not None else {},
          'throughput': throughput}


def _merge(shards: List[Dict[str, Any]]) -> Dict[str, Any]:
  merged = shards[0]
  for shard in shards[1:]:
    for name, metric in merged['metrics'].items():
      metric.merge_state([shard['metrics'][name]])
    merged['num_frames'] += shard['num_frames']
    merged['num_sequences'] += shard['num_sequences']
    merged['association'].update(shard['association'])
  merged['predictions'] = [s['predictions'] for s in shards]
  merged['throughput'] = [s['throughput'] for s in shards]
  return merged


def summarise(results: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
  """(overall scores, per-sequence scores, protocols) of the metrics' results."""
  overall: Dict[str, Any] = {}
  per_sequence: Dict[str, Dict[str, float]] = {}
  protocols: Dict[str, str] = {}

  def add_per_sequence(result, key, name):
    for sequence_id, value in zip(result['ID_per_seq'], result[key]):
      per_sequence.setdefault(str(sequence_id), {})[name] = float(value)

  if 'stq' in results:
    r = results['stq']
    overall.update(STQ=float(r['STQ']), AQ=float(r['AQ']), SQ=float(r['IoU']))
    for key, name in (('STQ_per_seq', 'STQ'), ('AQ_per_seq', 'AQ'), ('IoU_per_seq', 'SQ'),
                      ('Length_per_seq', 'frames')):
      add_per_sequence(r, key, name)
    protocols['stq'] = 'STQ = sqrt(SQ * AQ); AQ track-weighted over sequences'
  if 'vpq' in results:
    r = results['vpq']
    overall.update(VPQ=float(r['VPQ']), VPQ_thing=float(r['VPQ_thing']),
                   VPQ_stuff=float(r['VPQ_stuff']))
    overall['VPQ_per_window'] = {str(n): float(v) for n, v in r['VPQ_per_window'].items()}
    add_per_sequence(r, 'VPQ_per_seq', 'VPQ')
    add_per_sequence(r, 'Length_per_seq', 'frames')
    protocols['vpq'] = r['protocol']
  if 'pq' in results:
    r = results['pq']
    overall.update(PQ=float(r['PQ']), PQ_thing=float(r['PQ_thing']),
                   PQ_stuff=float(r['PQ_stuff']))
    protocols['pq'] = 'image PQ, every frame one image'
  if 'miou' in results:
    overall['mIoU'] = float(results['miou']['mIoU'])
    protocols['miou'] = 'one confusion matrix; mean over classes present in the GT'
  for name in ('vc8', 'vc16'):
    if name in results:
      r = results[name]
      key = name.upper()
      overall[key] = float(r[key])
      add_per_sequence(r, 'VC_per_seq', key)
      protocols[name] = f'{key}: official loop range(len - n), nanmean over windows'
  return {'overall': overall, 'per_sequence': per_sequence, 'protocols': protocols}


def format_table(summary: Dict[str, Any], num_sequences: int, num_frames: int) -> str:
  """The printed table: one row per sequence, then overall; protocols below."""
  overall = summary['overall']
  columns = [c for c in ('STQ', 'AQ', 'SQ', 'VPQ', 'VPQ_thing', 'VPQ_stuff', 'PQ', 'mIoU',
                         'VC8', 'VC16') if c in overall]
  width = max([10] + [len(s) for s in summary['per_sequence']])
  lines = [f'{num_sequences} sequences, {num_frames} frames',
           f'  {"sequence":>{width}}  ' + '  '.join(f'{c:>9}' for c in columns)]

  def row(name, values):
    cells = [f'{values[c]:9.4f}' if c in values else f'{"-":>9}' for c in columns]
    return f'  {name:>{width}}  ' + '  '.join(cells)

  for sequence_id, values in sorted(summary['per_sequence'].items()):
    lines.append(row(sequence_id, values))
  lines.append(row('overall', overall))
  if 'VPQ_per_window' in overall:
    lines.append('  VPQ per window: ' + ', '.join(
        f'n={n} {v:.4f}' for n, v in overall['VPQ_per_window'].items()))
  for name, protocol in summary['protocols'].items():
    lines.append(f'  {name}: {protocol}')
  return '\n'.join(lines)


def format_throughput(throughput: List[Dict[str, float]], queue_depth: int) -> str:
  """One line per worker: frames/s of each stage and of the whole."""
  lines = []
  for worker, stages in enumerate(throughput):
    lines.append(f'worker {worker}: model stage {stages.get("model_frames_per_second", 0):.2f}'
                 f' frames/s, host stage {stages.get("host_frames_per_second", 0):.2f} frames/s'
                 f', {"overlapped" if queue_depth else "one after the other"}, '
                 f'{stages["wall_seconds"]:.1f} s wall')
  return '\n'.join(lines)


def run_evaluation(*, saved_model: str, dataset: str, file_pattern: str, output_dir: str,
                   clip_length: Optional[int] = None, config_file: Optional[str] = None,
                   num_workers: int = 1, metrics: Optional[Sequence[str]] = None,
                   vpq_windows=None, save_predictions: Optional[str] = None,
                   max_num_sequences: int = -1, progress: bool = True,
                   queue_depth: int = 2, log_fn=print) -> Dict[str, Any]:
  """Evaluates `saved_model` on every sequence of `file_pattern`.

  Args:
    saved_model: SavedModel directory (deeplab2_vkmax.export_model).
    dataset: data set registry name (classes, things, ignore label, divisor).
    file_pattern: TFRecord glob (build_step_data layout); `$VARS` expanded.
    output_dir: where metrics.json (and predictions/) go.
    clip_length: frames per clip T (1 = online, >= 2 near-online, stride T - 1);
      default the config's `eval_dataset_options.clip_length`.
    config_file: ExperimentOptions textproto for T and the association options;
      default the SavedModel's config.textproto, else the proto defaults.
    num_workers: parallel worker processes (sequences dealt round-robin).
    metrics: names from METRICS; default per data set (`default_metrics`).
    vpq_windows: preset name or window sizes; default per data set.
    save_predictions: None or a `prediction_io.FORMATS` entry.
    max_num_sequences: evaluate at most this many sequences; -1 = all.
    progress: show a progress bar per sequence.
    queue_depth: clips the model stage (read + SavedModel) may run ahead of the
      host stage (association, metrics, writers) in a background thread; 0 runs
      them one after the other.
    log_fn: where the table goes.

  Returns:
    The report written to metrics.json: 'overall', 'per_sequence', 'protocols',
    'num_sequences', 'num_frames', 'association_per_sequence', 'throughput'
    (per worker: frames/s of the model and host stages, wall seconds), the
    arguments.

  Raises:
    ValueError: unknown data set / metric / format, a file pattern that matches
      nothing, a SavedModel without the expected signature, clip_length < 1,
      a --dataset whose classes or label divisor differ from the model's.
  """
  import glob  # pylint: disable=g-import-not-at-top
  descriptor = dataset_lib.get_dataset_descriptor(dataset)
  if not os.path.isdir(saved_model):
    raise ValueError(f'--saved_model={saved_model}: no such folder')
  config = load_config(saved_model, config_file)
  if clip_length is None:
    clip_length = config.eval_dataset_options.clip_length
  if clip_length < 1:
    raise ValueError(f'clip_length must be >= 1; received {clip_length}.')
  if num_workers < 1:
    raise ValueError(f'num_workers must be >= 1; received {num_workers}.')
  file_pattern = os.path.expandvars(file_pattern)
  if not glob.glob(file_pattern):
    raise ValueError(f'file_pattern "{file_pattern}" matches no file.')
  cli.check_writable_dir(output_dir, '--output_dir')  # Before minutes of evaluation.
  if save_predictions and save_predictions not in prediction_io.FORMATS:
    raise ValueError(f'unknown --save_predictions "{save_predictions}"; expected one of '
                     f'{list(prediction_io.FORMATS)}.')
  metrics = list(metrics) if metrics else default_metrics(dataset)
  vpq_windows = vpq_windows or default_vpq_windows(dataset)
  build_metrics(metrics, descriptor, vpq_windows)  # Fail early on bad names.
  check_dataset_matches(saved_model, descriptor)
  options = dict(saved_model=saved_model, dataset=dataset, file_pattern=file_pattern,
                 output_dir=output_dir, clip_length=clip_length, config_file=config_file,
                 metrics=metrics, vpq_windows=vpq_windows,
                 save_predictions=save_predictions, max_num_sequences=max_num_sequences,
                 progress=progress, queue_depth=queue_depth)
  if num_workers == 1:
    shards = [_evaluate_shard(options, 0, 1)]
  else:
    context = multiprocessing.get_context('spawn')  # TF is not fork-safe.
    with concurrent.futures.ProcessPoolExecutor(num_workers, mp_context=context) as pool:
      futures = [pool.submit(_evaluate_shard, options, w, num_workers)
                 for w in range(num_workers)]
      shards = [f.result() for f in futures]
  merged = _merge(shards)
  results = {name: metric.result() for name, metric in merged['metrics'].items()}
  summary = summarise(results)
  num_sequences = merged['num_sequences']
  if save_predictions == 'vipseg':
    prediction_io.write_vipseg_json(os.path.join(output_dir, 'predictions'),
                                    merged['predictions'])
  log_fn(format_table(summary, num_sequences, merged['num_frames']))
  log_fn(format_throughput(merged['throughput'], queue_depth))
  report = dict(summary, num_sequences=num_sequences, num_frames=merged['num_frames'],
                throughput=merged['throughput'],
                saved_model=saved_model, dataset=dataset, file_pattern=file_pattern,
                clip_length=clip_length, metrics=metrics,
                association_per_sequence=video_scorer.jsonable(merged['association']))
  os.makedirs(output_dir, exist_ok=True)
  path = os.path.join(output_dir, 'metrics.json')
  with open(path + '.tmp', 'w') as f:
    json.dump(report, f, indent=2)
  os.replace(path + '.tmp', path)
  return report


def main(argv):
  del argv
  from absl import flags  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  with cli.one_line_errors(config_lib.ConfigError, ValueError):
    run_evaluation(
        saved_model=f.saved_model, dataset=f.dataset, file_pattern=f.file_pattern,
        output_dir=f.output_dir, clip_length=f.clip_length, config_file=f.config_file,
        num_workers=f.num_workers,
        metrics=[m.strip() for m in f.metrics.split(',') if m.strip()] if f.metrics else None,
        vpq_windows=parse_vpq_windows(f.vpq_windows) if f.vpq_windows else None,
        save_predictions=f.save_predictions or None,
        max_num_sequences=f.max_num_sequences, queue_depth=f.queue_depth)


if __name__ == '__main__':
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string('saved_model', None, 'SavedModel directory (export_model).')
  flags.DEFINE_string('dataset', None, 'Data set registry name, e.g. kitti_step.')
  flags.DEFINE_string('file_pattern', None, 'TFRecord glob of the evaluated split.')
  flags.DEFINE_string('output_dir', None, 'Where metrics.json and predictions/ go.')
  flags.DEFINE_integer('clip_length', None, 'Frames per clip: 1 online, >= 2 near-online; '
                       'default: the config\'s eval clip_length.')
  flags.DEFINE_string('config_file', None, 'ExperimentOptions textproto (association '
                      'options); default: the SavedModel\'s config.textproto.')
  flags.DEFINE_integer('num_workers', 1, 'Worker processes (sequences in parallel).')
  flags.DEFINE_string('metrics', None, f'Comma list of {",".join(METRICS)}; default: '
                      'stq,vpq (vspw: miou,vc8,vc16).')
  flags.DEFINE_string('vpq_windows', None, 'VPQ window preset (vipseg, video_kmax, '
                      'cityscapes_vps) or comma list; default per data set.')
  flags.DEFINE_string('save_predictions', None, 'Also write predictions: kitti_step, '
                      'vipseg or vspw.')
  flags.DEFINE_integer('max_num_sequences', -1, 'Evaluate at most this many sequences.')
  flags.DEFINE_integer('queue_depth', 2, 'Clips the model may run ahead of association '
                       'and metrics (a background thread); 0 runs them one after the other.',
                       lower_bound=0)
  flags.mark_flags_as_required(['saved_model', 'dataset', 'file_pattern', 'output_dir'])
  cli.run_absl(main)
