"""TPE under ASHA: the configurations of a TPE phase with ``schedule: {type: asha}``, proposed one at a time as the
schedule starts one, and kept in the study's storage so that every process trains the same ones.

ASHA (:func:`hpsearch.search.asha.admit`) starts a new configuration only when it has nothing to promote. Then, under
the phase's points lock, TPE proposes it from the values the rungs have stored so far: it models the highest rung
with at least as many values as the space has parameters, plus one (BOHB's rule,
:func:`hpsearch.search.asha.model_rung`); below that count it draws at random. The configurations still training at
that rung are told to it as running, so that parallel workers spread out (TPE's constant liar). A proposal is a
function of those values and the configuration's own seed; it is stored before its first rung is queued, so a process
killed in between leaves a configuration the next reconcile queues, and one killed before leaves nothing.
"""

from __future__ import annotations

import warnings
from typing import Any, Collection, Iterator, Mapping, Sequence

import optuna
from optuna.trial import TrialState

from hpsearch.engine.phases import space_distributions
from hpsearch.search.asha import model_rung
from hpsearch.search.grid import trial_seed
from hpsearch.spec.models import PhaseSpec
from hpsearch.storage.records import SharedState, decode_params

__all__ = ["ProposedPoints"]


class ProposedPoints(Sequence[dict[str, Any]]):
    """A TPE phase's points under ASHA: configuration c at rung r is point ``c * len(budgets) + r``, as a random
    phase's are (:func:`hpsearch.search.asha.rung_points`), for the n_trials configurations it starts. A point is
    known once its configuration was proposed (:meth:`propose`), by this process or another."""

    def __init__(self, phase: PhaseSpec, study_seed: int, state: SharedState, study_name: str, *,
                 maximize: bool) -> None:
        self.phase = phase
        self.rungs = phase.schedule.rungs()
        self.budgets = [self.rungs[point % len(self.rungs)] for point in range(phase.n_trials * len(self.rungs))]
        self._seed = study_seed
        self._state = state
        self._key = f"proposed:{study_name}"  # a phase started afresh is another Optuna study: it proposes anew
        self._maximize = maximize
        self._configurations: list[dict[str, Any]] = []  # as stored: Optuna's encoding

    def __len__(self) -> int:
        return len(self.budgets)

    def __getitem__(self, point: int) -> dict[str, Any]:  # type: ignore[override]  # no slices
        if not 0 <= point < len(self):
            raise IndexError(f"point {point} is outside the phase's {len(self)}")
        configuration = decode_params(self._configuration(point // len(self.rungs)))
        return {**configuration, self.phase.budget: self.budgets[point]}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        raise TypeError("a TPE phase's points are proposed one configuration at a time: index them")

    def _configuration(self, index: int) -> dict[str, Any]:
        if index >= len(self._configurations):  # proposed since this process last looked
            self._configurations = self._state.get(self._key) or []
        if index >= len(self._configurations):
            raise LookupError(f"phase {self.phase.name!r}: configuration {index} was not proposed yet")
        return self._configurations[index]

    def forget(self) -> None:
        """Forget every proposal (a phase without trials starts from none)."""
        self._state.put(self._key, [])
        self._configurations = []

    def propose(self, index: int, decided: Mapping[int, float | None], queued: Collection[int]) -> None:
        """Make configuration ``index`` known, under the phase's points lock: TPE's proposal from ``decided`` (each
        ended rung's value, or None) and ``queued`` (the rungs with a trial in any state), stored. Nothing to do
        for one stored already (its process was killed before its first rung was queued)."""
        stored = self._state.get(self._key) or []
        if index < len(stored):
            return
        if index > len(stored):  # configurations start in order: a gap is a bug, not a state to mend
            raise RuntimeError(f"phase {self.phase.name!r}: configuration {index} proposed after only "
                               f"{len(stored)}")
        proposal = self._tpe(stored, decided, queued)
        self._state.put(self._key, [*stored, proposal])
        self._configurations = [*stored, proposal]

    def _tpe(self, stored: list[dict[str, Any]], decided: Mapping[int, float | None],
             queued: Collection[int]) -> dict[str, Any]:
        """The next configuration, encoded as Optuna stores params: TPE over the rung :func:`model_rung` picks."""
        depth = len(self.rungs)
        ended = [sum(decided.get(c * depth + rung) is not None for c in range(len(stored))) for rung in range(depth)]
        rung = model_rung(ended, len(self.phase.space))
        distributions = space_distributions(self.phase)
        sampler = optuna.samplers.TPESampler(seed=trial_seed(self._seed, f"{self.phase.name}.tpe", len(stored)),
                                             n_startup_trials=len(self.phase.space) + 1)
        history = optuna.create_study(direction="maximize" if self._maximize else "minimize", sampler=sampler)
        for c, configuration in enumerate(stored):
            point = c * depth + rung
            value = decided.get(point)
            if value is not None:
                state = TrialState.COMPLETE
            elif point in queued and point not in decided:
                state = TrialState.RUNNING  # TPE lies about it: the next proposal keeps away
            else:
                continue  # not promoted to this rung, or ended it without a value
            history.add_trial(optuna.trial.create_trial(params=configuration, distributions=distributions,
                                                        value=value, state=state))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # experimental features of TPE's, on by default
            return history.ask(fixed_distributions=distributions).params
