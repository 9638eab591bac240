"""The training doctor: the sanity checks of notes 002-004, run on the configured model and data.

Networks fail silently (note 004): a wrong loss, a bad initialization or learning rate still trains, just
badly. Before a long run the doctor measures, in seconds, what gives these bugs away, and grades each
measurement against what a healthy run shows: `pass`, `warn` or `fail`, with advice. Training-style
measurements use the configured model and optimizer with regularization off (dropout, weight decay, L1, L2)
at the configured peak learning rate held constant, as note 004 prescribes for overfitting one batch; the
short LR range test and the baselines reuse that compiled step. Dropout is turned off through the model
adapter (`Model.without_dropout`), so the checks run the same on a user's Linen or NNX model as on the zoo's.

The checks come in groups (`doctor.checks`, see `GROUPS`); `doctor.compare` adds a slower comparison of
training with and without regularization or BatchNorm (diagnostics/comparison.py). Only doctor.json and
plots (gradient_flow.png, batch.png) are written.
"""

import dataclasses
import math
import pathlib

import jax
import ml_collections
import numpy as np

from jaxtrain import data, evaluation, steps, tasks
from jaxtrain.config import ConfigError
from jaxtrain.diagnostics import baselines, comparison, curves, experiment, lr_find, plots, stats, views
from jaxtrain.diagnostics.checks import Check, skipped, status
from jaxtrain.history import read_metrics
from jaxtrain.state import variables

RESULT_FILE = 'doctor.json'
PLOT_FILE = 'plots/gradient_flow.png'


def _worst(per_layer: dict[str, float], largest: bool = True) -> tuple[str, float]:
  name = (max if largest else min)(per_layer, key=per_layer.get)
  return name, per_layer[name]


def chance_loss(task_name: str, num_classes: int) -> float | None:
  """The loss of a model that finds every answer equally likely (note 003: log C for a softmax over C
  classes; log 2 per label for sigmoid tasks); None for regression, whose loss has no chance level."""
  return {'classification': math.log(num_classes), 'segmentation': math.log(num_classes),
          'language_modeling': math.log(num_classes),  # Uniform over the vocabulary.
          'binary': math.log(2), 'multilabel': math.log(2)}.get(task_name)


def check_initial_loss(loss: float, chance: float) -> Check:
  """Before training the loss should be the chance loss: every answer equally likely (note 003)."""
  ratio = loss / chance if math.isfinite(loss) else math.inf
  advice = ('' if 0.7 <= ratio <= 1.5 else
            'Below chance before any training: check that the labels do not leak into the inputs, and '
            'whether the loss is numerically broken (see exploding_gradients).' if ratio < 0.7 else
            'Far above chance: activations explode from the initialization; use model.kernel_init=auto '
            '(He for ReLU, Glorot for tanh/sigmoid) and look at exploding_gradients.' if ratio > 3 else
            'The untrained model is confidently wrong: its logits start too large. Initialize the last '
            'layer smaller (a smaller model.kernel_init scale) or add model.norm=batch.')
  return Check('initial_loss', status(ratio > 3, not 0.7 <= ratio <= 1.5), loss,
               f'about the chance loss {chance:.3g} (0.7x-1.5x)', advice)


# Tasks whose loss applies a softmax or a sigmoid itself, so the model must output raw logits.
LOGIT_TASKS = ('classification', 'segmentation', 'language_modeling', 'binary', 'multilabel')


def probabilities(outputs: np.ndarray) -> str | None:
  """What the outputs look like if they are probabilities: 'a softmax (...)' when every row is in [0, 1]
  and sums to 1, 'a sigmoid (...)' when every value is strictly inside (0, 1) (a ReLU's exact zeros are
  not); None for outputs that may be logits."""
  if outputs.size == 0 or np.ptp(outputs) < 1e-6 or outputs.min() < 0 or outputs.max() > 1:
    return None
  if outputs.shape[-1] > 1 and np.allclose(outputs.sum(-1), 1, atol=1e-3):
    return 'a softmax (every row of outputs is in [0, 1] and sums to 1)'
  if outputs.min() > 0 and outputs.max() < 1:
    return 'a sigmoid (every output is strictly between 0 and 1)'
  return None


