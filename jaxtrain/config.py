"""Configs: the defaults every config starts from, loading with overrides, validation, durations.

Every key a config may use exists in `defaults()`, so an override of a misspelled key is caught (with the
closest name suggested) instead of being silently ignored, and ml_collections' type safety rejects a value of
the wrong type. `validate` then checks ranges and combinations; names of optimizers, models, ... are checked
by the registry that owns them (`lookup`), so the list of allowed names is written once.
"""

import contextlib
import difflib
import importlib.util
import pathlib
import re
import traceback
from collections.abc import Collection, Mapping

import ml_collections


class ConfigError(ValueError):
  """A config, data set or workdir a run cannot start with; the CLI prints it as one `error:` line."""


# logging.writers: the trackers (jaxtrain/callbacks/trackers.py) and the package each needs, by extra.
TRACKERS = {'wandb': 'wandb', 'mlflow': 'mlflow'}
# The doctor's groups of checks (diagnostics/doctor.py) and its optional comparisons.
DOCTOR_CHECKS = ('data', 'init', 'training', 'learning_rate', 'baselines', 'curves')
DOCTOR_COMPARISONS = ('', 'regularization', 'norm')


def defaults() -> ml_collections.ConfigDict:
  """The complete set of keys; configs in `configs/` override a few of them."""
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.data = ml_collections.ConfigDict()
  # A zoo name, 'tfds:<any TFDS name>', 'array_record:<folder>' (train*/validation*/test*.array_record
  # written by jaxtrain.data.records.write), text: 'python_docs' or 'text:<glob>', or 'my_pkg.data:load'.
  c.data.name = 'digits'
  c.data.data_dir = ''  # '' = TFDS's default folder under the user's home (or $TFDS_DATA_DIR).
  c.data.batch_size = 64  # Global batch size, split across devices.
  c.data.eval_batch_size = 256
  c.data.validation_fraction = 0.0  # Carved from the end of the train split; eval/ uses it when > 0.
  c.data.stats_max_examples = 50_000  # Normalization statistics use at most this many training examples.
  c.data.prefetch = 2  # Chunks of batches placed on the device ahead of the steps that need them.
  c.data.image_size = 224  # Side images of varying size (imagenet2012) are resized and centre-cropped to.
  c.data.augment = 'none'  # On-device, per step: none|flip|crop|crop_flip|random_resized_crop.
  c.data.crop_padding = 4  # crop, crop_flip: pad by this much, then crop back to the original size ...
  c.data.crop_pad_mode = 'reflect'  # ... padding with reflect|zero.
  c.data.crop_min_scale = 0.08  # random_resized_crop: smallest area fraction of a crop (ratio 3/4..4/3).
  c.data.classes = ()  # Keep only these labels in every split (e.g. (5, 6, 7, 8, 9)); () = all.
  c.data.train_fraction = 1.0  # Train on this fraction of the training split (a fixed random subset).
  c.data.normalize = ('image',)  # Keys normalized by training-split mean/std per channel; others pass as-is.
  # Splits decoded into memory (true), read from disk batch by batch (false: streamed), or 'auto': in memory
  # when the decoded data fit in jaxtrain.data.sources.IN_MEMORY_BYTES.
  c.data.in_memory = 'auto'
  c.data.workers = 0  # Grain worker processes that read and decode streamed batches; 0 = this process.
  # Text (data.name 'python_docs', 'text:<glob>', a TFDS text set): tokenized once into packed sequences.
  c.data.tokenizer = 'bytes'  # bytes (built in) | sentencepiece:<model file> | huggingface:<tokenizer.json>.
  c.data.seq_len = 128  # Tokens per packed sequence.

  c.model = ml_collections.ConfigDict()
  c.model.name = 'cnn'  # A zoo name, or an import path 'my_pkg.nets:TinyNet' (Linen or NNX), built ...
  c.model.kwargs = ml_collections.ConfigDict()  # ... with these keyword arguments.
  c.model.inputs = ('image',)  # Batch keys passed to the model, positionally.
  c.model.features = (32, 64)  # Hidden widths (mlp) or channels per stage (cnn, vgg) or level (unet).
  c.model.head_features = (128,)  # Dense layers between the pooled features and the classifier (cnn, vgg).
  c.model.kernel_size = 3
  c.model.activation = 'relu'
  c.model.kernel_init = 'auto'
  c.model.bias_init = 'zeros'
  c.model.norm = 'none'
  c.model.dropout = 0.0
  c.model.spatial_dropout = False  # Conv layers drop whole channels (Dropout2d) instead of single units.
  c.model.pooling = 'max'  # Downsampling after each conv stage.
  c.model.head_pooling = 'flatten'  # How the last feature map becomes a vector: flatten|avg|max|attention.
  c.model.remat = 'none'  # none|full|dots_saveable: recompute block activations in the backward pass.
  c.model.dtype = 'float32'  # Compute dtype: float32|bfloat16; parameters and logits stay float32.
  c.model.stage_depths = (2, 2)  # vgg: convs per stage, one number per entry of model.features.
  c.model.width = 64  # resnet: channels of the first stage, doubled per stage; vit: the token width.
  c.model.stem = 'auto'  # resnet: cifar (3x3 conv) | imagenet (7x7/2 conv, max pool) | auto (by image side).
  c.model.zero_init_residual = False  # resnet: each residual branch starts at zero (its last norm scale).
  c.model.patch_size = 4  # vit: side of the square patches that become tokens.
  c.model.num_layers = 6  # vit: encoder blocks.
  c.model.num_heads = 4  # vit: attention heads; model.width must divide by it.
  c.model.mlp_dim = 256  # vit: hidden width of each block's MLP (ViT-B: 3072 = 4 x width).
  c.model.vit_pooling = 'token'  # vit: token (class token) | avg (mean of tokens) | attention.
  c.model.max_len = 256  # gpt: the longest sequence (learned positions, KV cache); >= data.seq_len.
  c.model.positions = 'learned'  # gpt: learned | rotary.
  c.model.tie_embeddings = True  # gpt: the output layer is the token embedding, transposed.

  c.task = ml_collections.ConfigDict()
  # classification|binary|multilabel|regression|segmentation, or 'my_pkg.losses:focal' (a Task or a loss).
  c.task.name = 'classification'
  c.task.label_smoothing = 0.0  # Softmax/sigmoid targets move this fraction towards uniform.

  # --mode generate (jaxtrain/generation.py): text from a trained language model, with a KV cache.
  c.generate = ml_collections.ConfigDict()
  c.generate.prompt = ''
  c.generate.max_tokens = 200
  c.generate.temperature = 0.8  # 0 = greedy (deterministic).
  c.generate.top_k = 0  # > 0: sample among the k likeliest tokens only.

  # --mode predict (jaxtrain/serving.py): outputs for these stored inputs (.npy: the first of model.inputs;
  # .npz: by key) into workdir/predictions.npy. --mode export writes workdir/export/.
  c.predict = ml_collections.ConfigDict()
  c.predict.input = ''

  c.optim = ml_collections.ConfigDict()
  c.optim.name = 'adam'
  c.optim.lr = 3e-4
  c.optim.momentum = 0.9  # momentum, nesterov.
  c.optim.beta1 = 0.9  # adam, adamw.
  c.optim.beta2 = 0.999
  c.optim.decay = 0.9  # Moving-average decay of rmsprop and adadelta.
  c.optim.eps = 1e-8
  c.optim.schedule = 'constant'
  c.optim.warmup_steps = 0
  c.optim.decay_boundaries = (0.5, 0.75)  # step: fractions of training where the LR is multiplied ...
  c.optim.decay_factor = 0.1  # ... by this factor; exponential: the LR at the end is lr * decay_factor.
  c.optim.cycles = 4  # sgdr: number of cosine cycles (restarts).
  c.optim.plateau_patience = 3  # plateau: the LR drops at this many evaluations without improvement ...
  c.optim.plateau_factor = 0.5  # ... by this factor.
  c.optim.weight_decay = 0.0  # Decoupled (AdamW-style), kernels only.
  c.optim.l1 = 0.0  # Penalties added to the loss, kernels only.
  c.optim.l2 = 0.0
  c.optim.clip_norm = 0.0  # 0 = off.
  c.optim.clip_value = 0.0
  c.optim.accumulate_steps = 1  # Micro-batches per step: the batch is split, gradients summed in-graph.
  c.optim.ema_decay = 0.0  # Moving average of the parameters (e.g. 0.999); 0 = off. Saved in checkpoints.
  c.optim.ema_eval = True  # With ema_decay > 0, evaluate (and test) the averaged parameters.
  # Per-parameter rules by regex on paths such as 'params/Block_0/Conv_0/kernel' (re.fullmatch; a table of
  # which rule hit which parameter is logged; a regex that matches nothing is an error).
  c.optim.freeze = ()  # e.g. ('params/Block_0/.*',): never updated, nor their BatchNorm statistics.
  c.optim.lr_multipliers = ()  # e.g. ('params/head/.*=10', 'params/Block_.*=0.1'); the first match wins.

  c.train = ml_collections.ConfigDict()
  c.train.num_epochs = 1  # Like Keras's fit(epochs=1): a config or fit(config=None) always has a duration.
  c.train.num_steps = 0  # > 0 takes precedence over num_epochs.
  c.train.eval_every_steps = 0  # 0 = at the end of every epoch.
  c.train.log_every_steps = 50
  c.train.progress_bar = True  # Shown only when stdout is a terminal or a notebook.

  # Experiment trackers besides metrics.jsonl and TensorBoard (jaxtrain/callbacks/trackers.py).
  c.logging = ml_collections.ConfigDict()
  c.logging.writers = ()  # 'wandb', 'mlflow' (extras of the same names).
  c.logging.project = 'jaxtrain'  # W&B project, MLflow experiment.
  c.logging.wandb_mode = 'online'  # online|offline (workdir/wandb/, `wandb sync` later)|disabled.
  c.logging.mlflow_uri = ''  # A tracking URI (sqlite:///..., http://...); '' = sqlite:///<workdir>/mlflow.db.
  c.train.nonfinite = 'halt'  # A non-finite loss or gradient: 'halt' (exit 1) or 'skip' the update.
  c.train.max_consecutive_skips = 10  # 'skip' halts after this many non-finite steps in a row.

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every_steps = 0  # 0 = at the end of every epoch.
  c.checkpoint.epoch_end = False  # With every_steps > 0, also save at the end of every epoch.
  c.checkpoint.keep = 3  # The newest checkpoints kept ...
  c.checkpoint.keep_best = 1  # ... plus the best ones by `monitor` (saved at every evaluation that improves).
  c.checkpoint.monitor = 'eval/loss'  # The metric that picks `best_step` in summary.json.
  c.checkpoint.mode = 'min'
  c.checkpoint.restore_from = ''  # A workdir or checkpoint folder to start from when this one has none.
  c.checkpoint.snapshots = False  # sgdr: also keep the state at each cycle's end in snapshots/ (ensembles).

  # Transfer learning: a fresh run starts from another run's parameters and BatchNorm statistics (matched by
  # path and shape; the rest keeps its initialization). A workdir or checkpoint folder, a .safetensors file of
  # variables (--mode export's), or torchvision's weights: 'torchvision:<resnet18|resnet34|resnet50|
  # vit_b_16>:<file.pth or .safetensors>' (jaxtrain/weights/). '' = off.
  c.init_from = ''

  c.early_stopping = ml_collections.ConfigDict()
  c.early_stopping.monitor = 'eval/loss'
  c.early_stopping.mode = 'min'
  c.early_stopping.patience = 0  # Evaluations without an improvement of more than min_delta; 0 = off.
  c.early_stopping.min_delta = 0.0
  # Time to quality (MLPerf): stop at the first evaluation where this holds, e.g. 'eval/accuracy>=0.98'
  # (>=, >, <=, <); summary.json records target_reached_step and target_reached_s. '' = off.
  c.early_stopping.target = ''

  c.parallel = ml_collections.ConfigDict()
  c.parallel.strategy = 'auto'  # auto|single|mesh|pmap (jaxtrain/parallel.py).
  # mesh: -1 = the remaining devices; model > 1 splits vit's and gpt's attention and MLP (tensor parallel).
  c.parallel.mesh = ml_collections.ConfigDict({'data': -1, 'fsdp': 1, 'model': 1})
  c.parallel.fsdp_min_size = 4096  # Under fsdp > 1, arrays with fewer elements stay replicated.

  # --mode sweep (jaxtrain/experiments/sweep.py): Optuna trials, each a normal run in workdir/trials/<n>/.
  c.sweep = ml_collections.ConfigDict()
  # The search space as 'key=spec' strings: uniform(a, b), loguniform(a, b), int(a, b), choice(x, y, ...),
  # grid(x, y, ...), e.g. ('optim.lr=loguniform(1e-4, 1e-1)', 'optim.name=grid(adam, sgd)').
  c.sweep.space = ()
  c.sweep.metric = 'eval/accuracy'  # Read from the trial's final metrics; eval/* can prune.
  c.sweep.mode = 'max'
  c.sweep.num_trials = 0  # Trials in the whole study (all processes); 0 = the grid's size (sampler grid).
  c.sweep.sampler = 'random'  # grid|random|tpe.
  c.sweep.pruner = 'none'  # none|median|successive_halving, on each evaluation of `metric`.
  c.sweep.startup_trials = 2  # median: trials run to the end before any is pruned.
  # An Optuna storage URL shared by processes, e.g. postgresql+psycopg2://user:pw@host/db (pip install -e
  # '.[postgres]'); '' = sqlite:///<workdir>/sweep.db.
  c.sweep.storage = ''
  c.sweep.study_name = 'sweep'

  # Populations (jaxtrain/experiments/population.py): population.size members trained at once, vmapped.
  # Per-member values; () = the run's own value for every member.
  c.population = ml_collections.ConfigDict()
  c.population.size = 1
  c.population.lr = ()
  c.population.weight_decay = ()
  c.population.seed = ()  # Initialization and dropout; the data order follows `seed`.

  # --mode eval of an ensemble (jaxtrain/experiments/ensemble.py): the averaged probabilities of these runs.
  c.ensemble = ml_collections.ConfigDict()
  c.ensemble.members = ()  # Workdirs, e.g. ('runs/seed0', 'runs/seed1', 'runs/seed2').

  # JAX's persistent compilation cache (jaxtrain/compile_cache.py): a new process loads what an earlier one
  # compiled instead of compiling it again.
  c.compile_cache = ml_collections.ConfigDict()
  c.compile_cache.enabled = True
  c.compile_cache.dir = ''  # '' = $XDG_CACHE_HOME/jaxtrain/jax_compile_cache (default ~/.cache/jaxtrain/...).

  # Throughput and memory (jaxtrain/perf.py): train/mfu needs a peak; a step that needs more memory than the
  # device has stops before step 1 with the figures.
  c.perf = ml_collections.ConfigDict()
  c.perf.peak_flops = 0.0  # FLOP/s of one device; 0 = perf.PEAK_FLOPS by device kind (none for CPUs).
  c.perf.device_memory = 0  # Bytes a step may use per device; 0 = what the device reports (CPUs: none).

  # A jax.profiler trace of these steps in workdir/profile/ (TensorBoard's profile plugin, Perfetto).
  c.profile = ml_collections.ConfigDict()
  c.profile.start_step = 0  # The first traced step; 0 = no trace.
  c.profile.num_steps = 5

  # In-graph per-layer statistics during training, logged as diag/... (jaxtrain/diagnostics/training.py).
  c.diagnostics = ml_collections.ConfigDict()
  c.diagnostics.every_steps = 0  # 0 = off; other steps run the plain step and pay nothing.
  # plots/batch.png at the start; at the end the baselines next to the final metrics, the confusion matrix
  # (summary.json, plots/confusion.png) and the worst eval examples (plots/examples.png).
  c.diagnostics.report = True
  # Predictions on this many fixed eval examples at every evaluation: dynamics.jsonl, plots/dynamics.png.
  c.diagnostics.fixed_batch = 0

  # --mode doctor: checks the model, data and optimizer before a long run (jaxtrain/diagnostics/doctor.py).
  c.doctor = ml_collections.ConfigDict()
  c.doctor.probe_examples = 256  # Training examples for the initial loss, gradients and activations.
  c.doctor.overfit_steps = 100  # Steps on one batch (regularization off) that must memorize it.
  c.doctor.overfit_examples = 0  # The size of that batch; 0 = data.batch_size (rounded up to the devices).
  c.doctor.flow_steps = 10  # Gradients and activations are measured at init and after this many steps.
  c.doctor.lr_find_steps = 60  # Length of the doctor's short LR range test (lr_find.min_lr to max_lr).
  c.doctor.baseline_steps = 100  # Steps of the input-independent baseline and of its twin with inputs.
  # The groups of checks to run (see DOCTOR_CHECKS); leave one out to save its time.
  c.doctor.checks = DOCTOR_CHECKS
  # ''|regularization|norm: also train briefly with and without the regularization (dropout, weight decay,
  # L1/L2, augmentation, label smoothing) or BatchNorm, and compare (the slow check, only when asked).
  c.doctor.compare = ''
  c.doctor.compare_steps = 300

  # --mode lr_find: Leslie Smith's learning-rate range test (jaxtrain/diagnostics/lr_find.py).
  c.lr_find = ml_collections.ConfigDict()
  c.lr_find.min_lr = 1e-7
  c.lr_find.max_lr = 10.0
  c.lr_find.num_steps = 100  # The rate grows exponentially from min_lr to max_lr over these steps.
  c.lr_find.smoothing = 0.9  # Of the loss's moving average; 0 = raw losses.
  c.lr_find.diverge_factor = 4.0  # Stop once the smoothed loss exceeds this times its best.
  c.lr_find.parallel = False  # True: num_parallel runs at fixed rates at once (vmapped), num_steps each.
  c.lr_find.num_parallel = 8
  return c


