"""The ROS 2 node (``segmentation_node``) and the pure functions under it: parameters, the
per-frame pipeline, statistics and diagnostics, camera_info and vision_msgs conversion.
``python -m lpcv_segmentation.node`` runs the node."""