def check_output_layer(logits: np.ndarray, num_classes: int, task: tasks.Task) -> Check:
  """The model's outputs must be what the task's loss expects: raw logits of the right width (note 004)."""
  problems = []
  try:
    task.check(logits.shape[1:], num_classes)
  except ConfigError as e:
    problems.append(str(e))
  ending = probabilities(logits) if task.name in LOGIT_TASKS else None
  if ending:
    problems.append(f'the model ends in {ending}, but the {task.name} loss applies its own softmax/sigmoid '
                    'to raw logits; remove the output activation (return the logits)')
  return Check('output_layer', 'fail' if problems else 'pass',
               f'{logits.shape[-1]} outputs in [{logits.min():.3g}, {logits.max():.3g}]',
               f'{task.head(num_classes)} raw logits for the {task.name} loss', ' '.join(problems))


def check_labels(labels: np.ndarray, num_classes: int) -> Check:
  low, high = int(labels.min()), int(labels.max())
  return Check('labels', status(low < 0 or high >= num_classes, False), f'{low}..{high}',
               f'integers in 0..{num_classes - 1}',
               '' if 0 <= low and high < num_classes else
               'Labels outside the classes the model predicts: remap them to 0..C-1 or fix the number of '
               'classes of the data set.')


def check_class_balance(labels: np.ndarray, num_classes: int) -> Check:
  counts = np.bincount(labels.ravel().clip(0, num_classes - 1), minlength=num_classes)
  ratio = counts.max() / max(counts.min(), 1)
  return Check('class_balance', status(False, counts.min() == 0 or ratio > 10),
               f'{counts.min()}..{counts.max()} training examples per class',
               'every class present, at most 10x more examples in one class than in another',
               '' if counts.min() > 0 and ratio <= 10 else
               'Imbalanced classes: accuracy hides the rare ones. Resample or weight them, and judge the '
               'model by per-class metrics.', {str(c): int(n) for c, n in enumerate(counts)})


def check_finite_inputs(images: np.ndarray) -> Check:
  bad = int(np.size(images) - np.isfinite(images).sum())
  return Check('finite_inputs', status(bad > 0, False), f'{bad} non-finite values', 'none',
               'NaN or Inf in the inputs: clean the data, or fix a normalization that divides by a zero '
               'standard deviation.' if bad else '')


def check_input_scale(images: np.ndarray) -> Check:
  mean, std = float(np.nanmean(images)), float(np.nanstd(images))
  ok = abs(mean) <= 0.5 and 0.5 <= std <= 2
  return Check('input_scale', status(False, not ok), f'mean {mean:.3g}, std {std:.3g}',
               'mean about 0 and std about 1 after normalization',
               '' if ok else 'Inputs are not standardized: normalize them with statistics of the training '
               'split (note 001); unscaled inputs slow training and saturate units.')


def check_overfit(loss: float, accuracy: float | None, reference: float, num_steps: int,
                  batch_size: int) -> Check:
  """A model that cannot memorize one batch with regularization off has a bug (notes 003, 004). The loss
  must fall below a tenth of `reference` (the chance loss; the initial loss where there is none)."""
  target = 0.1 * reference
  fail = not math.isfinite(loss) or (accuracy is not None and accuracy < 0.9)
  warn = loss > target or (accuracy is not None and accuracy < 1)
  shown = f', accuracy {accuracy:.1%}' if accuracy is not None else ''
  return Check('overfit_batch', status(fail, warn), f'loss {loss:.3g}{shown} after {num_steps} steps',
               f'{"accuracy 100% and " if accuracy is not None else ""}loss below {target:.2g} on one batch '
               f'of {batch_size}',
               'The model does not memorize one batch with regularization off: look for too little capacity '
               '(model.features) or a bug in the architecture, a learning rate too low or too high (see '
               'learning_rate) and a loss that does not fit the outputs (see output_layer).'
               if fail or warn else '')