def lookup(registry: Mapping | Collection[str], key: str, name: str):
  """`registry[name]` (or `name` for a plain collection of choices), else a ConfigError naming the key
  and listing the allowed names."""
  if name not in registry:
    raise ConfigError(f'{key}={name!r} is not known; choose one of: {", ".join(sorted(registry))}')
  return registry[name] if isinstance(registry, Mapping) else name


def flatten(tree: Mapping, prefix: str = '') -> dict:
  """{'optim': {'lr': 0.1}} (a dict or ConfigDict) -> {'optim.lr': 0.1}."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, (Mapping, ml_collections.ConfigDict)):
      flat.update(flatten(value, f'{prefix}{key}.'))
    else:
      flat[prefix + key] = value
  return flat


def _sections(tree, prefix: str = ''):
  """Every section's dotted path, empty ones too ('model.kwargs' before any keyword is set)."""
  for key, value in tree.items():
    if isinstance(value, (Mapping, ml_collections.ConfigDict)):
      yield prefix + key
      yield from _sections(value, f'{prefix}{key}.')


def check_key(config: ml_collections.ConfigDict, key: str) -> None:
  """Raises a ConfigError with the closest known key when `key` is not in `config`."""
  keys = list(flatten(config))
  sections = set(_sections(config))
  if key in keys or key in sections:
    return
  close = difflib.get_close_matches(key, keys, n=1, cutoff=0.5)
  hint = f"; did you mean '{close[0]}'?" if close else '; see jaxtrain/config.py for the keys'
  raise ConfigError(f"unknown config key '{key}'{hint}")


