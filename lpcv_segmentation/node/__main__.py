"""``python -m lpcv_segmentation.node`` and the ``segmentation_node`` console script (as ``ros2
run`` and the launch file start it): the segmentation node.

The node module is imported here, inside ``main``, so that a SIGINT that arrives while Python
still imports rclpy, NumPy or OpenCV (before rclpy handles the signal) ends the process like
any other SIGINT: exit code 0, no traceback.
"""
import sys

__all__ = ["main"]


def main() -> int:
    """Run the node; 0 after SIGINT at any moment, 1 when an unmanaged node cannot start."""
    try:
        from lpcv_segmentation.node.segmentation_node import main as run_node
        return run_node()
    except KeyboardInterrupt:  # interrupted before rclpy took over SIGINT: a clean stop
        return 0


if __name__ == "__main__":
    sys.exit(main())