def check_vanishing(moments: dict[str, dict], layers: list[str]) -> Check:
  """Each layer's gradient/weight ratio against the fastest-learning layer after it (input first)."""
  worst, where, relative = 1.0, '', {}
  for moment, m in moments.items():
    relative[moment] = {layer: m['grads'][layer] / max(m['weights'][layer], 1e-12) for layer in layers}
    drop, layer = stats.vanishing(m['grads'], m['weights'], layers)
    if drop < worst:
      worst, where = drop, f' ({layer}, {moment})'
  silent = max(max(m['grads'].values()) for m in moments.values()) < 1e-10
  advice = ('' if worst >= stats.VANISHING_WARN and not silent else
            'Early layers hardly learn: use ReLU-family activations with He init (model.activation=relu, '
            'model.kernel_init=auto), BatchNorm (model.norm=batch), or a shallower or residual model.')
  return Check('vanishing_gradients', status(worst < stats.VANISHING_FAIL or silent,
                                              worst < stats.VANISHING_WARN),
               'no gradient at all' if silent else f'{worst:.2g}{where}',
               "every layer's gradient/weight ratio at least 1/100 of any later layer's", advice, relative)


def _inf_if_not_finite(values: dict[str, float]) -> dict[str, float]:
  return {k: v if math.isfinite(v) else math.inf for k, v in values.items()}


def check_exploding(moments: dict[str, dict], layers: list[str]) -> Check:
  """Gradient norms that are huge, or grow fast in the first steps (note 004: weights filled with 100)."""
  (_, m0), (later, m1) = moments.items()
  g0, g1 = _inf_if_not_finite(m0['grads']), _inf_if_not_finite(m1['grads'])
  norms = {layer: max(g0[layer], g1[layer]) for layer in layers}
  layer, largest = _worst(norms)
  growth = max((g1[k] / g0[k] for k in layers if 0 < g0[k] < math.inf), default=1.0)
  ok = largest <= 1e2 and growth <= 10
  return Check('exploding_gradients', status(largest > 1e3, not ok),
               f'largest {largest:.3g} ({layer}); x{growth:.2g} {later}',
               'gradient norms below 100 that do not grow 10x in the first steps',
               '' if ok else 'Gradients explode: lower optim.lr, clip them (optim.clip_norm=1.0), replace '
               'large initial weights by model.kernel_init=auto, or add model.norm=batch.', norms)


def _activation_check(name: str, fractions: dict[str, dict], expected: str, advice: str) -> Check:
  per_layer = {layer: max(f[layer] for f in fractions.values()) for layer in next(iter(fractions.values()))}
  layer, worst = _worst(per_layer)
  return Check(name, status(worst > 0.5, worst > 0.2), f'{worst:.0%} in {layer}', expected,
               advice if worst > 0.2 else '', per_layer)


def check_dead_units(fractions: dict[str, dict]) -> Check:
  return _activation_check(
      'dead_relu', fractions, 'at most 20% of the units of a layer zero for every example',
      'Dead ReLUs pass no gradient and never recover (note 004): use bias_init zeros or a small positive '
      'constant, He init (model.kernel_init=auto), a lower optim.lr, or model.activation=leaky_relu.')


def check_saturation(fractions: dict[str, dict]) -> Check:
  return _activation_check(
      'saturated_units', fractions, 'at most 20% of the outputs of a layer in the flat tails',
      'Saturated sigmoid/tanh units pass almost no gradient: standardize the inputs, use Glorot init '
      '(model.kernel_init=auto), BatchNorm before the activation (model.norm=batch), or ReLU.')


