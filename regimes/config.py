"""TrainConfig: every knob of one run, flat, typed and validated.

One config per run; the resolved config goes into every result row. Build it
from a dict (`TrainConfig.from_dict`), a YAML file (`TrainConfig.from_yaml`) or
CLI tokens (`TrainConfig.from_cli(["elr=0.01", ...])`). Anything wrong raises
`ConfigError`, whose message names the key and what is allowed; the CLI turns
it into exit code 2.

Units follow the papers: on the sphere the knob is the effective learning rate
(ELR, per step, for unit-norm scale-invariant weights), not the raw lr.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

DATASETS = ("digits", "synthetic", "cifar10", "cifar100")
BASE_MODELS = ("convnet", "resnet18")
MODEL_VARIANTS = ("", "_si", "_si_af", "_lcnn")
MODELS = tuple(b + v for b in BASE_MODELS for v in MODEL_VARIANTS)
MODES = ("sphere", "free")
DEVICES = ("auto", "cpu", "cuda")
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")
CPU_MEMORY = ("retain", "system")
GNORM_SCALINGS = ("per_sample", "seed")     # must match regimes.penalties
LIPSCHITZ_BN_MODES = ("normalise", "clip")
SCHEDULES = ("constant", "step", "linear", "cosine", "exponential", "two_phase", "piecewise")


class ConfigError(ValueError):
    """A bad config value. `key` names the offending field (or path)."""

    def __init__(self, key: str, message: str):
        self.key = key
        self.message = message
        super().__init__(f"{key}: {message}")

    def __reduce__(self):  # picklable, so Ray can carry it from a worker to the driver
        return (ConfigError, (self.key, self.message))


def _f(default, help: str, *, choices=None, min=None, max=None, min_open=False, allow=()):
    """A config field with its help text and its allowed range.

    `min_open` makes `min` exclusive; `allow` lists extra values accepted
    outside the range (e.g. -1 meaning "same as ...").
    """
    meta = {"help": help, "choices": choices, "min": min, "max": max,
            "min_open": min_open, "allow": tuple(allow)}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class TrainConfig:
    # --- data -----------------------------------------------------------
    dataset: str = _f("digits", "training data", choices=DATASETS)
    data_root: str = _f("data", "folder holding cifar-10-batches-py / cifar-100-python")
    download: bool = _f(False, "download CIFAR into data_root if it is missing (needs internet)")
    augment: bool = _f(True, "random crop (with padding) + horizontal flip, batched on the device")
    subset: int = _f(0, "train on the first N shuffled training examples (0 = all)", min=0)
    batch_size: int = _f(128, "minibatch size (examples)", min=1)
    # --- model ----------------------------------------------------------
    model: str = _f("convnet_si", "architecture; *_si: fully scale-invariant (BN affine off, "
                    "head frozen at init_scale); *_si_af: BN affine on, everything trained",
                    choices=MODELS)
    width: int = _f(16, "base width c (ConvNet: c, 2c, 4c, 8c; ResNet-18: c, 2c, 4c, 8c)", min=1)
    depth: int = _f(4, "ConvNet: number of conv stages (widths c * 2^i, capped at 8c)", min=1, max=12)
    init_scale: float = _f(10.0, "*_si models: Frobenius norm of the frozen head (paper: 10); "
                           "-1 keeps PyTorch's default init", min=0.0, min_open=True, allow=(-1.0,))
    # --- optimisation ---------------------------------------------------
    mode: str = _f("sphere", "sphere: fixed ELR on the sphere of radius rho0; "
                   "free: plain SGD with lr, wd, momentum", choices=MODES)
    elr: float = _f(1e-3, "sphere mode: effective learning rate (per step, unit-norm SI weights)",
                    min=0.0, min_open=True)
    lr: float = _f(0.01, "free mode: learning rate of plain SGD", min=0.0, min_open=True)
    wd: float = _f(0.0, "weight decay (free mode; in sphere mode only non-SI params see it)", min=0.0)
    momentum: float = _f(0.0, "heavy-ball momentum (torch SGD convention), 0 <= m < 1", min=0.0, max=0.999999)
    noninv_lr: float = _f(0.0, "lr of non-scale-invariant params in sphere mode: 0 = frozen, "
                          "-1 = same lr as the SI params (elr * rho0^2)", min=0.0, allow=(-1.0,))
    epochs: int = _f(30, "number of epochs", min=1)
    seed: int = _f(0, "seed of init, data order and augmentation", min=0)
    # --- rate schedule (regimes/optim/schedules.py): drives elr (sphere) or lr (free) ---
    schedule: str = _f("constant", "per-step rate schedule", choices=SCHEDULES)
    elr_final: float = _f(0.0, "sphere mode: final ELR of linear/cosine/exponential/two_phase", min=0.0)
    lr_final: float = _f(0.0, "free mode: final lr of linear/cosine/exponential/two_phase", min=0.0)
    milestones: list = _f([0.5, 0.75], "step: fractions of training at which the rate is multiplied "
                          "by step_factor")
    step_factor: float = _f(0.1, "step: factor applied at each milestone", min=0.0, min_open=True)
    switch_frac: float = _f(0.5, "two_phase: fraction of training run at elr, the rest at elr_final",
                            min=0.0, max=1.0)
    knots: list = _f([], "piecewise: [[fraction, rate], ...]; log-rate interpolated between knots")
    warmup_epochs: float = _f(0.0, "linear warm-up from 0 over this many epochs (any schedule)", min=0.0)
    # --- measures -------------------------------------------------------
    train_eval_every: int = _f(1, "epochs between full-train-set passes (train_loss/acc); "
                               "the last epoch is always measured", min=1)
    # === techniques (issue 5): LCNN, late-phase, SWA, ENorm, curvature measures ===
    # All off by default; each is composed before the step loop (regimes/train.py).
    # --- LCNN (Srinivas et al. 2022); the layers exist in *_lcnn models only ---
    beta_coef: float = _f(0.0, "LCNN: coefficient of sum(beta) over centered-softplus layers", min=0.0)
    gamma_coef: float = _f(0.0, "LCNN: coefficient of sum|log gamma| over Lipschitz-BN layers", min=0.0)
    gnorm_coef: float = _f(0.0, "gradient-norm penalty coefficient (double backprop; any model)", min=0.0)
    gnorm_scaling: str = _f("per_sample", "per_sample: coef * mean_i ||dl_i/dx_i||^2 (B-independent, "
                            "default); seed: coef * 1e5/B * ||d CE/dx||^2 (the reference code; ~1/B^2)",
                            choices=GNORM_SCALINGS)
    softplus_beta: float = _f(5.0, "*_lcnn: initial beta of every centered softplus", min=0.01, min_open=True)
    lipschitz_bn: bool = _f(True, "*_lcnn: gamma-Lipschitz BN (else plain affine BN)")
    lipschitz_bn_mode: str = _f("normalise", "normalise: BN Lipschitz constant = gamma; clip: <= gamma",
                                choices=LIPSCHITZ_BN_MODES)
    lipschitz_bn_gamma: float = _f(4.0, "*_lcnn: initial Lipschitz bound gamma of every Lipschitz BN "
                                   "(learnable; |log gamma| penalised by gamma_coef)", min=0.0, min_open=True)
    spectral_norm: bool = _f(True, "*_lcnn: divide each conv by the spectral norm of its true operator")
    spectral_warm_iters: int = _f(10, "*_lcnn: power iterations at the first forward (then 1 per step)", min=1)
    # --- late-phase weights (von Oswald et al. 2021) ---------------------------
    late_phase_k: int = _f(1, "late-phase members K (BN params + stats + head); 1 = off", min=1)
    late_phase_start: int = _f(1, "epoch T0 (1-based) at which the K members are created", min=1)
    late_phase_noise: float = _f(0.0, "std of the Gaussian added to members > 0 at T0", min=0.0)
    late_phase_reduce: str = _f("sum", "shared weights step with the sum (seed) or mean of K gradients",
                                choices=("sum", "mean"))
    swa_start: int = _f(0, "SWA: average the weights every epoch from this epoch on (0 = off)", min=0)
    # --- ENorm (Stock et al. 2019) ----------------------------------------------
    enorm_c: float = _f(0.0, "ENorm asymmetry c (0 = off; 1 = plain L2 balance)", min=0.0)
    enorm_every: int = _f(1, "ENorm: one balancing cycle every N optimiser steps", min=1)
    # --- curvature measures (cost: benchmarks/measure_cost.py) -------------------
    sharpness_every: int = _f(0, "epochs between sharpness measures (0 = never; last epoch included)", min=0)
    sharpness_iters: int = _f(20, "Lanczos iterations (Hessian-vector products) for sharpness", min=1)
    hess_trace_every: int = _f(0, "epochs between Hutchinson trace measures (0 = never)", min=0)
    hess_trace_samples: int = _f(10, "Rademacher probes for the Hutchinson trace", min=1)
    input_curvature_every: int = _f(0, "epochs between input-curvature measures (0 = never)", min=0)
    input_curvature_iters: int = _f(10, "power iterations for input curvature", min=1)
    curvature_subset: int = _f(1000, "fixed training examples (first N, seed-independent) for the "
                               "curvature measures", min=1)
    # --- runtime --------------------------------------------------------
    device: str = _f("auto", "auto picks cuda when available", choices=DEVICES)
    memory_format: str = _f("auto", "layout of image tensors and conv weights: channels_last (NHWC) runs "
                            "convolutions, BN and pooling ~1.7x faster on CPU; auto = channels_last on CPU, "
                            "contiguous (NCHW) on CUDA. Runs are deterministic in either layout; the two "
                            "layouts differ at float rounding level", choices=MEMORY_FORMATS)
    cpu_memory: str = _f("retain", "CPU runs: 'retain' keeps freed tensor memory in the process (glibc "
                         "malloc: blocks up to 32 MiB from the heap, trimmed only above 1 GiB free) so every step's large "
                         "activations reuse pages instead of faulting in fresh zeroed ones from the OS "
                         "(~20k page faults per step at width 16, batch 128); process-wide, memory is "
                         "kept at its peak like a GPU caching allocator. 'system' leaves malloc's "
                         "defaults. Results are the same either way", choices=CPU_MEMORY)

    # ------------------------------------------------------------------
    def __post_init__(self):
        for f in fields(self):
            _check_value(f, getattr(self, f.name))
        self._check_relations()

    def _check_relations(self):
        base = self.model.split("_")[0]
        if base == "resnet18" and self.depth != 4:
            raise ConfigError("depth", "resnet18* models have a fixed depth; leave depth at 4")
        from .optim import schedules

        schedules.check(self)
        self._check_techniques()

    def _check_techniques(self):
        lcnn = self.model.endswith("_lcnn")
        if self.beta_coef > 0 and not lcnn:
            raise ConfigError("beta_coef", f"needs a *_lcnn model (centered softplus); model is {self.model}")
        if self.gamma_coef > 0 and not (lcnn and self.lipschitz_bn):
            raise ConfigError("gamma_coef", "needs a *_lcnn model with lipschitz_bn=true")
        if self.enorm_c > 0 and lcnn:
            raise ConfigError("enorm_c", "ENorm needs positively homogeneous activations (ReLU); "
                              "*_lcnn models use softplus")
        if self.late_phase_k > 1 and self.late_phase_start > self.epochs:
            raise ConfigError("late_phase_start", f"{self.late_phase_start} is after the last epoch ({self.epochs})")
        if self.swa_start > self.epochs:
            raise ConfigError("swa_start", f"{self.swa_start} is after the last epoch ({self.epochs})")

    # ------------------------------------------------------------------
    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, where: str = "") -> "TrainConfig":
        """Build from a mapping; values may be strings (CLI) or typed (YAML/dict)."""
        if not isinstance(d, Mapping):
            raise ConfigError(where or "config", f"expected a mapping of config keys, got {type(d).__name__}")
        known = {f.name: f for f in fields(cls)}
        kwargs = {}
        for key, value in d.items():
            if key not in known:
                raise ConfigError(_join(where, key), _unknown_key_message(key, known))
            kwargs[key] = _coerce(known[key], value, _join(where, key))
        try:
            return cls(**kwargs)
        except ConfigError as e:
            if where:
                raise ConfigError(_join(where, e.key), str(e).split(": ", 1)[1]) from None
            raise

    @classmethod
    def from_yaml(cls, path: str) -> "TrainConfig":
        import yaml

        try:
            with open(path) as fh:
                data = yaml.safe_load(fh) or {}
        except FileNotFoundError:
            raise ConfigError(str(path), "no such file") from None
        except yaml.YAMLError as e:
            raise ConfigError(str(path), f"not valid YAML ({e})") from None
        return cls.from_dict(data)

    @classmethod
    def from_cli(cls, tokens: list[str], base: Mapping[str, Any] | None = None) -> "TrainConfig":
        """`key=value` tokens, applied over `base`. Values are parsed by field type."""
        d = dict(base or {})
        for tok in tokens:
            if "=" not in tok:
                raise ConfigError(tok, "expected key=value")
            k, v = tok.split("=", 1)
            d[k.strip()] = v.strip()
        return cls.from_dict(d)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "TrainConfig":
        return TrainConfig.from_dict({**self.to_dict(), **changes})

    # derived --------------------------------------------------------------
    @property
    def base_model(self) -> str:
        return self.model.split("_", 1)[0]

    @property
    def variant(self) -> str:
        """'' (plain), 'si', 'si_af' or 'lcnn'."""
        parts = self.model.split("_", 1)
        return parts[1] if len(parts) > 1 else ""


def describe_fields() -> str:
    """One line per field: name, default, allowed values, help (for `regimes train --help`)."""
    lines = []
    for f in fields(TrainConfig):
        m = f.metadata
        allowed = _allowed_text(f)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        lines.append(f"  {f.name:<18} = {default!s:<12} {m['help']}" + (f" [{allowed}]" if allowed else ""))
    return "\n".join(lines)


# ---------------------------------------------------------------------------
def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _unknown_key_message(key: str, known) -> str:
    close = difflib.get_close_matches(str(key), list(known), n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return f"unknown config key{hint}; allowed keys: {', '.join(sorted(known))}"


def _type_of(f: dataclasses.Field):
    """The field's type; annotations are strings here (`from __future__ import annotations`)."""
    t = f.type
    return {"str": str, "int": int, "float": float, "bool": bool}.get(t, t) if isinstance(t, str) else t


