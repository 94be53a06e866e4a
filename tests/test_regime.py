"""Regime classifier and boundary estimator on synthetic trajectories with known answers."""
import math

import numpy as np
import pytest

from regimes import regime as R
from regimes.regime.classify import _trend

C = 10
LN_C = math.log(C)
T = 60
EPOCHS = np.arange(1, T + 1, dtype=float)


def _noise(seed, scale, n=T):
    return np.random.default_rng(seed).normal(0.0, scale, n)


def converging(seed=0):
    loss = LN_C * np.exp(-EPOCHS / 6.0) * (1 + 0.05 * _noise(seed, 1.0))
    acc = 1 - 0.9 * np.exp(-EPOCHS / 4.0)
    grad = 5.0 * np.exp(-EPOCHS / 8.0) + 1e-4
    return loss, acc, grad


def chaotic(seed=0, level=0.5):
    loss = level + (LN_C - level) * np.exp(-EPOCHS / 5.0) + 0.03 * _noise(seed, 1.0)
    acc = 0.85 - 0.75 * np.exp(-EPOCHS / 5.0) + 0.01 * _noise(seed + 1, 1.0)
    grad = 2.0 + np.exp(-EPOCHS / 5.0) + 0.1 * _noise(seed + 2, 1.0)
    return loss, acc, grad


def random_guesser(seed=0):
    loss = LN_C + 0.05 * np.abs(_noise(seed, 1.0))
    acc = 0.1 + 0.01 * _noise(seed + 1, 1.0)
    grad = 8.0 + 0.5 * _noise(seed + 2, 1.0)
    return loss, acc, grad


def still_falling():
    # linear descent from ln C to ~0.6 at the last epoch: far from 0, not flat
    loss = LN_C - (LN_C - 0.6) * EPOCHS / T
    acc = 0.1 + 0.7 * EPOCHS / T
    grad = 4.0 - 2.0 * EPOCHS / T
    return loss, acc, grad


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_decaying_loss_is_convergence(seed):
    c = R.classify(*converging(seed), C)
    assert c.label == R.CONVERGENCE, c.evidence
    assert c.evidence["loss_final"] < 0.01
    assert c.evidence["grad_rel_change"] < 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_loss_settling_at_half_is_chaotic_equilibrium(seed):
    c = R.classify(*chaotic(seed), C)
    assert c.label == R.CHAOTIC, c.evidence
    assert c.evidence["loss_final"] == pytest.approx(0.5, abs=0.05)
    assert abs(c.evidence["loss_rel_change"]) < 0.15
    assert c.evidence["acc_over_chance"] == pytest.approx(0.75, abs=0.03)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_loss_stuck_at_ln_c_with_chance_accuracy_is_divergence(seed):
    c = R.classify(*random_guesser(seed), C)
    assert c.label == R.DIVERGENCE, c.evidence
    assert not c.evidence["nonfinite"]
    assert c.evidence["loss_over_ln_c"] == pytest.approx(1.0, abs=0.05)
    assert abs(c.evidence["acc_over_chance"]) < 0.02


def test_nan_is_divergence():
    loss, acc, grad = chaotic()
    loss, acc, grad = loss[:20].copy(), acc[:20].copy(), grad[:20].copy()
    loss[-1] = acc[-1] = grad[-1] = np.nan
    assert R.classify(loss, acc, grad, C, diverged=True).label == R.DIVERGENCE
    # without the flag: NaN in the (every-epoch) eff. grad norm is a blow-up
    assert R.classify(loss, acc, grad, C).label == R.DIVERGENCE
    # inf in the loss too
    loss2, acc2, grad2 = chaotic()
    loss2[30] = np.inf
    c = R.classify(loss2, acc2, grad2, C)
    assert c.label == R.DIVERGENCE and c.evidence["nonfinite"]


def test_still_falling_steeply_is_unresolved():
    c = R.classify(*still_falling(), C)
    assert c.label == R.UNRESOLVED, c.evidence
    assert c.evidence["loss_rel_change"] < -0.1
    assert "trending" in c.reason


