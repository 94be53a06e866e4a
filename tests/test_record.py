"""One record schema: every measure name used anywhere is in regimes/core/record.py, and a
real record has exactly the schema's keys."""
import re
from pathlib import Path

from regimes import TrainConfig, Trainer
from regimes.core import record
from regimes.techniques import TECHNIQUES

PKG = Path(__file__).resolve().parents[1] / "regimes"
ALL_ON = dict(dataset="digits", subset=256, width=4, batch_size=64, epochs=2, augment=False, device="cpu",
              model="convnet_lcnn", mode="free", lr=0.05, gnorm_coef=0.01, beta_coef=1e-3, gamma_coef=1e-3,
              late_phase_k=2, late_phase_start=1, swa_start=1, sharpness_every=1, sharpness_iters=2,
              hess_trace_every=1, hess_trace_samples=1, input_curvature_every=1, input_curvature_iters=2,
              curvature_subset=32)


def test_schema_names_are_unique_and_described():
    names = [f.name for f in record.FIELDS]
    assert len(names) == len(set(names))
    assert all(f.meaning for f in record.FIELDS)
    assert set(record.METRICS) <= set(record.NAMES)


def test_each_technique_declares_exactly_its_schema_measures():
    declared = set()
    for t in TECHNIQUES:
        assert t.measures, t.name
        assert {record.BY_NAME[m].source for m in t.measures} == {t.name}, t.name
        declared |= set(t.measures)
    # ENorm's measures are only defined without LCNN (ENorm needs ReLU), so they are checked by
    # the schema's source above; everything a technique may add is declared by one of them
    assert declared == set(record.TECHNIQUE_MEASURES)


def test_a_record_has_exactly_the_schema_keys():
    rec = next(Trainer(TrainConfig(**ALL_ON)).run())
    trainer_keys = {f.name for f in record.FIELDS if f.source != "study"}
    assert set(rec) == trainer_keys


def test_names_used_by_study_and_analysis_are_in_the_schema():
    from regimes.analysis import load, plots
    from regimes.study import spec, trainable

    used = set(load.MEASURES) | {m for m, *_ in plots.CURVE_MEASURES} | set(trainable.TRAJECTORY)
    used.add(trainable.DECIDED_KEY)
    assert used <= set(record.NAMES), used - set(record.NAMES)
    # every schema measure is an objective the study spec accepts
    base = {"name": "m", "base": {"dataset": "digits", "epochs": 2}}
    for m in record.METRICS:
        spec.from_dict({**base, "search": {"kind": "optuna", "metric": m, "mode": "max", "num_samples": 1,
                                           "space": {"elr": {"loguniform": [1e-3, 1e-1]}}}})


def test_every_record_key_the_code_reads_is_in_the_schema():
    """`rec["name"]` / `rec.get("name")` anywhere in the package (the epoch record's name)."""
    pattern = re.compile(r"\brec(?:\[\"(\w+)\"\]|\.get\(\"(\w+)\")")
    used = {}
    for path in PKG.rglob("*.py"):
        for m in pattern.finditer(path.read_text()):
            used.setdefault(m.group(1) or m.group(2), str(path.relative_to(PKG)))
    unknown = {k: v for k, v in used.items() if k not in record.NAMES}
    assert len(used) > 20 and not unknown, unknown