def check_update_ratio(ratios: dict[str, float]) -> Check:
  """|update| / |weights| per step; about 1e-3 is the rule of thumb (cs231n)."""
  ratios = _inf_if_not_finite(ratios)
  (low_layer, low), (high_layer, high) = _worst(ratios, largest=False), _worst(ratios)
  advice = ('Updates are large against the weights: lower optim.lr.' if high > 0.1 else
            f'{low_layer} hardly changes: raise optim.lr, or look at its initial weights and gradients.'
            if low < 1e-4 else '')
  return Check('update_ratio', status(high > 1, high > 0.1 or low < 1e-4),
               f'{low:.2g} ({low_layer})..{high:.2g} ({high_layer})',
               'about 1e-3 per step in every layer (1e-4..1e-1)', advice, ratios)


def check_learning_rate(lr: float, test: dict) -> Check:
  """The configured (peak) rate against the range test's suggestion and the rate where its loss diverged."""
  suggested, diverged, losses = test['suggested_lr'], test['diverged_lr'], test['losses']
  if not losses or min(losses) > 0.9 * losses[0]:
    return Check('learning_rate', 'warn', f'optim.lr={lr:.3g}; the loss fell by less than 10% at every rate',
                 'a range of rates where the loss falls',
                 'No learning rate made the loss fall: the model or the loss is the problem, not the rate; '
                 'see the checks above.')
  fail = (diverged is not None and lr >= diverged) or lr > 30 * suggested
  ok = suggested / 30 <= lr <= 10 * suggested
  where = f', the loss diverged at {diverged:.3g}' if diverged is not None else ''
  return Check('learning_rate', status(fail, not ok), f'optim.lr={lr:.3g}; suggested {suggested:.3g}{where}',
               f'{suggested / 30:.2g}..{10 * suggested:.2g}, below where the loss diverges',
               '' if ok and not fail else
               f'Set optim.lr near {suggested:.2g}; --mode lr_find plots the whole range test '
               '(plots/lr_find.png).')


def check_curves(history: list[dict]) -> Check:
  findings = curves.diagnose(history)
  return Check('learning_curves', 'warn' if findings else 'pass',
               ', '.join(f['name'] for f in findings) or 'nothing stands out',
               "no overfitting, underfitting, divergence or plateau in the workdir's metrics.jsonl",
               ' '.join(f'{f["name"]}: {f["evidence"]}. {f["advice"]}' for f in findings),
               {f['name']: f['evidence'] for f in findings})


def check_constant_baseline(name: str, baseline: dict, trained: dict | None, num_steps: int) -> Check:
  """The best constant prediction's eval metrics (note 002's dumb baseline), against the model trained for
  `num_steps` (the input-independent baseline's twin with inputs), which must already beat it."""
  shown = ', '.join(f'{k} {v:.3g}' for k, v in baseline.items())
  if trained is None:
    return Check(f'{name}_baseline', 'pass', shown, 'a trained run must beat it (summary.json shows both)')
  ok = baselines.beaten(trained['eval/loss'], baseline['eval/loss'])
  return Check(f'{name}_baseline', status(False, not ok), shown,
               f'eval/loss below {baselines.MARGIN:g}x after {num_steps} steps with inputs '
               f'(it is {trained["eval/loss"]:.3g})',
               '' if ok else 'The model barely beats a constant prediction after these steps: look at '
               'input_independent and learning_rate, or raise doctor.baseline_steps for a hard task.')


def check_input_independent(with_inputs: dict, without: dict, num_steps: int) -> Check:
  """The model trained on its inputs against the same model and batches with the inputs zeroed (note 002):
  a model that ignores its inputs does exactly as well without them."""
  ratio = with_inputs['eval/loss'] / max(without['eval/loss'], 1e-12)
  return Check('input_independent', status(ratio > 0.98, not baselines.beaten(with_inputs['eval/loss'],
                                                                                without['eval/loss'])),
               f'eval/loss {with_inputs["eval/loss"]:.3g} with inputs, {without["eval/loss"]:.3g} zeroed',
               f'with inputs below {baselines.MARGIN:g}x the zeroed inputs\' loss after {num_steps} steps',
               '' if ratio < baselines.MARGIN else
               'The model learns (almost) nothing from its inputs: check that model.inputs names the keys '
               'that carry the signal, that the model uses them (not only a bias), and that the inputs '
               'are not constant after normalization (see input_scale).')


