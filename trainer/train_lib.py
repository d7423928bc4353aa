"""Runs an experiment: train, eval, train_and_eval, continuous_eval or export.

The run directory is `model_dir/experiment_name` (DeepLab2's convention). It holds
the checkpoints (`ckpt-<step>`), TensorBoard summaries (`train/`, `eval/`), the
evaluation results as JSON (`eval/metrics_step_<step>.json`) and, after
train_and_eval or --mode=export, the SavedModel (`export/`). Training resumes
from the latest checkpoint in the run directory; `initial_checkpoint` is only read
when the run directory has none.

Multi-worker (`TF_CONFIG` set, MultiWorkerMirroredStrategy): every worker runs the
same command; only the chief writes into the run directory (checkpoints,
summaries, config). The other workers restore from the chief's latest checkpoint
and save theirs (saving takes part in collectives) into a private temporary
directory that is deleted at the end. Only `--mode=train` runs multi-worker.

Pre-emption: SIGTERM or SIGINT during training sets a flag that is read after
each loop of `steps_per_loop` steps (all workers agree on it through an
all-reduce); the job then saves a checkpoint at the current step and stops with
`Preempted` (train.py exits with 128 + the signal number).
"""

import dataclasses
import json
import os
import shutil
import signal
import tempfile
import threading
from typing import Callable, Dict, Optional

import keras
import orbit
import tensorflow as tf

from deeplab2_vkmax import common
from deeplab2_vkmax import export_model
from deeplab2_vkmax.data import dataset as dataset_lib
from deeplab2_vkmax.evaluation import evaluate
from deeplab2_vkmax.evaluation import video_scorer
from deeplab2_vkmax import builder
from deeplab2_vkmax.model import precision
from deeplab2_vkmax.protos import config_pb2
from deeplab2_vkmax.trainer import checkpoints
from deeplab2_vkmax.trainer import data_lib
from deeplab2_vkmax.trainer import evaluator as evaluator_lib
from deeplab2_vkmax.trainer import optimizer_builder
from deeplab2_vkmax.trainer import trainer as trainer_lib

MODES = ('train', 'eval', 'train_and_eval', 'continuous_eval', 'export')
TRAIN_ITERATOR = 'train_iterator'  # Checkpoint key of the training data position.


class Preempted(Exception):
  """Training stopped on SIGTERM / SIGINT after saving a checkpoint."""

  def __init__(self, step: int, checkpoint_path: str, signum: int):
    self.step = step
    self.checkpoint_path = checkpoint_path
    self.signum = signum
    self.exit_code = 128 + signum  # The shell's code for "killed by signum".
    super().__init__(f'preempted at step {step}: checkpoint saved to {checkpoint_path}')


