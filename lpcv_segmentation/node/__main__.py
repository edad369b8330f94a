"""``python -m lpcv_segmentation.node``: the segmentation node (as ``ros2 run`` starts it)."""
import sys

from lpcv_segmentation.node.segmentation_node import main

sys.exit(main())
