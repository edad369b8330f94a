#!/usr/bin/env bash
# The steps both Jetson images share (docker/jetpack5, docker/jetpack6), run at build time:
#
#   jetson_setup.sh deps      TensorRT's Python bindings (L4T apt), onnxruntime-gpu and
#                             cuda-python (Jetson AI Lab index), numpy < 2 and PyYAML
#   jetson_setup.sh package   colcon build of /ws/src/lpcv_segmentation, then checks that
#                             ONNX Runtime has its CUDA provider, tensorrt imports and the
#                             node is installed, so a broken image fails here, not on the drone
#
# Settings (the Dockerfiles' build arguments): JETSON_PIP_INDEX, ORT_VERSION, CUDA_PYTHON
# (a pip requirement), L4T_APT_RELEASE (e.g. r36.2: adds NVIDIA's Jetson apt repository when
# the base image does not list it; empty: use what the base lists).
set -euo pipefail

deps() {
    if ! python3 -c "import tensorrt" 2> /dev/null; then
        local source_list=/etc/apt/sources.list.d/nvidia-l4t-apt-source.list
        if [ -n "${L4T_APT_RELEASE:-}" ] && [ ! -f "$source_list" ]; then
            curl -fsSL https://repo.download.nvidia.com/jetson/jetson-ota-public.asc \
                -o /etc/apt/trusted.gpg.d/jetson-ota-public.asc
            echo "deb https://repo.download.nvidia.com/jetson/common ${L4T_APT_RELEASE} main" \
                > "$source_list"
        fi
        apt-get update
        apt-get install -y --no-install-recommends python3-libnvinfer
        rm -rf /var/lib/apt/lists/*
    fi
    # onnxruntime-gpu replaces a CPU onnxruntime: both provide the onnxruntime module
    python3 -m pip uninstall -y onnxruntime 2> /dev/null || true
    python3 -m pip install --no-cache-dir --extra-index-url "$JETSON_PIP_INDEX" \
        "onnxruntime-gpu==${ORT_VERSION}" "$CUDA_PYTHON"
    python3 -m pip install --no-cache-dir "numpy<2" pyyaml
}

package() {
    set +u
    # Jetson community images build ROS 2 from source into /opt/ros/<distro>/install
    # shellcheck disable=SC1090
    source "/opt/ros/${ROS_DISTRO:-humble}/install/setup.bash" 2> /dev/null \
        || source "/opt/ros/${ROS_DISTRO:-humble}/setup.bash"
    set -u
    cd /ws
    colcon build --packages-select lpcv_segmentation --event-handlers console_direct+
    rm -rf build log
    python3 -c "import onnxruntime as o; p = o.get_available_providers(); \
print('onnxruntime', o.__version__, p); assert 'CUDAExecutionProvider' in p, p"
    python3 -c "import tensorrt; print('tensorrt', tensorrt.__version__)"
    test -x /ws/install/lpcv_segmentation/lib/lpcv_segmentation/segmentation_node
}

case "${1:-}" in
    deps) deps ;;
    package) package ;;
    *) echo "usage: $0 deps|package" >&2; exit 2 ;;
esac
