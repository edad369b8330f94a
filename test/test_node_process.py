"""The node-process harness: unique ROS domains across processes, environment, clean stop."""
import subprocess
import sys
import time

import pytest

from lpcv_segmentation.replay.node_process import (DOMAIN_IDS, ChildProcess, DomainLease,
                                                   NodeProcessError, graph_env, node_arguments)

HOLD = ("import sys, time; from lpcv_segmentation.replay.node_process import DomainLease; "
        "lease = DomainLease(); print(lease.id, flush=True); sys.stdin.read()")


def test_a_domain_held_by_another_process_is_never_handed_out(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=graph_env())
    try:
        held = int(holder.stdout.readline())
        with pytest.raises(NodeProcessError, match="no free ROS domain id among %d" % held):
            DomainLease(held)
        # every free id can be leased once here; the other process's id is never among them
        leases = []
        try:
            while True:
                leases.append(DomainLease())
        except NodeProcessError:
            pass
        ids = [lease.id for lease in leases]
        assert held not in ids and len(set(ids)) == len(ids) > 0
        assert set(ids) <= set(DOMAIN_IDS)
        for lease in leases:
            lease.release()
    finally:
        holder.stdin.close()
        holder.wait(timeout=20)
    with DomainLease(held) as lease:  # released when its holder exited
        assert lease.id == held


def test_environment_and_arguments():
    env = graph_env(42, profile=False, base={"FASTDDS_DEFAULT_PROFILES_FILE": "x"})
    assert env["ROS_DOMAIN_ID"] == "42" and "FASTDDS_DEFAULT_PROFILES_FILE" not in env
    assert env["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
    assert graph_env(42)["FASTDDS_DEFAULT_PROFILES_FILE"].endswith("fastdds_large_frames.xml")
    assert node_arguments("m.onnx", None, "/cam", "p.yaml", {"publish_color": False}) == [
        "--ros-args", "--params-file", "p.yaml", "-p", "model_path:=m.onnx",
        "-p", "input_topic:=/cam", "-p", "publish_color:=false"]


def test_child_process_log_alive_check_and_stop(tmp_path):
    sleeper = ChildProcess([sys.executable, "-c", "import time; print('up', flush=True); "
                            "time.sleep(60)"], graph_env(), tmp_path / "s.log", name="sleeper")
    deadline = time.monotonic() + 20
    while "up" not in sleeper.log_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    sleeper.check_alive()
    assert sleeper.stop(timeout=10) != 0 and not sleeper.alive()  # SIGINT ends it
    failing = ChildProcess([sys.executable, "-c", "raise SystemExit('boom')"], graph_env(),
                           tmp_path / "f.log", name="failing")
    failing.process.wait(timeout=20)
    with pytest.raises(NodeProcessError, match="(?s)failing exited with code 1 before the test ended.*boom"):
        failing.check_alive("the test")
