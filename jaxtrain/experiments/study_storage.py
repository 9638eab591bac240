"""Where a sweep's study lives and how processes share it: Optuna's RDBStorage for a URL (SQLite by
default, PostgreSQL or MySQL across machines), one-line errors for a URL that cannot work, the lock under
which trials are counted and created, and the wait for other processes' trials before the final report.

The database decides how many trials start: counting the study's trials and creating the next one happen
under a lock held in the database itself for a server (PostgreSQL's advisory locks, MySQL's GET_LOCK), and
on a file beside the SQLite database, which is one machine's file anyway. Optuna's heartbeat fails the
trials of a process that died, so no one waits for them forever.
"""

import contextlib
import fcntl
import logging
import pathlib
import time
import warnings
import zlib

from jaxtrain import config as config_lib

log = logging.getLogger('jaxtrain')

LOCK_FILE = 'sweep.lock'
HEARTBEAT_S, HEARTBEAT_GRACE_S = 20, 60  # A running trial's process proves it is alive this often.
CONNECT_TIMEOUT_S = 10  # An unreachable database server is an error after this long, not a hang.
STORAGE_EXAMPLE = 'postgresql+psycopg2://user:password@host:5432/database'


def url(config, workdir: pathlib.Path) -> str:
  return config.sweep.storage or f'sqlite:///{(workdir / "sweep.db").absolute()}'


def _shown(url: str) -> str:
  """The URL without its password, for messages."""
  import sqlalchemy  # noqa: PLC0415 - Optuna's own dependency, only needed by sweeps.
  try:
    return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
  except sqlalchemy.exc.ArgumentError:
    return url


def connect(url: str):
  """Optuna's RDBStorage for `url`; a ConfigError naming the cause and the fix when it cannot connect."""
  import optuna  # noqa: PLC0415 - sweeps only (the sweep extra); sweep.py checks it is installed.
  import sqlalchemy  # noqa: PLC0415
  shown = _shown(url)
  if url.startswith('sqlite'):  # Processes sharing the file wait for each other's writes, not fail.
    engine = {'connect_args': {'timeout': 60}}
  elif url.startswith('postgresql'):
    engine = {'connect_args': {'connect_timeout': CONNECT_TIMEOUT_S}}
  else:
    engine = {}
  heartbeat = {'heartbeat_interval': HEARTBEAT_S, 'grace_period': HEARTBEAT_GRACE_S}
  for attempt in range(5):
    try:
      with warnings.catch_warnings():  # Optuna calls the heartbeat experimental; it is what we want here.
        warnings.simplefilter('ignore', optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(url, engine_kwargs=engine, **heartbeat)
    except sqlalchemy.exc.NoSuchModuleError:
      raise config_lib.ConfigError(f'sweep.storage={shown!r} names a database SQLAlchemy does not know; use '
                                   f'e.g. {STORAGE_EXAMPLE} or sqlite:///path/sweep.db') from None
    except sqlalchemy.exc.ArgumentError:
      raise config_lib.ConfigError(f'sweep.storage={shown!r} is not a database URL; use e.g. '
                                   f'{STORAGE_EXAMPLE} or sqlite:///path/sweep.db') from None
    except ImportError:  # Optuna's wrapping of the driver's ModuleNotFoundError.
      driver = sqlalchemy.engine.make_url(url).get_dialect().driver
      raise config_lib.ConfigError(
          f"sweep.storage={shown!r} needs the database driver {driver!r}, which is not installed; for "
          f"PostgreSQL install jaxtrain's extra (pip install -e '.[postgres]') and write the URL as "
          f'{STORAGE_EXAMPLE}') from None
    except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as e:
      # Processes creating the schema of a new database at once: one loses (a duplicate table or type),
      # then finds the schema there.
      if attempt < 4:
        time.sleep(1 + attempt)
        continue
      raise config_lib.ConfigError(f'sweep.storage={shown!r}: cannot create the study tables: '
                                   f'{str(getattr(e, "orig", e)).strip().splitlines()[0]}') from None
    except sqlalchemy.exc.OperationalError as e:
      if url.startswith('sqlite') and attempt < 4:  # SQLite's form of the same race.
        time.sleep(1 + attempt)
        continue
      cause = str(getattr(e, 'orig', e)).strip().splitlines()[0]
      raise config_lib.ConfigError(f'sweep.storage={shown!r}: cannot use the database: {cause}; check the '
                                   'host, port, user, password and database name in the URL') from None
  raise AssertionError('unreachable')


class _DatabaseLock:
  """A lock every process on the database server sees: PostgreSQL's session advisory lock, or MySQL's
  named lock, on a connection of its own, keyed by the study's name."""

  def __init__(self, url: str, name: str):
    import sqlalchemy  # noqa: PLC0415
    self._sql = sqlalchemy.text
    self._connection = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool).connect()
    self._postgres = url.startswith('postgresql')
    self._key = zlib.crc32(name.encode())

  def acquire(self) -> None:
    sql = 'SELECT pg_advisory_lock(:key)' if self._postgres else 'SELECT GET_LOCK(:key, -1)'
    self._connection.execute(self._sql(sql), {'key': self._key if self._postgres else str(self._key)})

  def release(self) -> None:
    sql = 'SELECT pg_advisory_unlock(:key)' if self._postgres else 'SELECT RELEASE_LOCK(:key)'
    self._connection.execute(self._sql(sql), {'key': self._key if self._postgres else str(self._key)})

  def close(self) -> None:
    self._connection.close()


class _FileLock:
  """For SQLite: an flock on a file beside the database, which every process on that machine sees."""

  def __init__(self, path: pathlib.Path):
    self._file = path.open('w')

  def acquire(self) -> None:
    fcntl.flock(self._file, fcntl.LOCK_EX)

  def release(self) -> None:
    fcntl.flock(self._file, fcntl.LOCK_UN)

  def close(self) -> None:
    self._file.close()


@contextlib.contextmanager
def creation_lock(url: str, study_name: str, workdir: pathlib.Path):
  """The lock under which a process counts the study's trials and creates the next one."""
  if url.startswith('sqlite'):
    database = pathlib.Path(url.removeprefix('sqlite:///'))
    lock = _FileLock(database.with_name(database.name + '.lock') if database.parent.is_dir()
                     else workdir / LOCK_FILE)
  else:
    lock = _DatabaseLock(url, study_name)
  try:
    yield lock
  finally:
    lock.close()


def wait_for_running(study, poll_s: float = 2.0) -> None:
  """Returns once no trial of the study runs (other processes' included), so a report written then is
  final; the heartbeat fails the trials of processes that died."""
  import optuna  # noqa: PLC0415
  running = optuna.trial.TrialState.RUNNING
  announced = False
  while True:
    with warnings.catch_warnings():  # Experimental in Optuna's eyes; the heartbeat's own recovery.
      warnings.simplefilter('ignore', optuna.exceptions.ExperimentalWarning)
      optuna.storages.fail_stale_trials(study)
    others = [t.number for t in study.get_trials(deepcopy=False, states=(running,))]
    if not others:
      return
    if not announced:
      log.info('Waiting for trials %s of other processes before the final report', others)
      announced = True
    time.sleep(poll_s)
