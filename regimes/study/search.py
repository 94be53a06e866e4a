"""Searchers and schedulers of a study: Optuna through Ray Tune, optional ASHA.

Optuna runs inside Ray's `OptunaSearch`, wrapped in a `ConcurrencyLimiter` so
that `max_concurrent` trials are asked for and run at the same time. The
Optuna study lives in a JournalStorage file in the study folder: appended to
as trials are asked and told, so a resumed sweep continues the same study and
`optuna-dashboard <study>/optuna.journal` can watch it while it runs.
"""
from __future__ import annotations

from pathlib import Path

from optuna.exceptions import UpdateFinishedTrialError
from ray.tune.search.optuna import OptunaSearch

from .spec import Study

TUNE_TRIAL_ID = "tune_trial_id"    # Optuna user attribute


def optuna_storage(journal: Path):
    """The study's Optuna storage: one journal file (append-only, file-locked)."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    journal.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(journal)))


def make_sampler(study: Study):
    import optuna.samplers as s

    seed = study.sampler_seed
    if study.sampler == "tpe":
        return s.TPESampler(seed=seed)
    if study.sampler == "gp":
        return s.GPSampler(seed=seed)
    if study.sampler == "cmaes":
        return s.CmaEsSampler(seed=seed)
    if study.sampler == "random":
        return s.RandomSampler(seed=seed)
    return s.QMCSampler(seed=seed)


class ResumableOptunaSearch(OptunaSearch):
    """OptunaSearch that tolerates results for trials the journal already closed.

    The journal is written at once when a trial is told; Tune's experiment
    snapshot may be older. After a driver crash in between, Tune restarts that
    trial (from its final checkpoint) and it reports again: Optuna keeps the
    value it already has instead of failing the whole study.
    """

    def suggest(self, trial_id):
        params = super().suggest(trial_id)
        if params is not None and trial_id in self._ot_trials:
            # which Tune trial owns this Optuna trial (see fail_stale_trials)
            self._ot_trials[trial_id].set_user_attr(TUNE_TRIAL_ID, trial_id)
        return params

    def on_trial_result(self, trial_id, result):
        try:
            super().on_trial_result(trial_id, result)
        except UpdateFinishedTrialError:
            self._completed_trials.add(trial_id)

    def restore(self, checkpoint_path: str):
        """Ray's restore brings back the Optuna study on the journal it was pickled with; a
        copied or moved study must use the journal where the study is now (its store
        unpickles as the current one, see storage.StudyStore)."""
        super().restore(checkpoint_path)
        store = getattr(self, "study_store", None)
        if store is None or self._ot_study is None:
            return
        import optuna

        self._storage = optuna_storage(store.journal_path)
        self._ot_study = optuna.load_study(study_name=self._ot_study.study_name, storage=self._storage,
                                           sampler=self._sampler)
        self._ot_trials = {tid: optuna.trial.Trial(self._ot_study, t._trial_id) for tid, t in self._ot_trials.items()}


def make_searcher(study: Study, journal: Path, store=None):
    """OptunaSearch on the study's journal, limited to `max_concurrent` live trials. With the
    study's `store`, a resumed searcher follows the study to wherever it is now."""
    from ray.tune.search import ConcurrencyLimiter

    single = not study.multi_objective
    searcher = ResumableOptunaSearch(
        space={k: d.to_optuna() for k, d in study.space.items()},
        metric=study.metric[0] if single else list(study.metric),
        mode=study.mode[0] if single else list(study.mode),
        sampler=make_sampler(study),
        study_name=study.name,
        storage=optuna_storage(journal),
    )
    searcher.study_store = store
    return ConcurrencyLimiter(searcher, max_concurrent=study.max_concurrent)


def make_scheduler(study: Study):
    """ASHA on the study's (single) metric, in epochs; None when the spec has no scheduler."""
    if study.scheduler is None:
        return None
    from ray.tune.schedulers import ASHAScheduler

    a = study.scheduler
    return ASHAScheduler(time_attr="epoch", metric=study.metric[0], mode=study.mode[0],
                         max_t=study.max_epochs(), grace_period=a.grace_period,
                         reduction_factor=a.reduction_factor, brackets=a.brackets)


def fail_stale_trials(study: Study, journal: Path, tune_trial_ids: set[str]) -> int:
    """Mark Optuna trials that no Tune trial will ever finish as FAIL; returns how many.

    A driver killed between Optuna's `ask` and Tune's next experiment snapshot
    leaves a RUNNING trial in the journal owned by a Tune trial the resumed
    experiment does not know (it asks for a replacement instead).
    """
    import optuna

    if not journal.exists():
        return 0
    ot = optuna.load_study(study_name=study.name, storage=optuna_storage(journal))
    stale = [t for t in ot.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
             if t.user_attrs.get(TUNE_TRIAL_ID) not in tune_trial_ids]
    for t in stale:
        ot.tell(t.number, state=optuna.trial.TrialState.FAIL)
    return len(stale)