_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}


def _coerce(f: dataclasses.Field, value: Any, key: str):
    t = _type_of(f)
    tname = getattr(t, "__name__", str(t))
    if t is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(key, f"expected a boolean (true/false), got {value!r}")
    if t is int:
        if isinstance(value, bool):
            raise ConfigError(key, f"expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                try:
                    fv = float(value)
                except ValueError:
                    fv = None
                if fv is not None and fv.is_integer():
                    return int(fv)
        raise ConfigError(key, f"expected an integer, got {value!r}")
    if t is float:
        if isinstance(value, bool):
            raise ConfigError(key, f"expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(key, f"expected a number, got {value!r}")
    if t is str:
        if isinstance(value, str):
            return value
        raise ConfigError(key, f"expected a string, got {value!r}")
    if t in (list, "list") or tname.startswith("list"):
        if isinstance(value, str):
            import yaml

            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError:
                raise ConfigError(key, f"expected a list, got {value!r}") from None
        if isinstance(value, (list, tuple)):
            return list(value)
        raise ConfigError(key, f"expected a list, got {value!r}")
    return value


def _allowed_text(f: dataclasses.Field) -> str:
    m = f.metadata
    if m.get("choices"):
        return "one of " + ", ".join(m["choices"])
    parts = []
    if m.get("min") is not None:
        parts.append(f"{'>' if m['min_open'] else '>='} {m['min']}")
    if m.get("max") is not None:
        parts.append(f"<= {m['max']}")
    text = " and ".join(parts)
    if m.get("allow"):
        text += (" or " if text else "") + " or ".join(str(a) for a in m["allow"])
    return text


def _check_value(f: dataclasses.Field, value):
    m = f.metadata
    t = _type_of(f)
    if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ConfigError(f.name, f"must be finite, got {value!r}")
    if t in (int, float) and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ConfigError(f.name, f"expected a number, got {value!r}")
    if t is str and not isinstance(value, str):
        raise ConfigError(f.name, f"expected a string, got {value!r}")
    if t is bool and not isinstance(value, bool):
        raise ConfigError(f.name, f"expected a boolean, got {value!r}")
    if m.get("choices") and value not in m["choices"]:
        raise ConfigError(f.name, f"{value!r} is not allowed; {_allowed_text(f)}")
    if value in m.get("allow", ()):
        return
    lo, hi = m.get("min"), m.get("max")
    if lo is not None and (value < lo or (m["min_open"] and value == lo)):
        raise ConfigError(f.name, f"{value!r} is out of range; allowed: {_allowed_text(f)}")
    if hi is not None and value > hi:
        raise ConfigError(f.name, f"{value!r} is out of range; allowed: {_allowed_text(f)}")
