"""Shared pytest fixtures. Opt in per module with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""

import pytest
import torch


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run the module's tests on one intra-op thread, then restore the previous count.

    Tests on small tensors gain nothing from intra-op threads, and on a busy 2-vCPU machine the threads' spin-waits
    made the codec tests ~8x slower (175 s instead of 22 s) while burning CPU the other processes needed.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
