"""ament_python package: installs the on-board package plus launch/, config/ and models/ into
share/lpcv_segmentation, and the node's console script into lib/lpcv_segmentation."""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "lpcv_segmentation"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(include=[PACKAGE, PACKAGE + ".*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + PACKAGE]),
        ("share/" + PACKAGE, ["package.xml"]),
        ("share/" + PACKAGE + "/launch", glob("launch/*.py")),
        ("share/" + PACKAGE + "/config", glob("config/*.yaml") + glob("config/*.xml")),
        ("share/" + PACKAGE + "/models", glob("models/*.onnx") + glob("models/*.json")
         + glob("models/*.md")),
    ],
    # ament_python: runtime dependencies are package.xml's exec_depends (rosdep installs them);
    # pip only needs setuptools. rosbags has no rosdep key: bag_eval's extra.
    install_requires=["setuptools"],
    extras_require={"bag_eval": ["rosbags>=0.10", "tqdm"], "geo": ["pymap3d>=3.1"], "zoo": ["onnx"]},
    zip_safe=True,
    maintainer="lpcv_segmentation maintainers",
    maintainer_email="lpcv-segmentation@example.org",
    description="On-board semantic segmentation of UAV disaster scenes (LPCV 2023 classes).",
    license="Apache-2.0",
    python_requires=">=3.8",
    entry_points={
        "console_scripts": [
            "segmentation_node = lpcv_segmentation.node.__main__:main",
            "bag_eval = lpcv_segmentation.replay.bag_eval:main",
        ],
    },
)
