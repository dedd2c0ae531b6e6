import sys
from pathlib import Path

import pytest
import torch

# test helpers (kitti_tree, nuscenes_tree) live beside the tests
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tiny tensors gain nothing from threads, and spinning OpenMP threads crawl on a shared, busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
