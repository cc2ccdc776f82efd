"""Each worker's share of the GPUs and cores (``hpsearch.engine.resources``): pure functions, no process started."""

from __future__ import annotations

import pytest

from hpsearch.engine.resources import (THREAD_VARIABLES, WorkerResources, check_within, parse_gpus,
                                       plan_cluster_workers, plan_workers)
from hpsearch.errors import UserError


@pytest.mark.parametrize("text, devices", [
    ("0", ("0",)), ("0,1,2,3", ("0", "1", "2", "3")), (" 3, 1 ", ("3", "1")),
    ("GPU-8f6b2c1e-0a4d-4e1b-9f3e-2d7c5b6a1e90,1", ("GPU-8f6b2c1e-0a4d-4e1b-9f3e-2d7c5b6a1e90", "1")),
    ("MIG-GPU-8f6b2c1e/1/0", ("MIG-GPU-8f6b2c1e/1/0",)),
])
def test_a_list_of_gpus_is_taken_as_given(text, devices):
    assert parse_gpus(text) == devices


@pytest.mark.parametrize("text, says", [
    ("", "('' is none)"), ("0,,1", "('' is none)"), ("0;1", "('0;1' is none)"), ("-1", "('-1' is none)"),
    ("cuda:0", "('cuda:0' is none)"), ("0,1,0", "names GPU 0 more than once"), ("2, 2", "names GPU 2 more than once"),
    ("\u0663", "('\u0663' is none)"), ("8f6b2c1e", "('8f6b2c1e' is none)"),
])
def test_a_malformed_or_overlapping_list_is_one_line(text, says):
    with pytest.raises(UserError) as refused:
        parse_gpus(text)
    message = str(refused.value)
    assert says in message and "\n" not in message and message.startswith("--gpus ")


def test_each_worker_gets_its_own_slice_in_order():
    shares = plan_workers(2, 8, gpus=("0", "1", "2", "3"), gpus_per_worker=2)
    assert [share.gpus for share in shares] == [("0", "1"), ("2", "3")]
    assert [share.threads for share in shares] == [4, 4]  # the 8 cores split
    one_each = plan_workers(3, 2, gpus=("3", "5", "7", "9"))  # one GPU each unless asked; the rest unused
    assert [share.gpus for share in one_each] == [("3",), ("5",), ("7",)]
    assert len({gpu for share in one_each for gpu in share.gpus}) == 3


@pytest.mark.parametrize("workers, cores, threads", [(1, 2, 2), (2, 2, 1), (3, 2, 1), (2, 16, 8), (3, 16, 5)])
def test_by_default_the_cores_are_split_and_never_oversubscribed(workers, cores, threads):
    shares = plan_workers(workers, cores)
    assert [share.threads for share in shares] == [threads] * workers
    assert all(share.gpus is None for share in shares)  # no GPUs asked for: the worker's environment is left alone
    assert workers * threads <= max(cores, workers)


def test_threads_asked_for_are_given_as_asked():
    assert [share.threads for share in plan_workers(2, 2, threads=3)] == [3, 3]


def test_gpus_handed_out_must_be_among_those_this_process_was_given():
    check_within(("2", "3"), "2,3,5")
    check_within(("0", "1"), None)  # nothing set: the machine's GPUs
    with pytest.raises(UserError) as refused:
        check_within(("0", "2"), "2,3")  # a scheduler gave this job GPUs 2 and 3; GPU 0 is someone else's
    assert str(refused.value) == ("--gpus names GPU 0, which this process's CUDA_VISIBLE_DEVICES (2,3) does not give "
                                  "it; name GPUs among those.")


def test_gpus_to_hand_out_and_none_per_worker_is_one_line():
    with pytest.raises(UserError, match="--gpus hands out GPUs, and resources.gpus_per_worker is 0"):
        plan_workers(2, 2, gpus=("0", "1"), gpus_per_worker=0)


@pytest.mark.parametrize("gpus, per_worker, says", [
    (("0",), None, "2 workers with 1 GPU each need 2 GPUs; --gpus gives 1."),
    (("0", "1", "2"), 2, "2 workers with 2 GPUs each need 4 GPUs; --gpus gives 3."),
    (None, 1, "2 workers with 1 GPU each need 2 GPUs; --gpus gives 0."),
    (("0",), 2, "1 worker with 2 GPUs each needs 2 GPUs; --gpus gives 1."),
])
def test_too_few_gpus_for_the_workers_is_one_line(gpus, per_worker, says):
    with pytest.raises(UserError, match="Ask for fewer workers") as refused:
        plan_workers(1 if "1 worker " in says else 2, 4, gpus=gpus, gpus_per_worker=per_worker)
    assert says in str(refused.value)


def test_a_share_is_the_environment_every_library_reads_at_its_start():
    env = WorkerResources(("2", "3"), 4).env()
    assert env == {**dict.fromkeys(THREAD_VARIABLES, "4"), "CUDA_VISIBLE_DEVICES": "2,3"}
    assert {"OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"} <= set(env)
    assert "CUDA_VISIBLE_DEVICES" not in WorkerResources(None, 1).env()
    assert WorkerResources(("2",), 1).describe() == "GPU 2, 1 thread"


@pytest.mark.parametrize("workers, nodes, threads, gpus, share, at_once", [
    (2, [(2, 0)], None, None, 1, 2),  # one node's 2 CPUs split between 2 workers
    (2, [(16, 0), (4, 0)], None, None, 8, 2),  # not 10 (20 CPUs split): only one worker of 10 fits at a time
    (4, [(16, 0), (4, 0)], None, None, 4, 4),
    (4, [(8, 4), (64, 0)], None, 1, 2, 4),  # GPU workers: the CPUs of the node with the GPUs split
    (8, [(2, 0)], None, None, 1, 2),  # more workers than CPUs: 1 each, 2 at a time
    (3, [(8, 4), (8, 0)], 2, 1, 2, 3),  # GPU workers fit where the GPUs are: 4 GPUs, but 3 workers
    (2, [(8, 1), (8, 1)], 8, 1, 8, 2),
])
def test_a_cluster_s_cpus_are_split_between_the_workers_within_its_nodes(workers, nodes, threads, gpus, share,
                                                                         at_once):
    resources, fits = plan_cluster_workers(workers, nodes, threads=threads, gpus_per_worker=gpus)
    assert (resources.gpus, resources.threads, fits) == (None, share, at_once)


@pytest.mark.parametrize("nodes, threads, gpus, message", [
    ([(4, 0), (4, 0)], 8, None, "Each worker asks for 8 CPUs, which no node of the Ray cluster has (4 CPUs/0 GPUs, "
                                "4 CPUs/0 GPUs); ask for fewer with --threads or resources."),
    ([(8, 1), (2, 4)], 4, 2, "Each worker asks for 4 CPUs and 2 GPUs, which no node of the Ray cluster has (8 CPUs/1 "
                             "GPUs, 2 CPUs/4 GPUs); ask for fewer with --threads or resources."),
    ([], None, None, "Each worker asks for 1 CPU, which no node of the Ray cluster has (no node); ask for fewer with "
                     "--threads or resources."),
])
def test_a_share_no_node_has_is_refused(nodes, threads, gpus, message):
    with pytest.raises(UserError) as refused:
        plan_cluster_workers(2, nodes, threads=threads, gpus_per_worker=gpus)
    assert str(refused.value) == message