def _probe(model, optim_config, task: tasks.Task, activation: str):
  """(state, batch) -> loss, logits, per-layer gradient and weight norms, and each activation layer's dead
  and saturated fractions: everything the doctor reads from one forward and backward pass, in one jit."""
  loss_fn = steps.make_loss_fn(model, optim_config, task)

  def probe(state, batch):
    grads, (loss, logits, _) = jax.grad(loss_fn, has_aux=True)(state.params, state, batch)
    _, captured = model.apply(variables(state), batch, train=True,
                              rngs={'dropout': jax.random.fold_in(state.rng, state.step)},
                              mutable=['batch_stats', 'intermediates'],
                              capture_intermediates=stats.is_activation)
    outputs = captured.get('intermediates', {})  # None captured: no zoo activation layers.
    return {'loss': loss, 'logits': logits, 'grads': stats.layer_norms(grads),
            'weights': stats.layer_norms(state.params), 'dead': stats.dead_fractions(outputs),
            'saturated': (stats.saturated_fractions(outputs, activation)
                          if activation in stats.SATURATED else {})}

  return jax.jit(probe)


def _host(moment: dict) -> dict:
  """A probe's output on the host: per-layer dicts of floats, the logits as an array."""
  moment = jax.device_get(moment)
  return {k: (np.asarray(v) if isinstance(v, jax.Array | np.ndarray) else v) if k == 'logits'
          else jax.tree.map(float, v) for k, v in moment.items()}


def _input_independent(exp, normalization: dict, step, state, model) -> dict:
  """Eval metrics of the model trained `doctor.baseline_steps` on the training stream, with its inputs
  and with them zeroed (trained and evaluated so): {'with_inputs': ..., 'input_independent': ...}."""
  config, keys = exp.config, set(exp.config.model.inputs)
  plain_eval = steps.make_eval_step(model, exp.program.task)
  results = {}
  for name, blind in (('with_inputs', False), ('input_independent', True)):
    trained = lr_find.with_lr(jax.tree.map(lambda x: x.copy(), state), config.optim.lr)
    batches = experiment.batches(exp, normalization, config.data.batch_size)
    for _, batch in zip(range(config.doctor.baseline_steps), batches, strict=False):
      trained, _ = step(trained, exp.strategy.place_batch(baselines.zeroed(batch, keys) if blind else batch))
    eval_step = jax.jit(lambda s, b, blind=blind: plain_eval(s, baselines.zeroed(b, keys) if blind else b))
    results[name] = evaluation.split_metrics(exp, trained, normalization, 'eval', eval_step)
  return results


