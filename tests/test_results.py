"""The Parquet layout of a results folder: list-valued config fields as list columns,
trials.parquet updated in place, readable without this package."""
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from regimes import TrainConfig, results
from regimes.cli import main


def test_list_valued_fields_are_list_columns_and_a_dataset_over_mixed_trials_reads(tmp_path):
    plain = TrainConfig(dataset="digits", epochs=1)
    knotted = TrainConfig(dataset="digits", epochs=1, schedule="piecewise", knots=[[0, 0.1], [1, 0.001]],
                          milestones=[0.25])
    for tid, cfg in (("a", plain), ("b", knotted)):      # a's knots are empty: no element type to infer
        results.write_trial_epochs(tmp_path, tid, results.epoch_rows(cfg, [{"epoch": 1, "elr": 0.1}], "s"))
    t = ds.dataset(tmp_path / "epochs", format="parquet", partitioning="hive").to_table()
    assert t.schema.field("knots").type == pa.list_(pa.list_(pa.float64()))
    assert t.schema.field("milestones").type == pa.list_(pa.float64())
    got = {r["trial_id"]: (r["knots"], r["milestones"]) for r in t.to_pylist()}
    assert got == {"a": ([], [0.5, 0.75]), "b": ([[0.0, 0.1], [1.0, 0.001]], [0.25])}
    assert results.SCHEMA_VERSION == 2 and set(t.column("schema_version").to_pylist()) == {2}


def test_a_second_train_into_the_same_folder_adds_its_trial(tmp_path, capsys):
    out = tmp_path / "runs"
    common = ["dataset=digits", "width=4", "epochs=1", "batch_size=64", "subset=256", "augment=false", "--quiet"]
    assert main(["train", *common, f"out={out}", "--name", "a"]) == 0
    assert main(["train", *common, "elr=0.01", f"out={out}", "--name", "b"]) == 0
    assert main(["train", *common, "elr=0.02", f"out={out}", "--name", "a"]) == 0     # a again: replaced
    rows = pq.read_table(out / "trials.parquet").to_pylist()
    assert sorted((r["trial_id"], r["elr"]) for r in rows) == [("a", 0.02), ("b", 0.01)]
    assert sorted(p.name for p in (out / "epochs").iterdir()) == ["trial_id=a", "trial_id=b"]


def test_a_field_that_is_none_in_one_trial_has_its_type_so_a_dataset_reads_in_any_order(tmp_path):
    cfg = TrainConfig(dataset="digits", epochs=2)
    stopped = [{"epoch": 1, "decided_regime": None}, {"epoch": 2, "decided_regime": "divergence"}]
    ran = [{"epoch": 1, "decided_regime": None}, {"epoch": 2, "decided_regime": None}]
    for tid, recs in (("a", ran), ("b", stopped)):     # "a" (all None) is read first
        results.write_trial_epochs(tmp_path, tid, results.epoch_rows(cfg, recs, "s"))
    t = ds.dataset(tmp_path / "epochs", format="parquet", partitioning="hive").to_table()
    assert t.schema.field("decided_regime").type == pa.string()
    assert sorted(x for x in t.column("decided_regime").to_pylist() if x) == ["divergence"]


def test_epoch_tables_match_the_row_by_row_tables():
    """The sink's column-wise builder against the reference (a dict per row, then a table):
    same columns, order, types and values, whatever the records hold (keys missing in some
    records, all-None measures, a measure named like a config field, constant extra columns)."""
    cfg = TrainConfig(dataset="digits", epochs=3, schedule="piecewise", knots=[[0, 0.1], [1, 0.001]])
    recs = [{"epoch": 1, "step": 5, "elr": 0.1, "test_acc": 0.5, "decided_regime": None, "diverged": False},
            {"epoch": 2, "step": 10, "elr": 0.05, "test_acc": None, "decided_regime": None, "diverged": False},
            {"epoch": 3, "step": 15, "elr": 0.02, "test_acc": 0.7, "decided_regime": "convergence",
             "diverged": False, "num_classes": 10}]
    build = results.EpochTables(cfg, "s", {"pack_id": "p1"})
    for chunk in (recs[:1], recs[:2], recs[1:2], recs):
        want = results.table([{**r, "pack_id": "p1"} for r in results.epoch_rows(cfg, chunk, "s")])
        direct = results.epoch_table(cfg, chunk, "s", {"pack_id": "p1"})
        got = build(chunk)
        assert direct.schema == got.schema and direct.to_pylist() == got.to_pylist()
        if all(set(r) == set(chunk[0]) for r in chunk):      # the reference keys rows by the first one
            assert want.schema == got.schema and want.to_pylist() == got.to_pylist()