class PreemptionWatcher:
  """Turns SIGTERM / SIGINT into a flag that the train loop reads between loops.

  A signal never interrupts a step: the handler only records it. A second signal
  of the same kind gets the previous handler (a second Ctrl-C stops at once).
  Under multi-worker training the workers sum their flags, so all of them save
  and stop after the same loop even when only one received the signal.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self, strategy: tf.distribute.Strategy):
    self._strategy = strategy
    self._multi_worker = num_workers(strategy) > 1
    self._previous = {}
    self.signum = 0
    if self._multi_worker:
      # One all-reduce per loop, traced once (eager collectives are slow).
      @tf.function
      def agree(flags):
        per_replica = strategy.run(tf.identity, args=(flags,))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
      self._agree = agree

  def __enter__(self) -> 'PreemptionWatcher':
    # Signal handlers can only be installed from the main thread.
    if threading.current_thread() is threading.main_thread():
      for signum in self.SIGNALS:
        previous = signal.signal(signum, self._handle)
        # None: a handler installed outside Python; the default is the closest.
        self._previous[signum] = signal.SIG_DFL if previous is None else previous
    return self

  def __exit__(self, *unused_exc_info) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}

  def _handle(self, signum, unused_frame) -> None:
    self.signum = self.signum or signum
    signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))

  def requested(self) -> int:
    """The signal that asked to stop (on any worker), else 0."""
    if not self._multi_worker:
      return self.signum
    signalled = int(self._agree(tf.constant(int(self.signum > 0), tf.int32)).numpy())
    if not signalled:
      return 0
    return self.signum or int(signal.SIGTERM)  # Another worker was signalled.


def num_workers(strategy: tf.distribute.Strategy) -> int:
  """Worker processes of a MultiWorkerMirroredStrategy cluster (1 for others)."""
  if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
    return 1
  spec = strategy.cluster_resolver.cluster_spec().as_dict()
  return max(1, sum(len(spec.get(job, ())) for job in ('chief', 'worker')))


def is_chief(strategy: tf.distribute.Strategy) -> bool:
  """Whether this process writes the run directory (True unless a non-chief worker)."""
  return bool(strategy.extended.should_checkpoint)


def create_strategy(num_gpus: int = 0, master: str = '') -> tf.distribute.Strategy:
  """DeepLab2's strategy flags, plus MultiWorkerMirrored when TF_CONFIG is set.

  Raises:
    ValueError: `num_gpus` is negative or more than TensorFlow sees.
  """
  if master and master != 'local':
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=master)
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)
  if os.environ.get('TF_CONFIG'):
    return tf.distribute.MultiWorkerMirroredStrategy()
  if num_gpus < 0:
    raise ValueError(f'--num_gpus must be >= 0; got {num_gpus}')
  visible = len(tf.config.list_physical_devices('GPU'))
  if num_gpus > visible:
    # Training on the CPU instead would take days where the user planned hours.
    raise ValueError(f'--num_gpus={num_gpus} but TensorFlow sees {visible} GPU(s) on this '
                     'machine; use --num_gpus=0 to train on the CPU')
  if num_gpus > 1:
    return tf.distribute.MirroredStrategy([f'/gpu:{i}' for i in range(num_gpus)])
  if num_gpus == 1:
    return tf.distribute.OneDeviceStrategy('/gpu:0')
  return tf.distribute.OneDeviceStrategy('/cpu:0')


@dataclasses.dataclass
class Experiment:
  """Everything one run builds from its config."""
  config: config_pb2.ExperimentOptions
  run_dir: str
  strategy: tf.distribute.Strategy
  descriptor: dataset_lib.DatasetDescriptor
  model: keras.Model
  global_step: tf.Variable


def build_model_variables(model: keras.Model, config: config_pb2.ExperimentOptions) -> None:
  """Creates the model's variables by running it once on a clip of zeros."""
  options = config.train_dataset_options
  height, width = options.crop_size
  model(tf.zeros([1, options.clip_length, height, width, 3]), training=False)


def build_experiment(config: config_pb2.ExperimentOptions, model_dir: str,
                     strategy: Optional[tf.distribute.Strategy] = None) -> Experiment:
  """Builds the strategy, the model (variables created) and the step counter.

  With `trainer_options.seed` set, the initial weights (and later random draws
  of training) are seeded first.
  """
  strategy = strategy or create_strategy()
  descriptor = data_lib.dataset_descriptor(config.train_dataset_options)
  if config.trainer_options.HasField('seed'):
    keras.utils.set_random_seed(config.trainer_options.seed)
  with strategy.scope():
    # Layers keep the policy they are built under; the global one is restored.
    with precision.dtype_policy_scope(
        config.trainer_options.solver_options.mixed_precision):
      model = builder.build_model(config, descriptor)
      build_model_variables(model, config)
    global_step = orbit.utils.create_global_step()
  return Experiment(config=config, run_dir=os.path.join(model_dir, config.experiment_name),
                    strategy=strategy, descriptor=descriptor, model=model,
                    global_step=global_step)


def _split_variables(model: keras.Model):
  """(backbone variables, other variables) of the trainable variables."""
  encoder_ids = {id(v) for v in model.checkpoint_items['encoder'].trainable_variables}
  backbone = [v for v in model.trainable_variables if id(v) in encoder_ids]
  others = [v for v in model.trainable_variables if id(v) not in encoder_ids]
  return backbone, others


def _initial_checkpoint_fn(experiment: Experiment, log_fn) -> Optional[Callable[[], None]]:
  """Applies `pretrained_weights` / `initial_checkpoint` when the run directory is empty."""
  model_options = experiment.config.model_options
  if not (model_options.initial_checkpoint or model_options.backbone.pretrained_weights):
    return None

  def restore():
    # Strict: a ValueError lists every unmatched variable or unused key.
    for message in builder.initialise_model_weights(experiment.config, experiment.model):
      log_fn(message)

  return restore


def _checkpoint_items(experiment: Experiment, optimizers) -> Dict[str, object]:
  items = dict(experiment.model.checkpoint_items)
  items['global_step'] = experiment.global_step
  for index, (optimizer, _) in enumerate(optimizers):
    items['optimizer' if index == 0 else f'optimizer_{index}'] = optimizer
  return items


