import sys
from pathlib import Path

# test helpers (kitti_tree, nuscenes_tree) live beside the tests
sys.path.insert(0, str(Path(__file__).parent))
