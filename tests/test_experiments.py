"""Experiments: sweeps with pruning, vmapped populations, ensembles, snapshot ensembles, transfer learning."""

import csv
import json
import logging
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import CONFIGS, ROOT

import jaxtrain
from jaxtrain import history
from jaxtrain.experiments import ensemble, population, sweep

SMALL = {'model.features': (32,), 'model.dropout': 0.0, 'train.num_steps': 10, 'train.eval_every_steps': 5}


def test_population_matches_independent_runs(make_config, tmp_path):
  lrs, decays = (3e-3, 1e-2), (1e-2, 1e-1)
  config = make_config('digits_mlp', **SMALL, **{'population.size': 2, 'population.lr': lrs,
                                                  'population.weight_decay': decays})
  run = population.fit_population(config, tmp_path / 'pop')
  assert {f'train/loss/m{i}' for i in range(2)} <= {k for record in run.history for k in record}
  for i, (lr, decay) in enumerate(zip(lrs, decays, strict=True)):
    alone = jaxtrain.fit(make_config('digits_mlp', **SMALL, **{'optim.lr': lr, 'optim.weight_decay': decay}))
    member = run.summary['members'][i]['final']
    np.testing.assert_allclose(member['eval/loss'], alone.summary['final']['eval/loss'], rtol=2e-3)
  best = run.summary['best_member']
  assert jaxtrain.evaluate(config, tmp_path / 'pop')['eval/loss'] == pytest.approx(
      run.summary['members'][best]['final']['eval/loss'])
  result = ensemble.evaluate(config, tmp_path / 'pop')  # --mode eval: best member + the members' ensemble.
  assert result['ensemble/members'] == 2 and 0 < result['test/ensemble_accuracy'] <= 1


def test_a_preempted_population_resumes_to_the_same_members(make_config, data_dir, tmp_path, caplog):
  """Populations train on the engine: SIGTERM saves and exits 143, and the same command resumes."""
  overrides = ['--config.population.size=2', '--config.population.lr=(0.003, 0.01)',
               '--config.train.num_steps=60', '--config.train.log_every_steps=1',
               '--config.checkpoint.every_steps=5', '--config.train.eval_every_steps=30',
               '--config.train.progress_bar=False',
               f'--config.data.data_dir={data_dir}', f'--workdir={tmp_path / "pop"}']
  command = [sys.executable, '-m', 'jaxtrain.main', '--config', str(CONFIGS / 'digits_mlp.py'), *overrides]
  process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 120
  while not any(r['step'] >= 12 for r in history.read_metrics(tmp_path / 'pop')):
    assert process.poll() is None and time.time() < deadline
    time.sleep(0.05)
  process.send_signal(signal.SIGTERM)
  assert process.wait(timeout=120) == 128 + signal.SIGTERM
  assert not (tmp_path / 'pop' / 'summary.json').exists()
  config = make_config('digits_mlp', **{'population.size': 2, 'population.lr': (0.003, 0.01),
                                        'train.num_steps': 60, 'train.eval_every_steps': 30,
                                        'train.log_every_steps': 1, 'checkpoint.every_steps': 5})
  with caplog.at_level(logging.INFO, logger='jaxtrain'):
    jaxtrain.fit(config, tmp_path / 'pop')  # What the same command does next, in this process.
  assert 'Resuming from step' in caplog.text
  straight = population.fit_population(config, tmp_path / 'straight')
  summary = json.loads((tmp_path / 'pop' / 'summary.json').read_text())
  for member, reference in zip(summary['members'], straight.summary['members'], strict=True):
    assert member['final'] == pytest.approx(reference['final'], rel=1e-6)
  steps = [r['step'] for r in history.read_metrics(tmp_path / 'pop') if 'train/loss/m0' in r]
  assert steps == list(range(1, 61))  # Nothing logged twice, nothing lost.


