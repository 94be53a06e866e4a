"""TrainConfig: every knob of one run, flat, typed, validated and immutable.

One config per run; the resolved config goes into every result row. Build it
from keyword arguments, a dict (`TrainConfig.from_dict`), a YAML file
(`TrainConfig.from_yaml`) or CLI tokens (`TrainConfig.from_cli(["elr=0.01", ...])`).
Anything wrong raises `ConfigError`, whose message names the key and what is
allowed; the CLI turns it into exit code 2.

Validation is pydantic's (types and coercion of strings from the command line),
plus one declaration per field of its help text and allowed values (`knob`),
plus each group's cross-field rules (`_check_<group>` methods, run in field
order). The keys stay flat because Ray Tune's search spaces, the Parquet
columns and the CLI all name them directly; the groups below only organise
the declaration (core groups first, then one group per technique, runtime
last). List-valued fields are tuples, so a config is hashable.

This module imports no torch: the CLI's help and the study-spec validation
read it without paying for torch's import.

Units follow the papers: on the sphere the knob is the effective learning rate
(ELR, per step, for unit-norm scale-invariant weights), not the raw lr.
"""
from __future__ import annotations

import difflib
import math
from typing import Any, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import ConfigError

# classes C per dataset (chance accuracy 1/C); the analysis uses it when records lack num_classes
NUM_CLASSES = {"digits": 10, "synthetic": 10, "cifar10": 10, "cifar100": 100}
# training examples per dataset (regimes/core/data.py; digits: its fixed 80% split): bounds batch_size and subset
TRAIN_EXAMPLES = {"digits": 1438, "synthetic": 1024, "cifar10": 50000, "cifar100": 50000}
MAX_EPOCHS = 100_000      # a longer run is a typo (and its per-step rate array would not fit in memory)
# The largest rate, weight decay, or any float field (check_value): far above any divergence (a free-mode
# lr of 1e6 diverges in one epoch) and, times the sphere's rho0^2, still far below float32's largest
# number (3.4e38), beyond which torch's SGD step raises instead of diverging
MAX_RATE = 1e30
MAX_INT = 2**63 - 1       # every integer field is an int64 Parquet column
DATASETS = tuple(NUM_CLASSES)
BASE_MODELS = ("convnet", "resnet18")
MODEL_VARIANTS = ("", "_si", "_si_af", "_lcnn")
MODELS = tuple(b + v for b in BASE_MODELS for v in MODEL_VARIANTS)
MODES = ("sphere", "free")
DEVICES = ("auto", "cpu", "cuda")
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")
CPU_MEMORY = ("retain", "system")
GNORM_SCALINGS = ("per_sample", "seed")
LIPSCHITZ_BN_MODES = ("normalise", "clip")
LOSSES = ("ce", "squared")
LCNN_HEADS = ("spectral", "plain")
MAX_TOPK = 5              # sharpness_topk: the record has columns sharpness, hess_eig_2 .. hess_eig_5
SCHEDULES = ("constant", "step", "linear", "cosine", "exponential", "two_phase", "piecewise")


def knob(default, help: str, *, choices=None, min=None, max=None, min_open=False, allow=()):
    """A config field: its default, help text and allowed values.

    `min_open` makes `min` exclusive; `allow` lists extra values accepted
    outside the range (e.g. -1 meaning "same as ...").
    """
    return Field(default, description=help, json_schema_extra={
        "choices": choices, "min": min, "max": max, "min_open": min_open, "allow": tuple(allow)})


