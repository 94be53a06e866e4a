"""Cost of each measure and technique relative to one training epoch (digits, CPU by default).

    python benchmarks/measure_cost.py                      # convnet_si, width 16, batch 128
    python benchmarks/measure_cost.py --model convnet_lcnn --repeats 3

One "epoch" = the steps of one epoch of plain training (no measures), timed
after a warm-up epoch. Each measure is timed the way the Trainer calls it
(curvature on `--subset` examples in chunks of the batch size). Techniques
that change the step (gnorm penalty, ENorm, late-phase) are timed as whole
epochs of training with the technique on. Ratios: use them to pick cadences
(e.g. sharpness_every) so measuring stays a small fraction of training.
Never run by the test suite.
"""
from __future__ import annotations

import argparse
import platform
import time

import torch

from regimes import TrainConfig, Trainer
from regimes.techniques import curvature
from regimes.techniques.late_phase import LatePhase
from regimes.techniques.swa import SWA


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def epoch_time(cfg: TrainConfig, repeats: int) -> float:
    """Seconds for one epoch of training steps (measures excluded), best of `repeats`."""
    tr = Trainer(cfg.replace(epochs=repeats + 1))
    tr._measures.clear()
    tr._measure = lambda *a, **k: {"diverged": False}  # time the steps only
    times, it = [], tr.run()
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        next(it)
        times.append(time.perf_counter() - t0)
    return min(times[1:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="convnet_si")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--subset", type=int, default=1000, help="curvature_subset (examples)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    base = dict(dataset="digits", model=a.model, width=a.width, batch_size=a.batch_size, device="cpu",
                augment=False, mode="free", lr=0.05, momentum=0.9)
    cfg = TrainConfig.from_dict(base)
    epoch = epoch_time(cfg, a.repeats)
    tr = Trainer(cfg)
    x, y = tr.data.x_train[:a.subset], tr.data.y_train[:a.subset]
    B = cfg.batch_size
    rows = [
        ("train-set pass (train_loss/acc)", _best(tr.evaluate_train, a.repeats)),
        ("test-set pass (test_loss/acc)", _best(tr.evaluate_test, a.repeats)),
        (f"sharpness, Lanczos 20 HVPs, {len(x)} ex",
         _best(lambda: curvature.sharpness(tr.model, x, y, iters=20, chunk_size=B), a.repeats)),
        (f"hess_trace, Hutchinson 10 probes, {len(x)} ex",
         _best(lambda: curvature.hess_trace(tr.model, x, y, samples=10, chunk_size=B), a.repeats)),
        (f"input_curvature, 10 power its, {len(x)} ex",
         _best(lambda: curvature.input_curvature(tr.model, x, y, iters=10, chunk_size=B), a.repeats)),
    ]
    swa = SWA(tr.model)
    swa.update()
    rows.append(("SWA eval (BN recompute + test pass)",
                 _best(lambda: swa.evaluate_model(tr.data.x_train, B), a.repeats) +
                 rows[1][1]))
    lp = LatePhase(tr.model, tr.optimizer, 4)
    lp.start()
    rows.append(("late-phase ensemble, K=4 (test set)", _best(lambda: lp.ensemble_predict(tr.data.x_test), a.repeats)))
    # step-changing techniques: a training epoch with the technique, minus a plain epoch
    lcnn_like = a.model.endswith("_lcnn")
    variants = [("gnorm penalty (double backprop)", dict(gnorm_coef=0.01)),
                ("late-phase K=4 step schedule", dict(late_phase_k=4, late_phase_start=1))]
    if not lcnn_like:
        variants.append(("ENorm, 1 cycle per step", dict(enorm_c=1.0)))
    for name, kw in variants:
        rows.append((f"extra per epoch: {name}", epoch_time(cfg.replace(**kw), a.repeats) - epoch))

    print(f"# {a.model} width {a.width}, digits ({len(tr.data.x_train)} train ex), batch {B}, "
          f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads")
    print(f"# one training epoch ({tr.steps_per_epoch} steps): {epoch:.3f} s")
    print(f"{'measure':<46} {'seconds':>9} {'x epoch':>9}")
    for name, sec in rows:
        # differences of two timings can come out slightly negative: within noise, ~0
        print(f"{name:<46} {sec:>9.3f} {sec / epoch:>9.2f}" + ("   (within timing noise)" if sec < 0 else ""))


if __name__ == "__main__":
    main()
