"""The rows of the doctor's verdict and their grading, shared by its checks (doctor.py) and comparisons."""

import dataclasses


@dataclasses.dataclass(frozen=True)
class Check:
  """One row of the verdict: what was measured, what a healthy run shows, and what to do otherwise."""

  name: str
  status: str  # 'pass' | 'warn' | 'fail' | 'skipped' (cannot be measured on this model; `advice` says why)
  value: float | str
  expected: str
  advice: str = ''
  details: dict = dataclasses.field(default_factory=dict)  # Per-layer numbers, where a check has them.


def skipped(name: str, reason: str) -> Check:
  return Check(name, 'skipped', 'not measured', 'n/a', reason)


def status(fail: bool, warn: bool) -> str:
  return 'fail' if fail else 'warn' if warn else 'pass'
