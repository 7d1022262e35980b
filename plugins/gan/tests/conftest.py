import pytest
import torch


@pytest.fixture(autouse=True)
def single_thread():
    """The test networks are tiny: handing each op to a second thread costs more than it saves, and on
    a busy shared CPU every hand-off can wait a scheduler slice (observed: 3 s per step instead of 0.1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