def test_early_training_near_chance_but_falling_is_unresolved():
    # loss still above 0.8 ln C and accuracy at chance, but clearly decreasing:
    # not a random guesser yet
    loss = LN_C * (1.3 - 0.45 * (EPOCHS / T) ** 3)     # ends at 0.85 ln C, falling
    acc = np.full(T, 0.11)
    c = R.classify(loss, acc, np.full(T, 3.0), C)
    assert c.label == R.UNRESOLVED, c.evidence


def test_confidently_wrong_with_loss_falling_above_ln_c_is_divergence():
    # a diverged net on the sphere: chance accuracy, large logits (loss ~2.4 ln C) shrinking
    # over the final window but above ln C at every epoch: not learning
    loss = LN_C * (3.0 - 1.2 * EPOCHS / T) + 0.7 * _noise(3, 1.0)     # jumps epoch to epoch
    acc = 0.1 + 0.01 * _noise(4, 1.0)
    c = R.classify(loss, acc, np.full(T, 40.0), C)
    assert c.label == R.DIVERGENCE, c.evidence
    assert c.evidence["loss_rel_change"] < -0.1 and c.evidence["loss_min"] > LN_C
    # the same with one epoch of the window dipping under ln C stays undecided
    loss[-2] = 0.9 * LN_C
    assert R.classify(loss, acc, np.full(T, 40.0), C).label == R.UNRESOLVED


def test_a_converged_run_with_one_spike_in_the_window_is_still_convergence():
    # at loss ~1e-3 for 15 epochs, one epoch jumps to 0.2 and falls back (the window mean, 0.014,
    # is over the threshold; its median is not)
    loss = np.r_[np.geomspace(1.0, 1e-3, T - 15), np.full(15, 1e-3)]
    loss[-5] = 0.2
    c = R.classify(loss, np.full(T, 1.0), np.full(T, 0.5), C)
    assert c.label == R.CONVERGENCE, c.evidence
    assert c.evidence["loss_final"] > 0.01 > c.evidence["loss_median"]
    # but a run that left zero and stays off it is not
    loss[-8:] = 0.03
    assert R.classify(loss, np.full(T, 1.0), np.full(T, 0.5), C).label != R.CONVERGENCE


def test_a_smooth_fall_above_ln_c_at_chance_is_a_net_still_starting_not_divergence():
    loss = LN_C * (4.0 - 2.95 * EPOCHS / T)            # smooth, above ln C, falling fast
    c = R.classify(loss, np.full(T, 0.1), np.full(T, 3.0), C)
    assert c.label == R.UNRESOLVED, c.evidence


def test_a_spike_on_the_last_epoch_is_not_convergence():
    loss = np.r_[np.geomspace(1.0, 1e-3, T - 15), np.full(15, 1e-3)]
    loss[-1] = 0.5
    assert R.classify(loss, np.full(T, 1.0), np.full(T, 0.5), C).label != R.CONVERGENCE


def test_unmeasured_epochs_are_ignored():
    loss, acc, grad = chaotic()
    gappy_loss, gappy_acc = loss.copy(), acc.copy()
    gap = (np.arange(T) % 5 != 4)            # measured every 5th epoch (+ last)
    gap[-1] = False
    gappy_loss[gap] = np.nan
    gappy_acc[gap] = np.nan
    c = R.classify(gappy_loss, gappy_acc, grad, C)
    assert c.label == R.CHAOTIC
    assert c.evidence["n_measured"] == 12
    assert c.evidence["window"] == R.RegimeRules().min_window == 4
    # the window mean is over measured points only
    m = np.flatnonzero(~gap)[-4:]
    assert c.evidence["loss_final"] == pytest.approx(loss[m].mean())


def test_too_few_points_is_unresolved():
    loss, acc, grad = converging()
    assert R.classify(loss[:2], acc[:2], grad[:2], C).label == R.UNRESOLVED
    assert R.classify(loss[:3], acc[:3], grad[:3], C).label == R.UNRESOLVED   # no t-test below 4