def override(config: ml_collections.ConfigDict, overrides: Mapping[str, object]) -> None:
  """Sets dotted keys in place with the same checks as the command line."""
  for key, value in overrides.items():
    check_key(config, key)
    parent, _, leaf = key.rpartition('.')
    node = config
    for part in parent.split('.') if parent else []:
      node = node[part]
    old = node[leaf]
    if isinstance(old, tuple) and isinstance(value, list):
      value = tuple(value)
    try:
      node[leaf] = value
    except TypeError:
      raise ConfigError(
          f'{key}={value!r} has the wrong type: expected {type(old).__name__}') from None


def load_config(path: str | pathlib.Path, overrides: Mapping[str, object] | None = None):
  """Loads `get_config()` from a config file and applies `{'optim.lr': 1e-3, ...}` overrides."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise ConfigError(f'config file {str(path)!r} does not exist; try configs/digits_cnn.py')
  spec = importlib.util.spec_from_file_location(f'jaxtrain_config_{path.stem}', path)
  module = importlib.util.module_from_spec(spec)
  with _config_file_errors(path):
    spec.loader.exec_module(module)
    if not hasattr(module, 'get_config'):
      raise ConfigError(f'config file {str(path)!r} defines no get_config()')
    config = module.get_config()
  override(config, overrides or {})
  return config


@contextlib.contextmanager
def _config_file_errors(path: pathlib.Path):
  """A config file is code: whatever it raises (a typo, a missing import) becomes a ConfigError naming the
  file, the line and the exception, instead of a traceback through jaxtrain."""
  try:
    yield
  except ConfigError:
    raise
  except Exception as e:  # noqa: BLE001 - anything a user's file can raise.
    lines = [frame.lineno for frame in traceback.extract_tb(e.__traceback__)
             if pathlib.Path(frame.filename).resolve() == path.resolve()]
    line = getattr(e, 'lineno', None) if isinstance(e, SyntaxError) else (lines[-1] if lines else None)
    where = f' at line {line}' if line else ''
    raise ConfigError(f'config file {str(path)!r} raised {type(e).__name__}{where}: {e}; fix the '
                      'file') from None


def _check_range(config, keys: tuple[str, ...], ok, allowed: str) -> None:
  """Raises a ConfigError for the first of `keys` whose value fails `ok`."""
  for key in keys:
    section, leaf = key.split('.')
    value = config[section][leaf]
    if not ok(value):
      raise ConfigError(f'{key}={value!r} is out of range; {allowed}')


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks ranges and combinations; raises a ConfigError on the first mistake."""
  _check_range(config, ('data.batch_size', 'data.eval_batch_size', 'train.log_every_steps',
                        'checkpoint.keep', 'optim.cycles', 'model.kernel_size',
                        'data.stats_max_examples', 'optim.plateau_patience',
                        'train.max_consecutive_skips', 'optim.accumulate_steps'), lambda v: v >= 1,
               'it must be >= 1')
  _check_range(config, ('train.num_epochs', 'train.num_steps', 'train.eval_every_steps',
                        'checkpoint.every_steps', 'optim.warmup_steps', 'optim.weight_decay',
                        'optim.l1', 'optim.l2', 'optim.clip_norm', 'optim.clip_value',
                        'data.prefetch', 'checkpoint.keep_best', 'diagnostics.every_steps', 'data.workers',
                        'generate.temperature', 'generate.top_k',
                        'early_stopping.patience', 'early_stopping.min_delta'), lambda v: v >= 0,
               'it must be >= 0')
  _check_range(config, ('optim.lr',), lambda v: v > 0, 'the learning rate must be > 0')
  _check_range(config, ('model.dropout',), lambda v: 0 <= v < 1,
               'a dropout rate must be in [0, 1)')
  _check_range(config, ('task.label_smoothing',), lambda v: 0 <= v < 1, 'it must be in [0, 1)')
  _check_range(config, ('data.crop_min_scale',), lambda v: 0 < v <= 1, 'it must be in (0, 1]')
  _check_range(config, ('data.validation_fraction', 'optim.momentum', 'optim.beta1', 'optim.ema_decay',
                        'optim.beta2', 'optim.decay'), lambda v: 0 <= v < 1, 'it must be in [0, 1)')
  _check_range(config, ('optim.decay_factor',), lambda v: 0 < v <= 1, 'it must be in (0, 1]')
  # reduce_on_plateau with patience 0 lowers the LR on every improvement, and rejects a factor of 1.
  _check_range(config, ('optim.plateau_factor',), lambda v: 0 < v < 1, 'it must be in (0, 1)')
  _check_range(config, ('optim.decay_boundaries',),
               lambda b: all(0 < x < 1 for x in b) and list(b) == sorted(b),
               'give increasing fractions of training in (0, 1), e.g. (0.5, 0.75)')
  _check_range(config, ('checkpoint.mode', 'early_stopping.mode'), lambda m: m in ('min', 'max'),
               "choose 'min' or 'max'")
  _check_range(config, ('train.nonfinite',), lambda m: m in ('halt', 'skip'), "choose 'halt' or 'skip'")
  _check_range(config, ('logging.wandb_mode',), lambda m: m in ('online', 'offline', 'disabled'),
               "choose 'online', 'offline' or 'disabled'")
  for name in config.logging.writers:
    package = lookup(TRACKERS, 'logging.writers', name)
    if importlib.util.find_spec(package) is None:
      raise ConfigError(f"logging.writers names {name!r} but {package} is not installed; pip install "
                        f"-e '.[{name}]'")
  if config.early_stopping.target:
    parse_target(config.early_stopping.target)
    if config.population.size > 1:
      raise ConfigError('early_stopping.target stops a single run; a population (population.size > 1) '
                        'trains its members to the end: set one or the other')
  _check_range(config, ('data.in_memory',), lambda m: m in ('auto', 'true', 'false'),
               "choose 'auto', 'true' or 'false'")
  _check_range(config, ('data.seq_len', 'model.max_len', 'generate.max_tokens'), lambda v: v >= 2,
               'it must be >= 2')
  if config.data.batch_size % config.optim.accumulate_steps:
    raise ConfigError(f'data.batch_size={config.data.batch_size} does not split into '
                      f'optim.accumulate_steps={config.optim.accumulate_steps} equal micro-batches; '
                      'use a batch size that is a multiple of it')
  if config.task.name == 'segmentation' and config.data.augment != 'none':
    raise ConfigError(f"data.augment={config.data.augment!r} moves the image but not its per-pixel labels; "
                      "use --config.data.augment=none with task.name='segmentation'")
  if config.early_stopping.patience and not config.checkpoint.keep_best:
    raise ConfigError('early_stopping.patience > 0 returns the best checkpoint, but checkpoint.keep_best=0 '
                      'keeps none; set --config.checkpoint.keep_best=1')
  _check_range(config, ('doctor.probe_examples', 'doctor.overfit_steps', 'doctor.flow_steps'),
               lambda v: v >= 1, 'it must be >= 1')
  _check_range(config, ('doctor.flow_steps',), lambda v: v <= config.doctor.overfit_steps,
               f'it must be <= doctor.overfit_steps={config.doctor.overfit_steps}')
  _check_range(config, ('doctor.baseline_steps', 'doctor.compare_steps'), lambda v: v >= 1, 'it must be >= 1')
  _check_range(config, ('doctor.overfit_examples', 'perf.peak_flops', 'perf.device_memory',
                        'profile.start_step'), lambda v: v >= 0, 'it must be >= 0')
  _check_range(config, ('profile.num_steps',), lambda v: v >= 1, 'it must be >= 1')
  _check_range(config, ('doctor.checks',), lambda v: set(v) <= set(DOCTOR_CHECKS),
               f'choose among {", ".join(DOCTOR_CHECKS)}')
  _check_range(config, ('doctor.compare',), lambda v: v in DOCTOR_COMPARISONS,
               "choose '' (none), 'regularization' or 'norm'")
  _check_range(config, ('diagnostics.fixed_batch',), lambda v: 0 <= v <= config.data.eval_batch_size,
               f'it must be in 0..data.eval_batch_size={config.data.eval_batch_size}')
  _check_range(config, ('doctor.lr_find_steps', 'lr_find.num_steps', 'lr_find.num_parallel'),
               lambda v: v >= 2, 'it must be >= 2')
  _check_range(config, ('lr_find.min_lr',), lambda v: v > 0, 'it must be > 0')
  _check_range(config, ('lr_find.max_lr',), lambda v: v > config.lr_find.min_lr,
               f'it must be > lr_find.min_lr={config.lr_find.min_lr}')
  _check_range(config, ('lr_find.smoothing',), lambda v: 0 <= v < 1, 'it must be in [0, 1)')
  _check_range(config, ('lr_find.diverge_factor',), lambda v: v > 1, 'it must be > 1')
  _check_range(config, ('data.train_fraction',), lambda v: 0 < v <= 1, 'it must be in (0, 1]')
  _check_range(config, ('population.size',), lambda v: v >= 1, 'it must be >= 1')
  if config.checkpoint.snapshots and config.optim.schedule != 'sgdr':
    raise ConfigError(f'checkpoint.snapshots=True saves a snapshot at the end of each sgdr cycle, but '
                      f"optim.schedule={config.optim.schedule!r}; use --config.optim.schedule=sgdr")
  if config.population.size > 1 and config.diagnostics.every_steps:
    raise ConfigError('diagnostics.every_steps > 0 is not supported with population.size > 1 (per-layer '
                      'statistics are per run); set --config.diagnostics.every_steps=0')
  if config.population.size > 1 and config.diagnostics.fixed_batch:
    raise ConfigError('diagnostics.fixed_batch > 0 follows the predictions of one run, not of a population '
                      '(population.size > 1); set --config.diagnostics.fixed_batch=0')
  for key in ('population.lr', 'population.weight_decay', 'population.seed'):
    values = config.population[key.split('.')[1]]
    if values and len(values) != config.population.size:
      raise ConfigError(f'{key} has {len(values)} values but population.size={config.population.size}; '
                        'give one per member or () for the run\'s own value')
  if not config.model.features:
    raise ConfigError('model.features is empty; give at least one width, e.g. (32, 64)')
  if config.train.num_steps <= 0 and config.train.num_epochs <= 0:
    raise ConfigError('neither train.num_epochs nor train.num_steps is set; '
                      'set one, e.g. --config.train.num_steps=500')