def test_grid_sweep_visits_every_point(make_config, tmp_path):
  config = make_config('digits_mlp', **{
      **SMALL, 'sweep.space': ('optim.lr=grid(1e-3, 1e-2)', 'model.features=grid((16,), (32,))'),
      'sweep.sampler': 'grid', 'train.num_steps': 5})
  result = jaxtrain.sweep(config, tmp_path)
  rows = list(csv.DictReader((tmp_path / 'sweep.csv').open()))
  assert sorted((float(r['optim.lr']), r['model.features']) for r in rows) == [
      (1e-3, '(16,)'), (1e-3, '(32,)'), (1e-2, '(16,)'), (1e-2, '(32,)')]
  assert all(r['state'] == 'complete' for r in rows) and (tmp_path / 'plots' / 'sweep.png').exists()
  assert (tmp_path / 'trials' / str(result['best']['trial']) / 'summary.json').exists()


def test_pruning_stops_bad_trials(make_config, tmp_path):
  # Grid order is a function of the seed: here the good rates run first, then 1e-7 falls below their median.
  config = make_config('digits_mlp', **{
      **SMALL, 'sweep.space': ('optim.lr=grid(3e-3, 1e-7, 5e-3)',), 'sweep.sampler': 'grid',
      'sweep.pruner': 'median', 'sweep.startup_trials': 1, 'train.eval_every_steps': 2})
  rows = jaxtrain.sweep(config, tmp_path)['trials']
  bad = next(r for r in rows if r['optim.lr'] == 1e-7)
  assert bad['state'] == 'pruned' and bad['steps'] < 10
  assert rows[0]['state'] == 'complete'  # The startup trial always runs to the end.


@pytest.mark.slow
def test_two_sweep_processes_share_one_study(data_dir, tmp_path):
  command = [sys.executable, '-m', 'jaxtrain.main', '--mode', 'sweep',
             '--config', str(CONFIGS / 'digits_mlp.py'),
             f'--workdir={tmp_path}', f'--config.data.data_dir={data_dir}', '--config.train.num_steps=5',
             '--config.train.progress_bar=False', '--config.model.features=(16,)',
             "--config.sweep.space=('optim.lr=grid(1e-3, 2e-3, 3e-3, 4e-3)',)", '--config.sweep.sampler=grid']
  processes = [subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
  for p in processes:
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-2000:]
  rows = list(csv.DictReader((tmp_path / 'sweep.csv').open()))
  assert len(rows) == 4 and {float(r['optim.lr']) for r in rows} == {1e-3, 2e-3, 3e-3, 4e-3}
  assert sorted(p.name for p in (tmp_path / 'trials').iterdir()) == ['0', '1', '2', '3']


def test_bad_sweep_space_is_a_config_error(make_config, tmp_path):
  with pytest.raises(jaxtrain.ConfigError, match='loguniform'):
    jaxtrain.sweep(make_config(**{'sweep.space': ('optim.lr=lognormal(1, 2)',)}), tmp_path)
  with pytest.raises(jaxtrain.ConfigError, match=r"the spec 'logunif' is not known \(did you mean "
                                                 r"'loguniform'\?\); a spec is one of: uniform\("):
    jaxtrain.sweep(make_config(**{'sweep.space': ('optim.lr=logunif(1e-4, 1e-1)',)}), tmp_path)
  with pytest.raises(jaxtrain.ConfigError, match="did you mean 'optim.lr'"):
    jaxtrain.sweep(make_config(**{'sweep.space': ('optim.lrr=choice(1, 2)',)}), tmp_path)


def test_sweep_plot_sorts_categories_and_leaves_minor_log_ticks_unlabelled(tmp_path):
  space = {'optim.lr': ('loguniform', [1e-3, 5e-3]), 'optim.name': ('choice', ['sgd', 'adam'])}
  rows = [{'state': 'complete', 'eval/accuracy': 0.5 + i / 10, 'optim.lr': lr, 'optim.name': name}
          for i, (lr, name) in enumerate([(2e-3, 'sgd'), (1e-3, 'adam'), (4e-3, 'sgd')])]
  figure = sweep.plot_trials(rows, space, 'eval/accuracy', tmp_path / 'sweep.png')
  assert [label.get_text() for label in figure.axes[1].get_xticklabels()] == ['adam', 'sgd']
  assert type(figure.axes[0].xaxis.get_minor_formatter()).__name__ == 'NullFormatter'
  assert (tmp_path / 'sweep.png').stat().st_size > 0