def test_a_random_guessers_short_window_does_not_flicker():
    """Recorded on digits (ELR 0.499, seed 0): chance accuracy, loss 3.6-6 nats. With 3-point
    windows and no diverge_high_loss rule, some prefixes read `unresolved` (a fall of the noisy
    loss over 3 points reads as a trend); with 4-point windows, or with the rule (loss >= 1.5 ln C
    at every epoch of the window at chance accuracy), every prefix from epoch 4 is divergence."""
    loss = np.array([4.95, 3.85, 5.22, 5.42, 4.22, 4.26, 4.00, 5.00, 3.61, 4.09, 5.37, 4.14, 4.54, 6.07])
    acc = np.array([.05, .06, .09, .06, .10, .10, .18, .08, .09, .06, .10, .05, .12, .10])
    for rules in (R.RegimeRules(), R.RegimeRules(min_window=3), R.RegimeRules(diverge_high_loss=math.inf)):
        labels = [R.classify(loss[:k], acc[:k], None, C, rules=rules).label for k in range(4, loss.size + 1)]
        assert labels == [R.DIVERGENCE] * len(labels), (rules, labels)
    short = R.RegimeRules(min_window=3, diverge_high_loss=math.inf)
    assert R.UNRESOLVED in [R.classify(loss[:k], acc[:k], None, C, rules=short).label
                            for k in range(4, loss.size + 1)]


def test_a_confidently_wrong_net_whose_logits_relax_smoothly_is_divergence():
    """Recorded on digits (ELR 1, seed 0, 20 epochs): accuracy at chance throughout, the loss
    falling smoothly from 6.3 to 4.3 nats over the last epochs (slope t = -11, too smooth for the
    noisy-fall rule). Loss >= 1.5 ln C at every epoch at chance accuracy is divergence; without
    that rule the window reads as still trending."""
    loss = np.array([4.41, 4.61, 4.22, 5.49, 3.93, 3.96, 4.23, 4.96, 5.97, 4.32, 5.03, 6.54, 5.92, 4.58, 6.30,
                     5.32, 5.00, 4.92, 4.59, 4.30])
    acc = np.array([.10, .10, .09, .11, .11, .05, .21, .02, .16, .10, .16, .15, .10, .10, .06, .08, .10, .10,
                    .08, .10])
    c = R.classify(loss, acc, None, C)
    assert c.label == R.DIVERGENCE and "diverge_high_loss" in c.reason, c.reason
    assert R.classify(loss, acc, None, C, rules=R.RegimeRules(diverge_high_loss=math.inf)).label == R.UNRESOLVED
    # below 1.5 ln C a smooth fall at chance accuracy is still a net that may start learning
    falling = np.r_[np.full(14, 3.4), [3.3, 3.1, 2.9, 2.7, 2.55, 2.4]]
    assert R.classify(falling, np.full(20, 0.1), None, C).label == R.UNRESOLVED


def test_missing_optional_measures():
    loss, acc, grad = chaotic()
    assert R.classify(loss, None, None, C).label == R.CHAOTIC
    loss, acc, grad = random_guesser()
    assert R.classify(loss, None, grad, C).label == R.DIVERGENCE
    loss, acc, grad = converging()
    assert R.classify(loss, acc, None, C).label == R.CONVERGENCE


def test_rules_are_configurable():
    loss, acc, grad = chaotic(seed=4, level=0.05)
    loss = 0.05 + (loss - 0.05) * 0.3         # fluctuations in proportion to the level
    assert R.classify(loss, acc, grad, C).label == R.CHAOTIC
    lax = R.RegimeRules(converge_loss=0.08)
    c = R.classify(loss, acc, grad, C, rules=lax)
    assert c.label == R.CONVERGENCE and "0.08" in c.reason