def build_optimizers(experiment: Experiment):
  """(optimizer, variables) pairs: the backbone gets its own with its lr multiplier."""
  solver = experiment.config.trainer_options.solver_options
  with experiment.strategy.scope():
    multiplier = solver.backbone_learning_rate_multiplier
    if multiplier == 1.0:
      variables = list(experiment.model.trainable_variables)
      return [(optimizer_builder.build_optimizer(solver, variables), variables)]
    backbone, others = _split_variables(experiment.model)
    return [(optimizer_builder.build_optimizer(solver, others), others),
            (optimizer_builder.build_optimizer(solver, backbone, multiplier), backbone)]


def make_scorer_fn(config: config_pb2.ExperimentOptions,
                   descriptor: dataset_lib.DatasetDescriptor
                   ) -> Callable[[], video_scorer.VideoScorer]:
  """Creates VideoScorers with the metrics `evaluation.evaluate` uses for this data
  set (STQ always; then its published protocol: STQ + VPQ, or mIoU + VC8 + VC16 for
  VSPW; VPQ windows per data set), a fresh associater per sequence."""
  names = ['stq'] + [n for n in evaluate.default_metrics(descriptor.name) if n != 'stq']
  windows = evaluate.default_vpq_windows(descriptor.name)

  def scorer_fn():
    metrics = evaluate.build_metrics(names, descriptor, windows)
    return video_scorer.VideoScorer(
        associater_fn=lambda: builder.build_associater(config, descriptor),
        metric=metrics['stq'], metrics=metrics)
  return scorer_fn


def build_evaluator(experiment: Experiment, log_fn=print) -> evaluator_lib.ClipKMaXEvaluator:
  """The trainer's evaluator: the CLI evaluator's path (serving function, clip
  cutting, association, metrics) on `eval_dataset_options`' sequences."""
  config = experiment.config
  eval_options = config.eval_dataset_options
  eval_descriptor = data_lib.dataset_descriptor(eval_options)
  return evaluator_lib.ClipKMaXEvaluator(
      model=experiment.model,
      post_processor=builder.build_post_processor(config, eval_descriptor),
      sequences_fn=lambda: data_lib.eval_sequences(
          eval_options, eval_descriptor, config.evaluator_options.max_num_sequences),
      clip_length=eval_options.clip_length,
      scorer_fn=make_scorer_fn(config, eval_descriptor),
      global_step=experiment.global_step,
      output_dir=os.path.join(experiment.run_dir, 'eval'), log_fn=log_fn,
      descriptor=eval_descriptor)


def build_train_dataset(experiment: Experiment, checkpointable: bool = False):
  """The training input for the trainer.

  By default a distributed dataset: each input pipeline (one per worker) reads
  its own shard of the clips, batched at the per-replica batch size, prefetched
  to the devices. With `checkpointable` (OneDeviceStrategy only) a plain
  `tf.data` iterator instead, which `tf.train.Checkpoint` can save (the data
  position); tf.distribute's iterators cannot be saved.

  Returns:
    (iterator or distributed dataset, the checkpointable iterator or None).

  Raises:
    ValueError: `checkpointable` under another strategy.
  """
  options = experiment.config.train_dataset_options
  strategy = experiment.strategy
  if checkpointable:
    if not isinstance(strategy, tf.distribute.OneDeviceStrategy):
      raise ValueError('trainer_options.checkpoint_data_position needs OneDeviceStrategy '
                       '(tf.distribute iterators cannot be saved); got '
                       f'{type(strategy).__name__}: set it to false')
    with tf.device('/cpu:0'):
      iterator = iter(data_lib.build_train_dataset(options, experiment.descriptor,
                                                   options.batch_size))
    return iterator, iterator

  def dataset_fn(input_context: tf.distribute.InputContext) -> tf.data.Dataset:
    # distribute_datasets_from_function never shards by itself: the shard is
    # taken here, on clips before decoding (files when there are enough).
    return data_lib.build_train_dataset(
        options, experiment.descriptor,
        input_context.get_per_replica_batch_size(options.batch_size),
        num_shards=input_context.num_input_pipelines,
        shard_index=input_context.input_pipeline_id)

  return strategy.distribute_datasets_from_function(dataset_fn), None