class _Group(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# --- core groups ---------------------------------------------------------------
class DataFields(_Group):
    dataset: str = knob("digits", "training data", choices=DATASETS)
    data_root: str = knob("data", "folder holding cifar-10-batches-py / cifar-100-python")
    download: bool = knob(False, "download CIFAR into data_root if it is missing (needs internet)")
    augment: bool = knob(True, "random crop (with padding) + horizontal flip, batched on the device")
    subset: int = knob(0, "train on the first N shuffled training examples (0 = all)", min=0)
    batch_size: int = knob(128, "minibatch size (examples)", min=1)
    corrupt_train: float = knob(0.0, "label noise: fraction of training examples (after subset) whose label is "
                                "replaced by a different class drawn at random; the same examples and labels "
                                "for every run seed (a fixed data seed)", min=0.0, max=1.0)

    def _check_data(self):
        n = TRAIN_EXAMPLES[self.dataset]
        if self.subset > n:
            raise ConfigError("subset", f"{self.subset} is larger than the {n} training examples of "
                              f"{self.dataset}; allowed: 0 (all) .. {n}")
        if self.batch_size > (self.subset or n):
            what = f"subset of {self.subset}" if self.subset else f"{n} training examples of {self.dataset}"
            raise ConfigError("batch_size", f"{self.batch_size} is larger than the {what}; "
                              f"allowed: 1 .. {self.subset or n}")


class ModelFields(_Group):
    model: str = knob("convnet_si", "architecture; *_si: fully scale-invariant (BN affine off, head frozen "
                      "at init_scale); *_si_af: BN affine on, everything trained; *_lcnn: low-curvature layers",
                      choices=MODELS)
    width: int = knob(16, "base width c (ConvNet: c, 2c, 4c, 8c; ResNet-18: c, 2c, 4c, 8c)", min=1)
    depth: int = knob(4, "ConvNet: number of conv stages (widths c * 2^i, capped at 8c)", min=1, max=12)
    init_scale: float = knob(10.0, "*_si models: Frobenius norm of the frozen head (paper: 10); "
                             "-1 keeps PyTorch's default init", min=0.0, min_open=True, allow=(-1.0,))

    def _check_model(self):
        if self.model.split("_")[0] == "resnet18" and self.depth != 4:
            raise ConfigError("depth", "resnet18* models have a fixed depth; leave depth at 4")


class OptimFields(_Group):
    mode: str = knob("sphere", "sphere: fixed ELR on the sphere of radius rho0; "
                     "free: plain SGD with lr, wd, momentum", choices=MODES)
    elr: float = knob(1e-3, "sphere mode: effective learning rate (per step, unit-norm SI weights)",
                      min=0.0, min_open=True, max=MAX_RATE)
    lr: float = knob(0.01, "free mode: learning rate of plain SGD", min=0.0, min_open=True, max=MAX_RATE)
    wd: float = knob(0.0, "weight decay (free mode; in sphere mode only non-SI params see it)", min=0.0,
                     max=MAX_RATE)
    momentum: float = knob(0.0, "heavy-ball momentum (torch SGD convention), 0 <= m < 1", min=0.0, max=0.999999)
    noninv_lr: float = knob(0.0, "lr of non-scale-invariant params in sphere mode: 0 = frozen, "
                            "-1 = same lr as the SI params (elr * rho0^2)", min=0.0, allow=(-1.0,))
    epochs: int = knob(30, "number of epochs", min=1, max=MAX_EPOCHS)
    seed: int = knob(0, "seed of init, data order and augmentation", min=0)
    loss: str = knob("ce", "training loss: ce (cross-entropy) or squared (||logits - onehot(y)||^2 / C, "
                     "mean over examples; the three-regimes reference code's squared loss)", choices=LOSSES)
    fbgd: bool = knob(False, "full-batch gradient descent: one optimiser step per epoch with the gradient of "
                      "the mean loss over the whole train set, accumulated over minibatches of batch_size "
                      "(BN batch statistics per minibatch; the last partial minibatch is dropped)")
    sphere_per_layer: bool = knob(False, "sphere mode: every scale-invariant group (each conv of a ConvNet) on "
                                  "its own sphere, radius its own init norm, lr = elr * rho0_group^2: the same "
                                  "ELR for each group instead of one joint sphere")

    def _check_optim(self):
        if self.sphere_per_layer and self.mode != "sphere":
            raise ConfigError("sphere_per_layer", "needs mode=sphere (free mode has no sphere)")
        if self.fbgd and self.late_phase_k > 1:
            raise ConfigError("fbgd", "late-phase weights cycle members per minibatch step; with fbgd there is "
                              "one step per epoch (set late_phase_k=1)")


class ScheduleFields(_Group):
    """The per-step rate schedule (formulas in regimes/core/schedules.py): drives elr or lr."""
    schedule: str = knob("constant", "per-step rate schedule", choices=SCHEDULES)
    elr_final: float = knob(0.0, "sphere mode: final ELR of linear/cosine/exponential/two_phase", min=0.0,
                            max=MAX_RATE)
    lr_final: float = knob(0.0, "free mode: final lr of linear/cosine/exponential/two_phase", min=0.0,
                           max=MAX_RATE)
    milestones: tuple[float, ...] = knob((0.5, 0.75), "step: fractions of training at which the rate is "
                                         "multiplied by step_factor")
    step_factor: float = knob(0.1, "step: factor applied at each milestone", min=0.0, min_open=True)
    switch_frac: float = knob(0.5, "two_phase: fraction of training run at elr, the rest at elr_final",
                              min=0.0, max=1.0)
    knots: tuple[tuple[float, float], ...] = knob((), "piecewise: [[fraction, rate], ...]; log-rate "
                                                  "interpolated between knots")
    warmup_epochs: float = knob(0.0, "linear warm-up from 0 over this many epochs (any schedule)", min=0.0,
                                max=MAX_EPOCHS)

    def _check_schedule(self):
        final_key = "elr_final" if self.mode == "sphere" else "lr_final"
        if self.schedule in ("exponential", "two_phase") and getattr(self, final_key) <= 0:
            raise ConfigError(final_key, f"schedule={self.schedule} needs {final_key} > 0")
        if self.schedule == "step":
            ms = list(self.milestones)
            if not ms or not all(0 < m < 1 for m in ms):
                raise ConfigError("milestones", "schedule=step needs a list of fractions of training in (0, 1), "
                                  f"e.g. [0.5, 0.75]; got {ms!r}")
            if ms != sorted(ms):
                raise ConfigError("milestones", f"must be increasing; got {ms!r}")
            rate = self.elr if self.mode == "sphere" else self.lr
            if math.log(rate) + len(ms) * math.log(self.step_factor) > math.log(MAX_RATE):
                raise ConfigError("step_factor", f"{self.step_factor:g} at each of {len(ms)} milestones takes the "
                                  f"rate above {MAX_RATE:g}; allowed: rate * step_factor^milestones <= {MAX_RATE:g}")
        if self.schedule == "piecewise":
            ks = [list(k) for k in self.knots]
            if not ks or not all(0 <= f <= 1 and 0 < r <= MAX_RATE for f, r in ks):
                raise ConfigError("knots", "schedule=piecewise needs [[fraction, rate], ...] with fractions in "
                                  f"[0, 1] and rates in (0, {MAX_RATE:g}]; got {ks!r}")
            if [k[0] for k in ks] != sorted(k[0] for k in ks) or len({k[0] for k in ks}) != len(ks):
                raise ConfigError("knots", f"fractions must be strictly increasing; got {ks!r}")


class MeasureFields(_Group):
    train_eval_every: int = knob(1, "epochs between full-train-set passes (train_loss/acc); "
                                 "the last epoch is always measured", min=1)
    grad_norms: bool = knob(False, "full-batch gradient at the end-of-epoch weights (train set, BN train mode, "
                            "no augmentation, minibatches of batch_size), at the train_eval_every cadence: "
                            "eff_grad_norm_end, grad_norm_full, grad_norm_si, grad_norm_noninv")
    cos_init: bool = knob(False, "cos_init: cosine similarity of the SI weights to their initial values, "
                          "every epoch")


# --- technique groups (all off by default; the hooks are in regimes/techniques/) ---------
class LCNNFields(_Group):
    """Low-curvature networks (Srinivas et al. 2022); the layers exist in *_lcnn models only."""
    beta_coef: float = knob(0.0, "LCNN: coefficient of sum(beta) over centered-softplus layers", min=0.0)
    gamma_coef: float = knob(0.0, "LCNN: coefficient of sum|log gamma| over Lipschitz-BN layers", min=0.0)
    gnorm_coef: float = knob(0.0, "gradient-norm penalty coefficient (double backprop; any model)", min=0.0)
    gnorm_scaling: str = knob("per_sample", "per_sample: coef * mean_i ||dl_i/dx_i||^2 (B-independent, "
                              "default); seed: coef * 1e5/B * ||d CE/dx||^2 (the reference code; ~1/B^2)",
                              choices=GNORM_SCALINGS)
    softplus_beta: float = knob(5.0, "*_lcnn: initial beta of every centered softplus", min=0.01, min_open=True)
    lipschitz_bn: bool = knob(True, "*_lcnn: gamma-Lipschitz BN (else plain affine BN)")
    lipschitz_bn_mode: str = knob("normalise", "normalise: BN Lipschitz constant = gamma; clip: <= gamma",
                                  choices=LIPSCHITZ_BN_MODES)
    lipschitz_bn_gamma: float = knob(4.0, "*_lcnn: initial Lipschitz bound gamma of every Lipschitz BN "
                                     "(learnable; |log gamma| penalised by gamma_coef)", min=0.0, min_open=True)
    spectral_norm: bool = knob(True, "*_lcnn: divide each conv by the spectral norm of its true operator")
    spectral_warm_iters: int = knob(10, "*_lcnn: power iterations at the first forward (then 1 per step)", min=1)
    lcnn_head: str = knob("spectral", "*_lcnn: the final linear layer divided by its spectral norm (spectral, "
                          "as the LCNN paper's code) or a plain Linear (plain)", choices=LCNN_HEADS)

    def _check_lcnn(self):
        lcnn = self.model.endswith("_lcnn")
        if self.beta_coef > 0 and not lcnn:
            raise ConfigError("beta_coef", f"needs a *_lcnn model (centered softplus); model is {self.model}")
        if self.gamma_coef > 0 and not (lcnn and self.lipschitz_bn):
            raise ConfigError("gamma_coef", "needs a *_lcnn model with lipschitz_bn=true")


class LatePhaseFields(_Group):
    """Late-phase weights (von Oswald et al. 2021)."""
    late_phase_k: int = knob(1, "late-phase members K (BN params + stats + head); 1 = off", min=1)
    late_phase_start: int = knob(1, "epoch T0 (1-based) at which the K members are created", min=1)
    late_phase_noise: float = knob(0.0, "std of the Gaussian added to members > 0 at T0", min=0.0)
    late_phase_reduce: str = knob("sum", "shared weights step with the sum (seed) or mean of K gradients",
                                  choices=("sum", "mean"))
    late_phase_boundary: str = knob("carry", "epoch boundary: carry (a K-cycle runs on into the next "
                                    "epoch) or restart (member 0 each epoch, an unfinished cycle's "
                                    "shared gradient dropped: the reference code)", choices=("carry", "restart"))

    def _check_late_phase(self):
        if self.late_phase_k > 1 and self.late_phase_start > self.epochs:
            raise ConfigError("late_phase_start", f"{self.late_phase_start} is after the last epoch ({self.epochs})")


class SWAFields(_Group):
    """Stochastic weight averaging, with BN statistics recomputed."""
    swa_start: int = knob(0, "SWA: average the weights every epoch from this epoch on (0 = off)", min=0)

    def _check_swa(self):
        if self.swa_start > self.epochs:
            raise ConfigError("swa_start", f"{self.swa_start} is after the last epoch ({self.epochs})")


class ENormFields(_Group):
    """Equi-normalisation (Stock et al. 2019)."""
    enorm_c: float = knob(0.0, "ENorm asymmetry c (0 = off; 1 = plain L2 balance)", min=0.0)
    enorm_every: int = knob(1, "ENorm: one balancing cycle every N optimiser steps", min=1)

    def _check_enorm(self):
        if self.enorm_c > 0 and self.model.endswith("_lcnn"):
            raise ConfigError("enorm_c", "ENorm needs positively homogeneous activations (ReLU); "
                              "*_lcnn models use softplus")


class CurvatureFields(_Group):
    """Curvature measures (cost: benchmarks/measure_cost.py)."""
    sharpness_every: int = knob(0, "epochs between sharpness measures (0 = never; last epoch included)", min=0)
    sharpness_iters: int = knob(20, "Lanczos iterations (Hessian-vector products) for sharpness", min=1)
    sharpness_topk: int = knob(1, "top Hessian eigenvalues reported from the sharpness Lanczos run: sharpness "
                               "and hess_eig_2 .. hess_eig_k", min=1, max=MAX_TOPK)
    fisher_every: int = knob(0, "epochs between Fisher measures, fisher_top (Lanczos, sharpness_iters steps) and "
                             "fisher_trace (Hutchinson, hess_trace_samples probes); 0 = never", min=0)
    hess_trace_every: int = knob(0, "epochs between Hutchinson trace measures (0 = never)", min=0)
    hess_trace_samples: int = knob(10, "Rademacher probes for the Hutchinson trace", min=1)
    input_curvature_every: int = knob(0, "epochs between input-curvature measures (0 = never)", min=0)
    input_curvature_iters: int = knob(10, "power iterations for input curvature", min=1)
    curvature_subset: int = knob(1000, "fixed training examples (first N, seed-independent) for the "
                                 "curvature measures", min=1)

    def _check_curvature(self):
        if self.sharpness_topk > 1 and self.sharpness_topk > self.sharpness_iters:
            raise ConfigError("sharpness_topk", f"{self.sharpness_topk} eigenvalues need sharpness_iters >= "
                              f"{self.sharpness_topk} Lanczos steps (got {self.sharpness_iters})")


class RuntimeFields(_Group):
    """Where and how tensors live; never changes a result beyond float rounding."""
    device: str = knob("auto", "auto picks cuda when available", choices=DEVICES)
    memory_format: str = knob("auto", "layout of image tensors and conv weights: channels_last (NHWC) runs "
                              "convolutions, BN and pooling ~1.7x faster on CPU; auto = channels_last on CPU, "
                              "contiguous (NCHW) on CUDA. Runs are deterministic in either layout; the two "
                              "layouts differ at float rounding level", choices=MEMORY_FORMATS)
    cpu_memory: str = knob("retain", "CPU runs: 'retain' keeps freed tensor memory in the process (glibc "
                           "malloc: blocks up to 32 MiB from the heap, trimmed only above 1 GiB free) so every "
                           "step's large activations reuse pages instead of faulting in fresh zeroed ones from "
                           "the OS (~20k page faults per step at width 16, batch 128); process-wide, memory is "
                           "kept at its peak like a GPU caching allocator. 'system' leaves malloc's "
                           "defaults. Results are the same either way", choices=CPU_MEMORY)


# Declaration order = field order = Parquet column order (pydantic collects the fields of
# the last base first, so the bases are listed in reverse).
_GROUPS = (DataFields, ModelFields, OptimFields, ScheduleFields, MeasureFields, LCNNFields,
           LatePhaseFields, SWAFields, ENormFields, CurvatureFields, RuntimeFields)


class TrainConfig(*reversed(_GROUPS)):
    """Every knob of one run (see the module docstring)."""

    def __init__(self, **values):
        try:
            super().__init__(**values)
        except ValidationError as e:
            raise _config_error(e, type(self)) from None

    # --- validation ----------------------------------------------------------
    @field_validator("*", mode="before")
    @classmethod
    def _parse(cls, value, info):
        kind = _kind(cls, info.field_name)
        if kind in (int, float) and isinstance(value, bool):
            raise ConfigError(info.field_name, f"expected {_NOUN[kind]}, got {value!r}")
        if kind is bool:
            if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
                return value.lower() in _TRUE
            if not isinstance(value, bool) and not (type(value) is int and value in (0, 1)):
                raise ConfigError(info.field_name, f"expected a boolean (true/false), got {value!r}")
            return bool(value)
        if kind is tuple:
            if isinstance(value, str):
                import yaml

                try:
                    value = yaml.safe_load(value)
                except yaml.YAMLError:
                    raise ConfigError(info.field_name, f"expected a list, got {value!r}") from None
            if not isinstance(value, (list, tuple)):
                raise ConfigError(info.field_name, f"expected a list, got {value!r}")
        return value

    @field_validator("*", mode="after")
    @classmethod
    def _in_range(cls, value, info):
        check_value(cls, info.field_name, value)
        return value

    @model_validator(mode="after")
    def _relations(self):
        for group in _GROUPS:
            for name, check in vars(group).items():
                if name.startswith("_check_"):
                    check(self)
        return self

    # --- construction ----------------------------------------------------------
    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(cls.model_fields)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, where: str = "") -> "TrainConfig":
        """Build from a mapping; values may be strings (CLI) or typed (YAML/dict).
        `where` prefixes the key of an error (e.g. `base` in a study spec)."""
        if not isinstance(d, Mapping):
            raise ConfigError(where or "config", f"expected a mapping of config keys, got {type(d).__name__}")
        try:
            return cls(**d)
        except ConfigError as e:
            if where:
                raise ConfigError(_join(where, e.key), e.message) from None
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
        return self.model_dump()

    def replace(self, **changes) -> "TrainConfig":
        return type(self).from_dict({**self.to_dict(), **changes})

    # --- derived ------------------------------------------------------------------
    @property
    def base_model(self) -> str:
        return self.model.split("_", 1)[0]

    @property
    def variant(self) -> str:
        """'' (plain), 'si', 'si_af' or 'lcnn'."""
        parts = self.model.split("_", 1)
        return parts[1] if len(parts) > 1 else ""