def test_trend_oracle():
    t = np.arange(10.0)
    y = 2.0 + 0.1 * t                       # line: change over span 0.9, mean 2.45
    assert _trend(t, y)[0] == pytest.approx(0.9 / 2.45)
    assert _trend(t, np.full(10, 3.0))[0] == pytest.approx(0.0, abs=1e-12)
    # t-statistic against the textbook formula on a small noisy example
    y = np.array([1.0, 1.3, 0.9, 1.6, 1.4, 1.9])
    t = np.arange(6.0)
    b = np.cov(t, y, bias=True)[0, 1] / np.var(t)
    a = y.mean() - b * t.mean()
    se = np.sqrt(np.sum((y - a - b * t) ** 2) / 4 / np.sum((t - t.mean()) ** 2))
    rel, tstat = _trend(t, y)
    assert tstat == pytest.approx(b / se)
    assert rel == pytest.approx(b * 5 / y.mean())


def test_noisy_plateau_is_stable_but_clean_slope_is_a_trend():
    # big epoch-to-epoch fluctuations around 0.6: no significant trend
    rng = np.random.default_rng(5)
    loss = 0.6 + 0.2 * rng.standard_normal(T)
    loss[-15:] = 0.6 + 0.18 * np.resize([1, -1, -1, 1, 1, -1, 1, -1], 15)
    acc = np.full(T, 0.8)
    grad = np.full(T, 2.0)
    c = R.classify(loss, acc, grad, C)
    assert c.label == R.CHAOTIC, c.evidence
    # the same level with a clean 30% decline over the window is trending
    loss2 = np.full(T, 0.6)
    loss2[-15:] = 0.7 - 0.2 * np.arange(15) / 14
    c2 = R.classify(loss2, acc, grad, C)
    assert c2.label == R.UNRESOLVED and c2.evidence["loss_trend_t"] < -2


# ------------------------------------------------------------------ boundaries
def test_midpoint_is_geometric():
    assert R.midpoint(1e-3, 1e-1) == pytest.approx(1e-2)
    assert R.midpoint(0.0, 2.0) == 1.0


def _synthetic_study(b1, b2, grid, seeds, jitter):
    """Label by thresholding log ELR against seed-jittered true boundaries."""
    rng = np.random.default_rng(0)
    xs, labels, ss, truth = [], [], [], {}
    for s in seeds:
        d = 10 ** rng.uniform(-jitter, jitter)
        t1, t2 = b1 * d, b2 * d
        truth[s] = (t1, t2)
        for x in grid:
            lab = R.CONVERGENCE if x < t1 else (R.CHAOTIC if x < t2 else R.DIVERGENCE)
            xs.append(x)
            labels.append(lab)
            ss.append(s)
    return np.array(xs), labels, np.array(ss), truth


def test_boundaries_recovered_within_grid_resolution():
    grid = np.logspace(-5, 1, 25)                 # 4 points per decade
    step = np.log10(grid[1] / grid[0])
    b1, b2 = 3.3e-4, 0.021
    x, labels, seeds, truth = _synthetic_study(b1, b2, grid, seeds=[0, 1, 2, 3], jitter=0.2)
    rng = np.random.default_rng(1)
    perm = rng.permutation(x.size)                # order of trials must not matter
    bs = R.estimate_boundaries(x[perm], [labels[i] for i in perm], seeds[perm])
    assert [b.name for b in bs] == ["convergence->chaotic_equilibrium",
                                    "chaotic_equilibrium->divergence"]
    for b, true in zip(bs, (b1, b2)):
        assert abs(math.log10(b.value / true)) <= step + 0.2    # grid step + seed jitter
        assert b.n_seeds == b.n_seeds_total == 4
        assert b.lo <= b.value <= b.hi
        assert b.bracket_lo < b.lo and b.hi < b.bracket_hi
    # per seed, each estimate is within half a grid step of that seed's truth
    for s in range(4):
        m = seeds == s
        (b_lo, b_hi) = R.estimate_boundaries(x[m], [labels[i] for i in np.flatnonzero(m)])
        assert abs(math.log10(b_lo.value / truth[s][0])) <= step / 2 + 1e-9
        assert abs(math.log10(b_hi.value / truth[s][1])) <= step / 2 + 1e-9
        assert b_lo.log10_spread == 0.0


