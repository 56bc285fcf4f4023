"""The test helpers themselves must fail loudly: a thread's exception and a missed deadline."""

import pytest

from tests.waiting import run_threads, wait_until


def test_an_exception_in_a_racing_thread_fails_the_test():
    def boom():
        raise ValueError("raised inside a worker thread")

    with pytest.raises(ValueError, match="inside a worker thread"):
        run_threads([lambda: 1, boom])


def test_results_come_back_in_order():
    assert run_threads([lambda: "a", lambda: "b", lambda: "c"]) == ["a", "b", "c"]


def test_a_wait_without_success_times_out_with_what_it_waited_for():
    with pytest.raises(AssertionError, match="the server to start"):
        wait_until(lambda: False, timeout=0.1, what="the server to start")
    assert wait_until(lambda: 42, timeout=0.1) == 42