def test_fine_tune_loads_matching_weights_and_freezes(make_config, tmp_path, caplog):
  source = jaxtrain.fit(make_config(**{'train.num_steps': 6, 'data.classes': (0, 1, 2, 3, 4)}),
                        tmp_path / 'src')
  config = make_config(**{'train.num_steps': 6, 'init_from': str(tmp_path / 'src'),
                          'model.head_features': (64,), 'optim.freeze': ('params/Block_0/.*',),
                          'optim.lr_multipliers': ('params/head/.*=10',), 'data.classes': (5, 6, 7, 8, 9),
                          'data.train_fraction': 0.5})
  with caplog.at_level(logging.INFO, logger='jaxtrain'):
    run = jaxtrain.fit(config, tmp_path / 'ft')
  assert re.search(r'params/Block_1/Conv_0/kernel +loaded', caplog.text)
  assert re.search(r'params/Block_2/Dense_0/kernel +skipped +source \(256, 128\) != \(256, 64\)', caplog.text)
  assert re.search(r'params/head/kernel +10 +optim.lr_multipliers params/head/', caplog.text)
  for tree in ('params', 'batch_stats'):  # Frozen: bit-identical weights and BatchNorm statistics.
    before, after = getattr(source.state, tree)['Block_0'], getattr(run.state, tree)['Block_0']
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after),
                                                    strict=True))
  changed = source.state.params['Block_1']['Conv_0']['kernel']
  assert not np.array_equal(changed, run.state.params['Block_1']['Conv_0']['kernel'])
  with pytest.raises(jaxtrain.ConfigError, match='matches no parameter'):
    jaxtrain.fit(make_config(**{'optim.freeze': ('params/Block_9/.*',)}))


def test_ensemble_of_three_seeds(make_config, tmp_path, data_dir):
  for seed in range(3):
    jaxtrain.fit(make_config('digits_mlp', **SMALL, seed=seed), tmp_path / f's{seed}')
  members = ','.join(repr(str(tmp_path / f's{seed}')) for seed in range(3))
  result = subprocess.run(
      [sys.executable, '-m', 'jaxtrain.main', '--mode', 'eval', '--config', str(CONFIGS / 'digits_mlp.py'),
       f'--workdir={tmp_path / "ensemble"}', f'--config.data.data_dir={data_dir}',
       f'--config.ensemble.members=({members},)'], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "'ensemble/members': 3" in result.stdout.replace('"', "'")
  assert 'test/ensemble_accuracy' in result.stdout and 'test/member_accuracy' in result.stdout
  written = json.loads((tmp_path / 'ensemble' / ensemble.RESULT_FILE).read_text())
  assert written == json.loads(result.stdout.strip().splitlines()[-1])  # The printed result, kept.
  missing = subprocess.run(
      [sys.executable, '-m', 'jaxtrain.main', '--mode', 'eval', '--config', str(CONFIGS / 'digits_mlp.py'),
       f'--workdir={tmp_path / "ensemble2"}', f'--config.data.data_dir={data_dir}',
       f'--config.ensemble.members=({members}, {str(tmp_path / "nope")!r})'],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert missing.returncode == 2
  assert missing.stderr.strip().splitlines()[-1].startswith(
      f"error: ensemble.members names '{tmp_path / 'nope'}', which holds no trained run")
  assert not (tmp_path / 'ensemble2').exists()


def test_snapshot_ensemble_keeps_every_cycle(make_config, tmp_path):
  config = make_config('digits_mlp', **SMALL, **{'optim.schedule': 'sgdr', 'optim.cycles': 2,
                                                  'checkpoint.snapshots': True, 'checkpoint.keep': 1,
                                                  'optim.warmup_steps': 0})
  jaxtrain.fit(config, tmp_path)
  assert sorted(p.name for p in (tmp_path / 'snapshots').iterdir()) == ['10', '5']
  assert ensemble.evaluate(config, tmp_path)['ensemble/members'] == 2
  with pytest.raises(jaxtrain.ConfigError, match='sgdr'):
    jaxtrain.fit(make_config(**{'checkpoint.snapshots': True}))