def _overfit_size(exp) -> int:
  """The overfit batch's size: doctor.overfit_examples (or the batch size), a multiple of the devices."""
  size = exp.config.doctor.overfit_examples or exp.config.data.batch_size
  devices = exp.strategy.data_parallel_size
  return -(-size // devices) * devices


def _measure(exp, normalization: dict, groups: set[str]) -> dict:
  """Runs the probes, the one-batch overfit, the range test and the baselines of the chosen groups;
  returns host numbers only."""
  config = ml_collections.ConfigDict(exp.config.to_dict())  # Regularization off (note 004).
  config.optim.update(weight_decay=0.0, l1=0.0, l2=0.0)
  config.data.augment = 'none'
  model = exp.program.model.without_dropout()
  examples = min(config.doctor.probe_examples, data.length(exp.splits.train))
  probe_batch = next(experiment.batches(exp, normalization, examples))
  inputs = [key for key in config.data.normalize if key in probe_batch]
  measured = {'probe_images': probe_batch[inputs[0]] if inputs else None}
  if not groups & {'init', 'training', 'learning_rate', 'baselines'}:
    return measured
  probe = _probe(model, config.optim, exp.program.task, config.model.activation)
  step, state = lr_find.trainer(exp, model, config)
  fresh = jax.tree.map(lambda x: x.copy(), state)  # `step` donates its input; later tests start here.
  moments = {'at init': probe(state, probe_batch)}
  if 'training' in groups:
    batch = exp.strategy.place_batch(next(experiment.batches(exp, normalization, _overfit_size(exp))))
    flow = config.doctor.flow_steps
    state, ratios = lr_find.with_lr(jax.tree.map(lambda x: x.copy(), fresh), config.optim.lr), []
    for i in range(config.doctor.overfit_steps):
      state, metrics = step(state, batch)
      if i < flow:
        ratios.append(metrics['update_ratio'])
      if i + 1 == flow:
        moments[f'after {flow} steps'] = probe(state, probe_batch)
    _, final = step(state, batch)  # The loss and accuracy of the final parameters on the memorized batch.
    ratios = jax.device_get(ratios)
    measured.update(overfit={k: float(final[k]) for k in ('loss', 'accuracy') if k in final},
                    ratios={k: float(np.mean([r[k] for r in ratios])) for k in ratios[0]})
  if 'baselines' in groups:
    measured['baselines'] = {**({baselines.name(exp.program.task): constant}
                                if (constant := baselines.constant(exp, normalization)) else {}),
                             **_input_independent(exp, normalization, step, fresh, model)}
  if 'learning_rate' in groups:
    c = config.lr_find
    measured['range_test'] = lr_find.range_test(exp, normalization, step, fresh, c.min_lr, c.max_lr,
                                                config.doctor.lr_find_steps, c.smoothing, c.diverge_factor)
  moments = {name: _host(m) for name, m in moments.items()}
  order = model.forward_order(exp.example)
  measured.update(moments=moments, layers=sorted(
      moments['at init']['grads'],
      key=lambda layer: (layer not in order, order.index(layer) if layer in order else 0, layer)))
  return measured


def _init_checks(exp, m: dict) -> list[Check]:
  task, num_classes = exp.program.task, exp.splits.num_classes
  init = m['moments']['at init']
  chance = chance_loss(task.name, num_classes)
  checks = [check_initial_loss(init['loss'], chance) if chance else skipped(
      'initial_loss', f'no chance loss is known for the {task.name!r} task (the zoo\'s classification, '
      'binary, multilabel, segmentation and language_modeling tasks have one)')]
  if task.check and isinstance(init['logits'], np.ndarray):
    checks.append(check_output_layer(init['logits'], num_classes, task))
  else:
    checks.append(skipped('output_layer', 'the task is not one of the zoo\'s, so the expected outputs are '
                                          'unknown'))
  return checks


def _data_checks(exp, m: dict) -> list[Check]:
  splits, task = exp.splits, exp.program.task
  checks = []
  if task.name in ('classification', 'binary', 'segmentation'):  # One class per example (or pixel).
    labels = np.asarray(splits.train[task.label])
    checks += [check_labels(labels, splits.num_classes), check_class_balance(labels, splits.num_classes)]
  if m['probe_images'] is not None:
    checks += [check_finite_inputs(m['probe_images']), check_input_scale(m['probe_images'])]
  else:
    checks += [skipped(name, 'no input key is normalized (data.normalize); nothing is checked')
               for name in ('finite_inputs', 'input_scale')]
  return checks


def _training_checks(exp, m: dict) -> list[Check]:
  config, task = exp.config, exp.program.task
  init = m['moments']['at init']
  chance = chance_loss(task.name, exp.splits.num_classes)
  activation = config.model.activation
  checks = [
      check_overfit(m['overfit']['loss'], m['overfit'].get('accuracy'), chance or init['loss'],
                    config.doctor.overfit_steps, _overfit_size(exp)),
      check_vanishing(m['moments'], m['layers']),
      check_exploding(m['moments'], m['layers']),
  ]
  if exp.user_model:
    reason = ('needs the zoo\'s activation layers (model.activation) to find the units; this model is '
              f'{config.model.name!r}')
    checks += [skipped('dead_relu', reason), skipped('saturated_units', reason)]
  elif activation in stats.DYING and init['dead']:
    checks.append(check_dead_units({k: v['dead'] for k, v in m['moments'].items()}))
  elif activation in stats.SATURATED and init['saturated']:
    checks.append(check_saturation({k: v['saturated'] for k, v in m['moments'].items()}))
  return [*checks, check_update_ratio(m['ratios'])]


def _baseline_checks(exp, m: dict) -> list[Check]:
  found, num_steps = m['baselines'], exp.config.doctor.baseline_steps
  name = baselines.name(exp.program.task)
  checks = []
  if name in found:
    checks.append(check_constant_baseline(name, found[name], found['with_inputs'], num_steps))
  return [*checks, check_input_independent(found['with_inputs'], found['input_independent'], num_steps)]


def _checks(exp, m: dict, history: list[dict], groups: set[str]) -> list[Check]:
  checks = []
  if 'init' in groups:
    checks += _init_checks(exp, m)
  if 'data' in groups:
    checks += _data_checks(exp, m)
  if 'training' in groups:
    checks += _training_checks(exp, m)
  if 'learning_rate' in groups:
    checks.append(check_learning_rate(exp.config.optim.lr, m['range_test']))
  if 'baselines' in groups:
    checks += _baseline_checks(exp, m)
  if 'curves' in groups and history:
    checks.append(check_curves(history))
  return checks


def verdict(checks: list[Check]) -> str:
  statuses = {c.status for c in checks}  # A skipped check says nothing either way.
  return 'fail' if 'fail' in statuses else 'warn' if 'warn' in statuses else 'pass'


def doctor(config: ml_collections.ConfigDict | None, workdir: str | pathlib.Path | None = None, *, model=None,
           data=None, task=None) -> dict:
  """Runs the checks of `doctor.checks` on the configured run (or on the `model`, `data` and `task` objects
  passed, as in `fit`), and the comparison `doctor.compare` names; writes doctor.json and its plots into
  `workdir` (a temporary directory when None) and returns doctor.json's content. A workdir's
  metrics.jsonl, when it has one, is read for a learning-curve diagnosis; its checkpoints are never
  touched."""
  exp, normalization, workdir = experiment.prepare(config, workdir, model=model, data_source=data, task=task)
  groups = set(exp.config.doctor.checks)
  measured = _measure(exp, normalization, groups)
  checks = _checks(exp, measured, read_metrics(workdir), groups)
  report = {}
  if exp.config.doctor.compare:
    check, report['comparison'] = comparison.compare(exp, normalization)
    checks.append(check)
  report = {'checks': [{k: v for k, v in dataclasses.asdict(c).items() if k != 'details' or v}
                       for c in checks],
            'verdict': verdict(checks), **report}
  if 'baselines' in measured:
    report['baselines'] = {k: v for k, v in measured['baselines'].items() if k != 'with_inputs'}
  if 'data' in groups:
    views.write_batch(exp, exp.new_state(), normalization, workdir)
  experiment.write_json(workdir / RESULT_FILE, report)
  if 'training' in groups:
    plots.gradient_flow(measured['layers'], {name: [m['grads'][layer] for layer in measured['layers']]
                                             for name, m in measured['moments'].items()},
                        workdir / PLOT_FILE)
  return report


def format_report(report: dict) -> str:
  """The verdict table: one line per check, with the advice under each that did not pass."""
  lines = [f'{"status":7}  {"check":20}  {"value":50}  expected']
  for c in report['checks']:
    value = f'{c["value"]:.4g}' if isinstance(c['value'], float) else str(c['value'])
    lines.append(f'{c["status"].upper():7}  {c["name"]:20}  {value:50}  {c["expected"]}')
    if c['advice']:
      lines.append(f'{"":8}-> {c["advice"]}')
  counts = {s: sum(c['status'] == s for c in report['checks']) for s in ('pass', 'warn', 'fail', 'skipped')}
  lines.append(f'verdict: {report["verdict"]} ({counts["fail"]} failed, {counts["warn"]} warnings, '
               f'{counts["pass"]} passed, {counts["skipped"]} skipped)')
  return '\n'.join(lines)