# ---------------------------------------------------------------------------
# field metadata, shared with the study spec (regimes/study/spec)
_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}
_NOUN = {int: "an integer", float: "a number", str: "a string", bool: "a boolean", tuple: "a list"}


def _kind(cls, name: str) -> type:
    """The plain type of a field: int, float, str, bool or tuple."""
    t = cls.model_fields[name].annotation
    return getattr(t, "__origin__", t)


def field_kind(name: str) -> type:
    """int, float, str, bool or tuple: the type of TrainConfig field `name`."""
    return _kind(TrainConfig, name)


def _meta(cls, name: str) -> dict:
    return cls.model_fields[name].json_schema_extra or {}


def allowed_text(name: str, cls=None) -> str:
    m = _meta(cls or TrainConfig, name)
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


def check_value(cls, name: str, value) -> None:
    """Choices, range and finiteness of one (typed) field value; raises ConfigError.
    Beyond its own range, every float is at most MAX_RATE in size and every integer fits
    64 bits (see MAX_RATE and MAX_INT)."""
    m = _meta(cls, name)
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(name, f"must be finite, got {value!r}")
    if m.get("choices") and value not in m["choices"]:
        raise ConfigError(name, f"{value!r} is not allowed; {allowed_text(name, cls)}")
    if value in m.get("allow", ()):
        return
    lo, hi = m.get("min"), m.get("max")
    if (lo is not None and (value < lo or (m["min_open"] and value == lo))) or (hi is not None and value > hi):
        raise ConfigError(name, f"{value!r} is out of range; allowed: {allowed_text(name, cls)}")
    if isinstance(value, float) and abs(value) > MAX_RATE:
        raise ConfigError(name, f"{value!r} is out of range; allowed: {allowed_text(name, cls)}, "
                          f"at most {MAX_RATE:g}")
    if type(value) is int and abs(value) > MAX_INT:
        raise ConfigError(name, f"{value} is out of range; allowed: a 64-bit integer (at most {MAX_INT})")