def build_trainer(experiment: Experiment, optimizers, log_fn=print,
                  train_input=None) -> trainer_lib.ClipKMaXTrainer:
  """The Orbit trainer; `train_input` defaults to `build_train_dataset(...)[0]`."""
  config = experiment.config
  options = config.train_dataset_options
  solver = config.trainer_options.solver_options
  strategy = experiment.strategy
  replicas = strategy.num_replicas_in_sync
  if options.batch_size % replicas:
    workers = num_workers(strategy)
    raise ValueError(f'train_dataset_options.batch_size {options.batch_size} does not divide '
                     f'over {replicas} replicas ({workers} worker(s) x {replicas // workers}); '
                     f'use a multiple of {replicas}')
  if train_input is None:
    train_input, _ = build_train_dataset(experiment)
  loss = builder.build_loss(config, experiment.descriptor)
  all_variables = [v for _, group in optimizers for v in group]
  schedule = optimizer_builder.build_learning_rate(solver)
  return trainer_lib.ClipKMaXTrainer(
      strategy=strategy, model=experiment.model, loss_fn=loss, optimizers=optimizers,
      train_dataset=train_input, global_batch_size=options.batch_size,
      global_step=experiment.global_step, total_steps=solver.training_number_of_steps,
      clip_gradient_norm=solver.clip_gradient_norm if solver.use_gradient_clipping else None,
      regularization_fn=lambda: optimizer_builder.l2_regularization(solver, all_variables),
      learning_rate_fn=schedule, log_fn=log_fn,
      image_summary_steps=config.trainer_options.save_image_summaries_steps,
      post_processor=builder.build_post_processor(config, experiment.descriptor),
      descriptor=experiment.descriptor,
      clip_shape=(options.clip_length, *options.crop_size))


def _preemption_action(watcher: PreemptionWatcher, manager: tf.train.CheckpointManager,
                       experiment: Experiment, log_fn):
  """A train action: after a loop, save and stop if a signal asked to."""

  def action(unused_output):
    signum = watcher.requested()
    if not signum:
      return
    step = int(experiment.global_step.numpy())
    path = manager.save(checkpoint_number=step, check_interval=False)
    if not is_chief(experiment.strategy):
      path = os.path.join(experiment.run_dir, os.path.basename(path))  # The chief's copy.
    preempted = Preempted(step, path, signum)
    log_fn(str(preempted))
    raise preempted

  return action


def run_experiment(mode: str, config: config_pb2.ExperimentOptions, model_dir: str,
                   strategy: Optional[tf.distribute.Strategy] = None,
                   log_fn=print) -> Optional[Dict[str, float]]:
  """Runs `mode` of the experiment `config` under `model_dir`.

  Returns:
    The last evaluation's metrics (eval modes), else None.

  Raises:
    ValueError: an unknown mode, a data problem, `eval`/`export` without a
      checkpoint in the run directory, or a mode other than `train` under
      multi-worker training.
    Preempted: SIGTERM / SIGINT stopped training after saving a checkpoint.
  """
  if mode not in MODES:
    raise ValueError(f'mode must be one of {", ".join(MODES)}; got "{mode}"')
  strategy = strategy or create_strategy()
  workers = num_workers(strategy)
  if workers > 1 and mode != 'train':
    # Evaluation reads sequences on the host (from_generator) and scores them in
    # numpy: it runs in its own single-process job, e.g. --mode=continuous_eval
    # on the same --model_dir.
    raise ValueError(f'--mode={mode} does not run multi-worker (TF_CONFIG names {workers} '
                     'workers); use --mode=train on the workers and a separate '
                     '--mode=continuous_eval job without TF_CONFIG on the same --model_dir')
  experiment = build_experiment(config, model_dir, strategy)
  chief = is_chief(strategy)
  if chief:
    os.makedirs(experiment.run_dir, exist_ok=True)
    with open(os.path.join(experiment.run_dir, common.CONFIG_FILENAME), 'w') as f:
      f.write(str(config))
  # A non-chief worker saves into a private directory (saving is collective) and
  # restores from the chief's checkpoints.
  write_dir = experiment.run_dir if chief else tempfile.mkdtemp(prefix='vkmax_worker_')
  try:
    return _run(mode, experiment, write_dir, log_fn)
  finally:
    if not chief:
      shutil.rmtree(write_dir, ignore_errors=True)


def _export(experiment, log_fn) -> None:
  """Exports the experiment's model as a SavedModel to `<run dir>/export`."""
  config = experiment.config
  export_dir = os.path.join(experiment.run_dir, 'export')
  export_model.export_saved_model(experiment.model, builder.build_post_processor(
      config, data_lib.dataset_descriptor(config.eval_dataset_options)), config, export_dir)
  log_fn(f'exported SavedModel to {export_dir}')


