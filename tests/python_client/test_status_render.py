"""What `turnout status` prints of replicas: a NODE column only beyond one machine."""

from turnout._cli_render import Snapshot, to_text
from turnout.client import ReplicaInfo


def snapshot(*replicas: ReplicaInfo) -> Snapshot:
    return Snapshot(
        controller_address="127.0.0.1:50051",
        controller_pid=1,
        http_address="http://127.0.0.1:8000",
        log_dir="/tmp/logs",
        endpoints={},
        backends={},
        replicas=list(replicas),
    )


def replica(replica_id: str, node: str = "") -> ReplicaInfo:
    return ReplicaInfo(replica_id, "b", "RUNNING", "10.0.0.1:4000", 42, "", node=node)


def test_replicas_on_the_controllers_machine_have_no_node_column() -> None:
    text = to_text(snapshot(replica("b#1")))
    assert "REPLICA" in text and "NODE" not in text


def test_replicas_on_cluster_nodes_show_their_node() -> None:
    text = to_text(snapshot(replica("b#1", "10.200.0.1"), replica("b#2", "10.200.0.2")))
    header, *rows = [line for line in text.splitlines() if "b#" in line or "REPLICA" in line]
    assert header.split()[:3] == ["REPLICA", "STATE", "NODE"]
    assert [row.split()[2] for row in rows] == ["10.200.0.1", "10.200.0.2"]


def test_autoscaled_backends_show_their_desired_count_and_last_decision() -> None:
    status = {
        "desired_replicas": 3,
        "running_replicas": 2,
        "wanted_replicas": 3,
        "load": 5.5,
        "last_decision": "up",
        "last_reason": "load 5.50 requests asked for more than 1 replica(s) for 1.0 s: 1 -> 3",
        "last_decision_time": None,
    }
    base = snapshot(replica("b#1"), replica("b#2"))
    shown = Snapshot(
        **{
            **vars(base),
            "backends": {"b": {"autoscaling": {"max_replicas": 4}, "num_replicas": None}},
            "autoscaling": {"b": status},
        }
    )
    text = to_text(shown)
    backend_row = next(line for line in text.splitlines() if line.startswith("b "))
    assert backend_row.split()[1:3] == ["3", "(auto)"]
    scaled_row = next(line for line in text.splitlines() if line.startswith("b ") and "->" in line)
    assert scaled_row.split()[1:7] == ["1", "4", "5.50", "3", "3", "2"]
    assert "1 -> 3" in scaled_row