def unknown_key_message(key: str, known) -> str:
    close = difflib.get_close_matches(str(key), list(known), n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return f"unknown config key{hint}; allowed keys: {', '.join(sorted(known))}"


def _config_error(e: ValidationError, cls) -> ConfigError:
    """The first of pydantic's errors as one ConfigError naming the key."""
    err = e.errors(include_url=False)[0]
    key = str(err["loc"][0]) if err["loc"] else "config"
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, ConfigError):
        return cause
    if err["type"] == "extra_forbidden":
        return ConfigError(key, unknown_key_message(key, cls.model_fields))
    if key in cls.model_fields:
        kind = _kind(cls, key)
        what = "a list of [fraction, rate] pairs" if key == "knots" else \
            "a list of numbers" if kind is tuple else _NOUN.get(kind, kind.__name__)
        return ConfigError(key, f"expected {what}, got {err['input']!r}")
    return ConfigError(key, err["msg"])


def describe_fields() -> str:
    """One line per field: name, default, allowed values, help (for `regimes train --help`)."""
    lines = []
    for name, f in TrainConfig.model_fields.items():
        allowed = allowed_text(name)
        default = list(f.default) if isinstance(f.default, tuple) else f.default
        lines.append(f"  {name:<18} = {default!s:<12} {f.description}" + (f" [{allowed}]" if allowed else ""))
    return "\n".join(lines)


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key