def _run(mode, experiment, write_dir, log_fn):
  config = experiment.config
  chief = write_dir == experiment.run_dir
  trainer_options = config.trainer_options
  solver = trainer_options.solver_options
  has_train = mode in ('train', 'train_and_eval')
  has_eval = mode in ('eval', 'train_and_eval', 'continuous_eval')
  optimizers = build_optimizers(experiment) if has_train else []
  items = _checkpoint_items(experiment, optimizers)
  train_input = data_iterator = None
  if has_train:
    train_input, data_iterator = build_train_dataset(
        experiment, checkpointable=trainer_options.checkpoint_data_position)
    if data_iterator is not None:
      items[TRAIN_ITERATOR] = data_iterator
  checkpoint = tf.train.Checkpoint(**items)
  init_fn = _initial_checkpoint_fn(experiment, log_fn) if has_train else None
  if not chief:
    init_fn = _restore_chief_fn(checkpoint, experiment.run_dir, init_fn)
  manager = checkpoints.RunCheckpointManager(
      checkpoint, write_dir, max_to_keep=trainer_options.num_checkpoints_to_keep,
      step_counter=experiment.global_step,
      checkpoint_interval=trainer_options.save_checkpoints_steps,
      init_fn=init_fn)
  if mode in ('eval', 'export') and manager.latest_checkpoint is None:
    raise ValueError(f'--mode={mode} needs a checkpoint in {experiment.run_dir}; none found '
                     '(train first, or point --model_dir at a trained run)')
  if mode == 'export':
    # Nothing to train or evaluate: restore the newest weights that read and export.
    log_fn(f'restored {manager.restore_newest_readable(expect_partial=True)}')
    return _export(experiment, log_fn)
  watcher = PreemptionWatcher(experiment.strategy)
  controller = orbit.Controller(
      strategy=experiment.strategy,
      trainer=(build_trainer(experiment, optimizers, log_fn, train_input)
               if has_train else None),
      evaluator=build_evaluator(experiment, log_fn) if has_eval else None,
      global_step=experiment.global_step,
      steps_per_loop=trainer_options.steps_per_loop,
      checkpoint_manager=manager,
      summary_interval=trainer_options.save_summaries_steps if has_train else None,
      summary_dir=os.path.join(experiment.run_dir, 'train') if chief else None,
      eval_summary_dir=os.path.join(experiment.run_dir, 'eval'),
      train_actions=[_preemption_action(watcher, manager, experiment, log_fn)])
  total_steps = solver.training_number_of_steps
  result = None
  if mode == 'train':
    with watcher:
      controller.train(steps=total_steps)
  elif mode == 'eval':
    result = controller.evaluate(steps=-1)
  elif mode == 'train_and_eval':
    with watcher:
      result = controller.train_and_evaluate(
          train_steps=total_steps, eval_steps=-1,
          eval_interval=config.evaluator_options.eval_interval)
  elif mode == 'continuous_eval':
    for result in _continuous_eval(controller, experiment, manager, total_steps):
      pass
  if mode == 'train_and_eval':
    _export(experiment, log_fn)
  if result is not None:
    result = {k: float(v) for k, v in result.items()}
    with open(os.path.join(experiment.run_dir, 'eval', 'latest_metrics.json'), 'w') as f:
      json.dump(result, f, indent=2)
  return result


def _restore_chief_fn(checkpoint: tf.train.Checkpoint, run_dir: str,
                      init_fn: Optional[Callable[[], None]]) -> Callable[[], None]:
  """A non-chief worker's start: the chief's latest checkpoint, else `init_fn`."""

  def restore():
    path = tf.train.latest_checkpoint(run_dir)
    if path is not None:
      checkpoint.restore(path)
    elif init_fn is not None:
      init_fn()

  return restore


def _continuous_eval(controller, experiment, manager, total_steps,
                     warn_fn=checkpoints.warn):
  """Evaluates each new checkpoint until the last step's or the timeout.

  A checkpoint that does not read is skipped with one warning; the job waits
  for the next one instead of dying overnight.
  """
  timeout = experiment.config.evaluator_options.continuous_eval_timeout
  for path in tf.train.checkpoints_iterator(experiment.run_dir, timeout=timeout):
    try:
      manager.checkpoint.restore(path).expect_partial()
    except (tf.errors.OpError, ValueError) as e:
      warn_fn(f'{checkpoints.unreadable(path, e)}; waiting for the next one')
      continue
    yield controller.evaluate(steps=-1)
    if int(experiment.global_step.numpy()) >= total_steps:
      return
