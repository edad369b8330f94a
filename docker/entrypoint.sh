#!/usr/bin/env bash
# Entry point of the lpcv_segmentation images: ROS 2 and the package's workspace in the
# environment, then the command (default: ros2 launch lpcv_segmentation drone.launch.py).
set -e
# Jetson community images install ROS 2 under /opt/ros/<distro>/install, apt under /opt/ros/<distro>.
for setup in "/opt/ros/${ROS_DISTRO:-humble}/install/setup.bash" \
             "/opt/ros/${ROS_DISTRO:-humble}/setup.bash" \
             /ws/install/setup.bash; do
    if [ -f "$setup" ]; then
        set +u
        # shellcheck disable=SC1090
        source "$setup"
    fi
done
exec "$@"
