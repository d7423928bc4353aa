"""Runs an experiment: train, eval, train_and_eval, continuous_eval or export.

The run directory is `model_dir/experiment_name` (DeepLab2's convention). It holds
the checkpoints (`ckpt-<step>`), TensorBoard summaries (`train/`, `eval/`), the
evaluation results as JSON (`eval/metrics_step_<step>.json`) and, after
train_and_eval or --mode=export, the SavedModel (`export/`). Training resumes
from the latest checkpoint in the run directory; `initial_checkpoint` is only read
when the run directory has none.
"""

import dataclasses
import json
import os
from typing import Callable, Dict, Optional

import keras
import orbit
import tensorflow as tf

from deeplab2_vkmax import export_model
from deeplab2_vkmax.data import dataset as dataset_lib
from deeplab2_vkmax.evaluation import stq
from deeplab2_vkmax.evaluation import video_panoptic_quality
from deeplab2_vkmax.evaluation import video_scorer
from deeplab2_vkmax.model import builder
from deeplab2_vkmax.protos import config_pb2
from deeplab2_vkmax.trainer import data_lib
from deeplab2_vkmax.trainer import evaluator as evaluator_lib
from deeplab2_vkmax.trainer import optimizer_builder
from deeplab2_vkmax.trainer import trainer as trainer_lib

MODES = ('train', 'eval', 'train_and_eval', 'continuous_eval', 'export')


def create_strategy(num_gpus: int = 0, master: str = '') -> tf.distribute.Strategy:
  """DeepLab2's strategy flags, plus MultiWorkerMirrored when TF_CONFIG is set."""
  if master and master != 'local':
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=master)
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)
  if os.environ.get('TF_CONFIG'):
    return tf.distribute.MultiWorkerMirroredStrategy()
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
  """Builds the strategy, the model (variables created) and the step counter."""
  strategy = strategy or create_strategy()
  descriptor = data_lib.dataset_descriptor(config.train_dataset_options)
  with strategy.scope():
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
  """Creates VideoScorers: STQ and VPQ {1,2,4,6}, a fresh associater per sequence."""
  things = list(descriptor.class_has_instances_list)

  def scorer_fn():
    metric = stq.STQuality(
        num_classes=descriptor.num_classes, things_list=things,
        ignore_label=descriptor.ignore_label,
        label_divisor=descriptor.panoptic_label_divisor, offset=2 ** 32)
    vpq = video_panoptic_quality.VideoPanopticQuality(
        descriptor.num_classes, things, descriptor.ignore_label,
        descriptor.panoptic_label_divisor, window_sizes='video_kmax')
    return video_scorer.VideoScorer(
        associater_fn=lambda: builder.build_associater(config, descriptor),
        metric=metric, metrics={'stq': metric, 'vpq': vpq},
        label_divisor=descriptor.panoptic_label_divisor,
        thing_class_ids=descriptor.class_has_instances_list)
  return scorer_fn


def build_evaluator(experiment: Experiment, log_fn=print) -> evaluator_lib.ClipKMaXEvaluator:
  config = experiment.config
  eval_options = config.eval_dataset_options
  eval_descriptor = data_lib.dataset_descriptor(eval_options)
  dataset = data_lib.build_eval_dataset(eval_options, eval_descriptor,
                                        config.evaluator_options.max_num_sequences)
  return evaluator_lib.ClipKMaXEvaluator(
      strategy=experiment.strategy, model=experiment.model,
      post_processor=builder.build_post_processor(config, eval_descriptor),
      eval_dataset=dataset, scorer_fn=make_scorer_fn(config, eval_descriptor),
      global_step=experiment.global_step,
      output_dir=os.path.join(experiment.run_dir, 'eval'), log_fn=log_fn)


def build_trainer(experiment: Experiment, optimizers, log_fn=print) -> trainer_lib.ClipKMaXTrainer:
  config = experiment.config
  options = config.train_dataset_options
  solver = config.trainer_options.solver_options
  strategy = experiment.strategy
  if options.batch_size % strategy.num_replicas_in_sync:
    raise ValueError(f'train_dataset_options.batch_size {options.batch_size} does not divide '
                     f'over {strategy.num_replicas_in_sync} replicas')

  def dataset_fn(input_context: tf.distribute.InputContext) -> tf.data.Dataset:
    dataset = data_lib.build_train_dataset(
        options, experiment.descriptor,
        input_context.get_per_replica_batch_size(options.batch_size))
    if input_context.num_input_pipelines > 1:
      dataset = dataset.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    return dataset

  dataset = strategy.distribute_datasets_from_function(dataset_fn)
  loss = builder.build_loss(config, experiment.descriptor)
  all_variables = [v for _, group in optimizers for v in group]
  schedule = optimizer_builder.build_learning_rate(solver)
  return trainer_lib.ClipKMaXTrainer(
      strategy=strategy, model=experiment.model, loss_fn=loss, optimizers=optimizers,
      train_dataset=dataset, global_batch_size=options.batch_size,
      global_step=experiment.global_step, total_steps=solver.training_number_of_steps,
      clip_gradient_norm=solver.clip_gradient_norm if solver.use_gradient_clipping else None,
      regularization_fn=lambda: optimizer_builder.l2_regularization(solver, all_variables),
      learning_rate_fn=schedule, log_fn=log_fn)


