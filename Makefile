# Two targets do all set-up on a fresh machine (Python >= 3.11 as python3):
#   make quickstart   install hpsearch into .venv and run the quickstart study
#   make test         install hpsearch with its test and torch extras into .venv and run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install quickstart test stress

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

install: $(BIN)/python
	$(BIN)/python -m pip install -q -e .

quickstart: install
	$(BIN)/hpsearch run studies/quickstart.yaml

# torch is pinned to 2.13.0 (the CPU build) by the extra: no CUDA download on a CPU machine.
# The tests run in one process per core (pytest-xdist; each test has its own folders, databases and ports), handed
# out one at a time in the order tests/conftest.py gives them: the long subprocess tests first, the short ones last.
test: $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[torch,test]'
	$(BIN)/python -m pytest -n auto --dist load --maxschedchunk 1

# The signal, worker and crash-window tests 20 times in a row beside a CPU hog; stops at the first failure.
# Run it before closing work that touches signals, workers or the driver (6 to 7 minutes a run on 2 cores).
STRESS_TESTS := tests/test_signals.py tests/test_workers.py tests/test_crash_windows.py tests/test_generations.py \
	tests/engine/test_pointqueue.py \
	tests/cli/test_localworkers.py::test_a_signal_while_workers_start_starts_no_more_and_reaches_every_one_started \
	tests/cli/test_progress.py::test_ctrl_c_on_a_terminal_ends_the_bars_and_then_says_what_it_stopped \
	tests/test_reliability.py::test_signal_mid_trial_then_resume_loses_nothing \
	tests/test_reliability.py::test_frozen_worker_s_point_is_taken_over_and_its_late_result_not_counted \
	tests/test_reliability.py::test_concurrent_claims_never_hand_out_a_trial_twice \
	tests/search/test_ladders.py::test_a_killed_ladder_keeps_its_finished_rungs_and_its_others_run_exactly_once \
	tests/search/test_halving.py::test_a_killed_halving_phase_resumes_its_schedule_and_its_saved_runs \
	tests/search/test_halving.py::test_a_halving_phase_killed_inside_a_level_of_several_rungs_resumes_it \
	tests/search/test_asha.py::test_two_processes_share_an_asha_phase_and_one_killed_inside_a_rung_loses_nothing \
	tests/test_reliability.py::test_two_processes_on_one_sqlite_study \
	tests/cli/test_rayworkers.py
stress: $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[torch,test]'
	yes > /dev/null & hog=$$!; trap "kill $$hog" EXIT; \
	for run in $$(seq 1 20); do \
		$(BIN)/python -m pytest $(STRESS_TESTS) -q -x -p no:cacheprovider || { echo "failed in run $$run"; exit 1; }; \
		echo "run $$run of 20 passed"; \
	done
