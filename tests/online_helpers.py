"""Shared by the online tests: tiny models run on one torch thread (fastest for them, and several
threads thrash on a loaded 2-core machine)."""

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