def run_experiment(mode: str, config: config_pb2.ExperimentOptions, model_dir: str,
                   strategy: Optional[tf.distribute.Strategy] = None,
                   log_fn=print) -> Optional[Dict[str, float]]:
  """Runs `mode` of the experiment `config` under `model_dir`.

  Returns:
    The last evaluation's metrics (eval modes), else None.

  Raises:
    ValueError: an unknown mode, a data problem, or `eval`/`export` without a
      checkpoint in the run directory.
  """
  if mode not in MODES:
    raise ValueError(f'mode must be one of {", ".join(MODES)}; got "{mode}"')
  experiment = build_experiment(config, model_dir, strategy)
  os.makedirs(experiment.run_dir, exist_ok=True)
  with open(os.path.join(experiment.run_dir, 'config.textproto'), 'w') as f:
    f.write(str(config))
  trainer_options = config.trainer_options
  solver = trainer_options.solver_options
  has_train = mode in ('train', 'train_and_eval')
  has_eval = mode in ('eval', 'train_and_eval', 'continuous_eval')
  optimizers = build_optimizers(experiment) if has_train else []
  checkpoint = tf.train.Checkpoint(**_checkpoint_items(experiment, optimizers))
  manager = tf.train.CheckpointManager(
      checkpoint, experiment.run_dir, max_to_keep=trainer_options.num_checkpoints_to_keep,
      step_counter=experiment.global_step,
      checkpoint_interval=trainer_options.save_checkpoints_steps,
      init_fn=_initial_checkpoint_fn(experiment, log_fn) if has_train else None)
  if mode in ('eval', 'export') and manager.latest_checkpoint is None:
    raise ValueError(f'--mode={mode} needs a checkpoint in {experiment.run_dir}; none found '
                     '(train first, or point --model_dir at a trained run)')
  controller = orbit.Controller(
      strategy=experiment.strategy,
      trainer=build_trainer(experiment, optimizers, log_fn) if has_train else None,
      evaluator=build_evaluator(experiment, log_fn) if has_eval else None,
      global_step=experiment.global_step,
      steps_per_loop=trainer_options.steps_per_loop,
      checkpoint_manager=manager,
      summary_interval=trainer_options.save_summaries_steps if has_train else None,
      summary_dir=os.path.join(experiment.run_dir, 'train'),
      eval_summary_dir=os.path.join(experiment.run_dir, 'eval'))
  total_steps = solver.training_number_of_steps
  result = None
  if mode == 'train':
    controller.train(steps=total_steps)
  elif mode == 'eval':
    result = controller.evaluate(steps=-1)
  elif mode == 'train_and_eval':
    result = controller.train_and_evaluate(
        train_steps=total_steps, eval_steps=-1,
        eval_interval=config.evaluator_options.eval_interval)
  elif mode == 'continuous_eval':
    for result in _continuous_eval(controller, experiment, manager, total_steps):
      pass
  if mode in ('train_and_eval', 'export'):
    export_dir = os.path.join(experiment.run_dir, 'export')
    export_model.export_saved_model(experiment.model, builder.build_post_processor(
        config, data_lib.dataset_descriptor(config.eval_dataset_options)), config, export_dir)
    log_fn(f'exported SavedModel to {export_dir}')
  if result is not None:
    result = {k: float(v) for k, v in result.items()}
    with open(os.path.join(experiment.run_dir, 'eval', 'latest_metrics.json'), 'w') as f:
      json.dump(result, f, indent=2)
  return result


def _continuous_eval(controller, experiment, manager, total_steps):
  """Evaluates each new checkpoint until the last step's or the timeout."""
  timeout = experiment.config.evaluator_options.continuous_eval_timeout
  for path in tf.train.checkpoints_iterator(experiment.run_dir, timeout=timeout):
    manager.checkpoint.restore(path).expect_partial()
    yield controller.evaluate(steps=-1)
    if int(experiment.global_step.numpy()) >= total_steps:
      return