def test_boundary_spread_reflects_seed_disagreement():
    grid = [1e-4, 1e-3, 1e-2, 1e-1]
    labels = [R.CONVERGENCE, R.CHAOTIC, R.CHAOTIC, R.CHAOTIC,      # seed 0: change at ~3e-4
              R.CONVERGENCE, R.CONVERGENCE, R.CHAOTIC, R.CHAOTIC]  # seed 1: change at ~3e-3
    (b,) = R.estimate_boundaries(grid * 2, labels, [0] * 4 + [1] * 4)
    assert b.lo == pytest.approx(math.sqrt(1e-7))
    assert b.hi == pytest.approx(math.sqrt(1e-5))
    assert b.value == pytest.approx(math.sqrt(b.lo * b.hi))
    assert b.log10_spread == pytest.approx(0.5)


def test_unresolved_points_are_stepped_over():
    grid = [1e-4, 1e-3, 1e-2, 1e-1]
    labels = [R.CONVERGENCE, R.UNRESOLVED, R.CHAOTIC, R.DIVERGENCE]
    bs = R.estimate_boundaries(grid, labels)
    assert [b.name for b in bs] == ["convergence->chaotic_equilibrium",
                                    "chaotic_equilibrium->divergence"]
    assert bs[0].value == pytest.approx(1e-3)           # midpoint of 1e-4 and 1e-2
    assert (bs[0].bracket_lo, bs[0].bracket_hi) == (1e-4, 1e-2)


def test_no_change_no_boundary():
    assert R.estimate_boundaries([1e-3, 1e-2], [R.CHAOTIC, R.CHAOTIC]) == []


def test_majority():
    assert R.majority(["a", "b", "a"]) == ("a", pytest.approx(2 / 3))
    assert R.majority([R.CHAOTIC, R.CONVERGENCE])[0] == R.CONVERGENCE


def test_labels_out_of_order_give_the_cut_that_contradicts_fewest():
    grid = list(np.geomspace(1e-3, 1e-1, 9))
    C, X, D = R.CONVERGENCE, R.CHAOTIC, R.DIVERGENCE
    # a noisy band: C C C X C X X D D -> the C|X change ties between the cuts around the stray
    # points (after index 2 and after index 4, one contradiction each)
    labels = [C, C, C, X, C, X, X, D, D]
    b_cx, b_xd = R.estimate_boundaries(grid, labels)
    assert (b_cx.lower, b_cx.upper, b_cx.misordered) == (C, X, 1)
    first, last = math.sqrt(grid[2] * grid[3]), math.sqrt(grid[4] * grid[5])
    assert b_cx.value == pytest.approx(math.sqrt(first * last))     # middle of the tied cuts
    assert (b_cx.bracket_lo, b_cx.bracket_hi) == (grid[2], grid[5])
    assert (b_xd.name, b_xd.misordered) == ("chaotic_equilibrium->divergence", 0)
    assert b_xd.value == pytest.approx(math.sqrt(grid[6] * grid[7]))
    # a single stray label far from the band does not move the change: the clean cut wins
    labels = [C, X, C, C, C, X, X, X, X]
    (b,) = R.estimate_boundaries(grid, labels)
    assert b.value == pytest.approx(math.sqrt(grid[4] * grid[5])) and b.misordered == 1
    # a missing middle regime: convergence straight to divergence
    (b,) = R.estimate_boundaries(grid, [C] * 4 + [D] * 5)
    assert b.name == "convergence->divergence" and b.value == pytest.approx(math.sqrt(grid[3] * grid[4]))