_TARGET = re.compile(r'\s*([\w/]+)\s*(>=|<=|>|<)\s*([-+.\deE]+)\s*')


def parse_target(target: str) -> tuple[str, str, float]:
  """'eval/accuracy>=0.98' -> ('eval/accuracy', '>=', 0.98); a ConfigError says the form."""
  match = _TARGET.fullmatch(target)
  try:
    return match[1], match[2], float(match[3])
  except (TypeError, ValueError):
    raise ConfigError(f'early_stopping.target={target!r} is not <metric><op><value>; write e.g. '
                      "'eval/accuracy>=0.98' (op: >=, >, <=, <)") from None


def check_monitors(config: ml_collections.ConfigDict, produced: Collection[str]) -> None:
  """Every metric a config watches must be one that evaluation produces (`produced`: 'eval/loss', ...)."""
  watched = {'checkpoint.monitor': config.checkpoint.monitor,
             'early_stopping.monitor': config.early_stopping.monitor}
  if config.early_stopping.target:
    watched['early_stopping.target'] = parse_target(config.early_stopping.target)[0]
  if config.sweep.space:
    watched['sweep.metric'] = config.sweep.metric
  for key, name in watched.items():
    allowed = produced if key != 'sweep.metric' else {*produced, *(f'test/{m[5:]}' for m in produced)}
    if name not in allowed:
      raise ConfigError(f'{key}={name!r} is not a metric this run reports; choose one of: '
                        f'{", ".join(sorted(allowed))}')


def total_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
  """The one conversion from the user's duration (epochs or steps) to optimizer steps."""
  if config.train.num_steps > 0:
    return config.train.num_steps
  return config.train.num_epochs * steps_per_epoch


def every(period: int, step: int, total: int) -> bool:
  """Whether something done every `period` steps (and always at the last step) is due after `step`."""
  return step == total or (period > 0 and step % period == 0)

