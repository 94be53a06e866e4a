"""Study spec: one YAML file -> a validated `Study`, before Ray starts.

    name: three-regimes-digits
    base: {dataset: digits, model: convnet_si, width: 16, mode: sphere, epochs: 60}
    search:
      kind: grid                       # grid | optuna | boundary
      space: {elr: [1.0e-4, 1.0e-2, 1.0], seed: [0, 1]}
    resources: {cpu: 1, gpu: 0}
    early_stop: {window: 4, converge_window: 9, min_epochs: 8}   # optional: stop decided trials

A boundary search (regimes/study/boundary.py) brackets the regime boundaries
along one axis instead of gridding it:

    search:
      kind: boundary
      axis: elr                        # a float TrainConfig field, searched in log space
      range: [1.0e-4, 1.0e-1]
      resolution: 1.19                 # stop when every boundary is bracketed within this factor
      budget: 60                       # trials at most, over all lines
      probes_per_round: 2              # trials per line per round (parallel bisection)
      initial: 5                       # log-spaced first scan of each line
      space: {wd: [0.0, 5.0e-4], seed: [0, 1]}   # other axes: a grid; one search per combination

Every key of `base` and `search.space` is a TrainConfig field. Validation goes
all the way down to config values: a grid builds the TrainConfig of every
combination; an Optuna space builds the configs at its bounds and choices. Any
problem raises `ConfigError` whose key is the path in the YAML
(`search.space.elr.loguniform`) and whose message says what is allowed.

The modules: `model` (the `Study` and `Distribution` objects), `specfile` and
`sections` (the file and its sections as pydantic models), `values` (value types
and parsers), `messages` (pydantic's errors as one ConfigError), `validate`
(`load`, `from_dict` and the checks of the configs a study runs), `files` (UTF-8
YAML without repeated keys, folder-safe names, writable folders; also used by
`regimes train`) and `preflight` (what the machine must provide before Ray starts:
storage, data on disk, resources, an unchanged spec on resume).
"""
from regimes.errors import ConfigError

from .model import Distribution, Study
from .sections import Asha
from .validate import from_dict, load

__all__ = ["Asha", "ConfigError", "Distribution", "Study", "from_dict", "load"]