def test_a_stray_label_at_one_end_is_not_a_boundary_at_the_other():
    grid = list(np.geomspace(1e-3, 1e-1, 8))
    C, X, D = R.CONVERGENCE, R.CHAOTIC, R.DIVERGENCE
    assert R.estimate_boundaries(grid, [X] + [C] * 7) == []
    (b,) = R.estimate_boundaries(grid, [D, C, C, C, X, X, X, X])       # no chaotic -> divergence
    assert b.name == "convergence->chaotic_equilibrium" and b.value == pytest.approx(math.sqrt(grid[3] * grid[4]))
    assert R.estimate_boundaries(grid, [C] * 6 + [X, C]) == []         # as good as no change: none


def test_change_point_agrees_with_brute_force_on_random_labels():
    """Second formulation: try every cut, count contradictions directly."""
    rng = np.random.default_rng(0)
    C, X, D = R.CONVERGENCE, R.CHAOTIC, R.DIVERGENCE
    for _ in range(200):
        n = int(rng.integers(2, 12))
        x = np.sort(rng.uniform(-4, 0, n))
        x = 10 ** x
        labels = list(rng.choice([C, X, D], size=n))
        for lower, upper, est, lo, hi, wrong in R.change_points(x, labels):
            lo_l, hi_l = R.REGIME_ORDER[lower], R.REGIME_ORDER[upper]
            errs = []
            for j in range(1, n):
                errs.append(sum(R.REGIME_ORDER[l] > lo_l for l in labels[:j])
                            + sum(R.REGIME_ORDER[l] <= lo_l for l in labels[j:]))
            assert wrong == min(errs)
            n_up = sum(R.REGIME_ORDER[l] > lo_l for l in labels)
            assert wrong < min(n_up, n - n_up)                  # beats "no change in range"
            best = [j for j in range(1, n) if errs[j - 1] == min(errs)]
            assert (lo, hi) == (x[best[0] - 1], x[best[-1]])
            assert lo <= est <= hi
            assert hi_l > lo_l


# ------------------------------------------------------------------ the trend test
def _ar1(rng, n, phi, scale, burn=50):
    e = rng.standard_normal(n + burn) * scale
    y = np.zeros_like(e)
    for i in range(1, e.size):
        y[i] = phi * y[i - 1] + e[i]
    return y[burn:]


def test_t_p_value_matches_scipy():
    """Oracle: scipy's Student-t survival function (an independent implementation)."""
    stats = pytest.importorskip("scipy.stats")
    from regimes.regime.classify import t_two_sided_p
    for df in (1, 2, 3, 4, 7, 13, 30, 58):
        for t in (0.0, 0.3, 1.1, 2.0, 3.7, 12.0):
            assert t_two_sided_p(t, df) == pytest.approx(2 * stats.t.sf(t, df), abs=1e-12)
            assert t_two_sided_p(-t, df) == t_two_sided_p(t, df)
    assert t_two_sided_p(math.inf, 3) == 0.0


def test_trend_test_without_correlation_is_the_textbook_ols_test():
    from regimes.regime.classify import trend_test
    stats = pytest.importorskip("scipy.stats")
    t = np.arange(12.0)
    rng = np.random.default_rng(3)
    for _ in range(20):
        y = 0.05 * t + rng.standard_normal(12)
        r = trend_test(t, y)
        ref = stats.linregress(t, y)
        if r["rho"] == 0.0:                   # no positive residual correlation: plain OLS
            assert r["p"] == pytest.approx(ref.pvalue, rel=1e-9)
        else:                                 # correlation only ever widens the error
            assert r["p"] >= ref.pvalue and abs(r["t"]) <= abs(ref.slope / ref.stderr)


@pytest.mark.parametrize("phi", [0.0, 0.3])
@pytest.mark.parametrize("n", [5, 15])
def test_stationary_ar1_false_positive_rate_is_near_alpha(phi, n):
    """Stationary AR(1) windows: the slope test at level alpha/2 rejects in about alpha/2 of draws
    (at most, within a binomial 3-sigma band; at phi = 0.3 the short-window correction is
    approximate: <= 2.5x)."""
    from regimes.regime.classify import trend_test
    rng = np.random.default_rng(int(phi * 10) + n)
    level = R.RegimeRules().trend_alpha / 2
    draws = 2000
    rej = sum(trend_test(np.arange(n, dtype=float), _ar1(rng, n, phi, 1.0))["p"] < level for _ in range(draws))
    sigma = math.sqrt(level * (1 - level) / draws)
    assert rej / draws <= (1.0 if phi == 0 else 2.5) * level + 3 * sigma
    if phi == 0:      # conservative (the bias correction of rho errs upward), but not vacuous
        assert rej / draws >= 0.4 * level


