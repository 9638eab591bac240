"""Sweeps on a real PostgreSQL server that the test starts (initdb and postgres in a temporary folder,
listening on 127.0.0.1) and stops by the process id it started: two processes share one study.

Without PostgreSQL's binaries (Debian's postgresql package, which .ci/run installs) the tests are skipped
with the reason; under CI=true they fail instead.
"""

import contextlib
import csv
import glob
import os
import pathlib
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest
from conftest import CONFIGS, ROOT, real_component_unavailable

import jaxtrain

pytestmark = pytest.mark.xdist_group('postgres')
USER, PASSWORD = 'jaxtrain', 'sweep-secret'


def _binaries() -> pathlib.Path | None:
  """The folder of initdb and postgres: Debian keeps them out of PATH, under /usr/lib/postgresql/<v>/bin."""
  found = sorted(glob.glob('/usr/lib/postgresql/*/bin/initdb'))
  path = found[-1] if found else shutil.which('initdb')
  return pathlib.Path(path).parent if path else None


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _owner() -> dict:
  """PostgreSQL refuses to run as root: as root, the server runs as the 'postgres' account."""
  if os.geteuid() != 0:
    return {}
  try:
    pwd.getpwnam('postgres')
  except KeyError:
    real_component_unavailable('PostgreSQL', "running as root and there is no 'postgres' user")
  return {'user': 'postgres', 'group': 'postgres'}


@pytest.fixture(scope='module')
def postgres_url():
  binaries = _binaries()
  if binaries is None:
    real_component_unavailable('PostgreSQL', 'no initdb (apt-get install postgresql)')
  owner = _owner()
  folder = pathlib.Path(tempfile.mkdtemp(prefix='jaxtrain-pg-'))  # Not under pytest's root-only folder.
  (folder / 'password').write_text(PASSWORD + '\n')
  if owner:
    for path in (folder, folder / 'password'):
      shutil.chown(path, owner['user'], owner['group'])
  server = None
  try:
    subprocess.run([binaries / 'initdb', '-D', folder / 'data', '-U', USER, '--pwfile', folder / 'password',
                    '-A', 'scram-sha-256'], check=True, capture_output=True, timeout=120, **owner)
    port = _free_port()
    server = subprocess.Popen([binaries / 'postgres', '-D', folder / 'data', '-p', str(port), '-k', folder,
                               '-c', 'listen_addresses=127.0.0.1'], stdout=subprocess.DEVNULL,
                              stderr=(folder / 'server.log').open('w'), **owner)
    url = f'postgresql+psycopg2://{USER}:{PASSWORD}@127.0.0.1:{port}/postgres'
    _wait_until_ready(url, server, folder)
    yield url
  finally:
    if server is not None:
      server.send_signal(signal.SIGINT)  # The process this fixture started; its fast shutdown ends its
      server.wait(timeout=60)            # own children and does not wait for clients to disconnect.
    shutil.rmtree(folder, ignore_errors=True)


def _wait_until_ready(url: str, server: subprocess.Popen, folder: pathlib.Path) -> None:
  import sqlalchemy
  deadline = time.time() + 60
  while True:
    try:
      with sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool).connect():
        return
    except sqlalchemy.exc.OperationalError:
      if server.poll() is not None or time.time() > deadline:
        pytest.fail(f'PostgreSQL did not start: {(folder / "server.log").read_text()[-2000:]}')
      time.sleep(0.2)


def _sweep_command(workdir, data_dir, url, *extra) -> list:
  return [sys.executable, '-m', 'jaxtrain.main', '--mode', 'sweep',
          '--config', str(CONFIGS / 'digits_mlp.py'),
          f'--workdir={workdir}', f'--config.data.data_dir={data_dir}', '--config.train.num_steps=5',
          '--config.train.progress_bar=False', '--config.model.features=(16,)',
          '--config.compile_cache.enabled=False', '--config.diagnostics.report=False',
          f'--config.sweep.storage={url}', "--config.sweep.space=('optim.lr=loguniform(1e-4, 1e-1)',)",
          '--config.sweep.sampler=random', *extra]


def test_two_processes_share_one_study_with_distinct_points(postgres_url, make_config, data_dir, tmp_path):
  jaxtrain.data.load(make_config('digits_mlp'))  # Prepared once, not by both processes at the same time.
  shared = ('--config.sweep.num_trials=6', '--config.sweep.study_name=shared')
  processes = [subprocess.Popen(_sweep_command(tmp_path / name, data_dir, postgres_url, *shared), cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for name in ('a', 'b')]
  for process in processes:
    _, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-3000:]
  import optuna
  study = optuna.load_study(study_name='shared', storage=postgres_url)
  assert len(study.trials) == 6 and all(t.state.name == 'COMPLETE' for t in study.trials)
  rates = [t.params['optim.lr'] for t in study.trials]
  assert len(set(rates)) == 6  # Each trial drew its own point, whichever process ran it.
  trained = [p for name in ('a', 'b') for p in (tmp_path / name / 'trials').glob('*')]
  assert len(trained) == 6 and {p.name for p in trained} == {str(n) for n in range(6)}
  for name in ('a', 'b'):  # Both wrote the final table from the database: every trial, none running.
    rows = list(csv.DictReader((tmp_path / name / 'sweep.csv').open()))
    assert sorted(int(r['trial']) for r in rows) == list(range(6))
    assert {r['state'] for r in rows} == {'complete'}


@contextlib.contextmanager
def _within(seconds: float):
  started = time.time()
  yield
  assert time.time() - started < seconds


@pytest.mark.parametrize('url,message', [
    ('postgresql+psycopg2://jaxtrain:wrong@127.0.0.1:{port}/postgres', 'password authentication failed'),
    ('postgresql+psycopg2://jaxtrain:wrong@127.0.0.1:{closed}/postgres', 'Connection refused'),
    ('postgresql+pg8000://jaxtrain:wrong@127.0.0.1:{port}/postgres', "needs the database driver 'pg8000'"),
    ('mongodb://127.0.0.1/x', 'names a database SQLAlchemy does not know'),
    ('127.0.0.1:5432', 'is not a database URL'),
])
def test_a_storage_that_fails_is_one_config_error_within_15_s(postgres_url, make_config, tmp_path, url,
                                                               message):
  port = postgres_url.rsplit(':', 1)[1].split('/')[0]
  url = url.format(port=port, closed=_free_port())
  config = make_config('digits_mlp', **{'sweep.storage': url, 'sweep.num_trials': 1,
                                        'sweep.space': ('optim.lr=loguniform(1e-4, 1e-1)',)})
  with _within(15), pytest.raises(jaxtrain.ConfigError, match=message) as error:
    jaxtrain.sweep(config, tmp_path / 'run')
  assert 'wrong' not in str(error.value)  # The password is not repeated.
  assert not (tmp_path / 'run' / 'sweep.csv').exists()


def test_cli_reports_a_wrong_password_in_one_line(postgres_url, data_dir, tmp_path):
  url = postgres_url.replace(PASSWORD, 'wrong')
  started = time.time()
  result = subprocess.run(_sweep_command(tmp_path / 'run', data_dir, url, '--config.sweep.num_trials=1'),
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert time.time() - started < 15 + 10  # 15 s for the database, plus the interpreter's start-up.
  errors = [line for line in result.stderr.splitlines() if line.startswith('error:')]
  assert result.returncode == 2 and len(errors) == 1, result.stderr[-3000:]
  assert 'password authentication failed' in errors[0] and "postgresql+psycopg2://jaxtrain:***@" in errors[0]
  assert 'Traceback' not in result.stderr