@pytest.mark.parametrize("noise", [0.02, 0.1, 0.3])
def test_stationary_chaotic_runs_are_never_unresolved(noise):
    """A chaotic plateau (level 0.5, accuracy 0.85) whose final window is stationary AR(1) noise of
    several sizes: `unresolved` at most at the test's level over many draws; at small noise never."""
    rng = np.random.default_rng(int(noise * 100))
    draws, unresolved = 300, 0
    for _ in range(draws):
        loss = 0.5 + (LN_C - 0.5) * np.exp(-EPOCHS / 4.0) + _ar1(rng, T, 0.3, noise)
        grad = 2.0 + _ar1(rng, T, 0.3, 0.2 * noise / 0.1)
        acc = 0.85 + 0.01 * rng.standard_normal(T)
        c = R.classify(loss, acc, np.abs(grad), C)
        assert c.label in (R.CHAOTIC, R.UNRESOLVED), c.reason
        unresolved += c.label == R.UNRESOLVED
    assert unresolved / draws <= R.RegimeRules().trend_alpha * 2 + 3 * math.sqrt(0.1 * 0.9 / draws)
    if noise <= 0.02:
        assert unresolved == 0        # a change of a few % cannot clear the size floor


@pytest.mark.parametrize("seed", range(5))
def test_a_real_linear_trend_of_known_size_is_flagged(seed):
    """A chaotic-looking run whose final 15 epochs drift by -40% of their level (noise 5% of the
    level): flagged as a trend, with the statistic and threshold in the reason."""
    rng = np.random.default_rng(seed)
    loss = np.full(T, 0.6) + 0.03 * rng.standard_normal(T)
    loss[-15:] = 0.7 - 0.28 * np.arange(15) / 14 + 0.03 * rng.standard_normal(15)
    c = R.classify(loss, np.full(T, 0.8), np.full(T, 2.0), C)
    assert c.label == R.UNRESOLVED, c.reason
    assert c.evidence["loss_trend_p"] < R.RegimeRules().trend_alpha / 2
    assert "p = " in c.reason and "< 0.025" in c.reason


def test_a_noisy_chaotic_equilibrium_with_a_large_insignificant_change_is_chaotic():
    """Recorded pattern (digits, batch 16, ELR 0.008-0.01): the loss moves by ~60% of its level
    over the window but epoch-to-epoch noise is as large: no significant trend."""
    rng = np.random.default_rng(7)
    loss = 0.2 * np.exp(rng.normal(0, 0.6, T))            # lognormal plateau, huge relative noise
    c = R.classify(loss, np.full(T, 0.95), 3.0 * np.exp(rng.normal(0, 0.4, T)), C)
    assert c.label == R.CHAOTIC, c.reason
    assert "no significant trend" in c.reason and ">= 0.025" in c.reason


def test_every_label_states_its_statistic_and_threshold():
    cases = [converging(), chaotic(), random_guesser(), still_falling()]
    for loss, acc, grad in cases:
        c = R.classify(loss, acc, grad, C)
        assert any(ch.isdigit() for ch in c.reason)
        if c.label in (R.CHAOTIC, R.UNRESOLVED):
            assert "p = " in c.reason
    # loss above ln C with accuracy clearly above chance, flat: chaotic, and the reason says so
    rng = np.random.default_rng(0)
    loss = 1.3 * LN_C + 0.1 * rng.standard_normal(T)
    c = R.classify(loss, np.full(T, 0.35), np.full(T, 9.0), C)
    assert c.label == R.CHAOTIC and "above ln C" in c.reason
