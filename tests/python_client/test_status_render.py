"""What `turnout status` prints of replicas: a NODE column only beyond one machine."""

import dataclasses

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


def test_each_replica_shows_its_restarts_and_why_it_was_last_restarted() -> None:
    again = dataclasses.replace(
        replica("b#1"), restarts=2, last_error="process exited with code -9\nTraceback ..."
    )
    failing = dataclasses.replace(
        replica("b#2"), state="FAILED", restarts=1, error="boom", last_error="boom"
    )
    lines = to_text(snapshot(again, failing, replica("b#3"))).splitlines()
    header = next(line for line in lines if line.startswith("REPLICA"))
    assert header.split()[-4:] == ["RESTARTS", "ERROR", "LAST", "ERROR"]
    rows = {line.split()[0]: line for line in lines if line.startswith("b#")}
    assert rows["b#1"].split()[4] == "2"
    assert rows["b#1"].endswith("process exited with code -9 ...")
    # The current error once, not again as the last one.
    assert rows["b#2"].split()[4] == "1" and rows["b#2"].count("boom") == 1
    assert rows["b#3"].split()[4:] == ["0"]


def endpoint(**extra: object) -> dict[str, object]:
    return {
        "route": "/api",
        "methods": ["GET"],
        "traffic": {"b": 1.0},
        "shadows": {},
        "request_timeout": None,
        **extra,
    }


def test_an_apps_route_shows_it_serves_the_paths_under_it() -> None:
    endpoints = {"api": endpoint(serves_app=True), "plain": endpoint(route="/plain")}
    shown = dataclasses.replace(snapshot(), endpoints=endpoints)
    lines = to_text(shown).splitlines()
    rows = {line.split()[0]: line.split()[1] for line in lines if line.startswith(("api", "plain"))}
    assert rows == {"api": "/api/*", "plain": "/plain"}


def test_cors_policies_are_listed_only_where_there_are_some() -> None:
    shown = dataclasses.replace(snapshot(), endpoints={"plain": endpoint()})
    assert "CORS" not in to_text(shown)
    policy = {
        "allow_origins": ["https://a.example", "https://b.example"],
        "allow_methods": [],
        "allow_headers": ["X-Token"],
        "expose_headers": [],
        "allow_credentials": True,
        "max_age": 600,
    }
    shown = dataclasses.replace(snapshot(), endpoints={"api": endpoint(cors=policy)})
    line = next(
        line for line in to_text(shown).splitlines() if line.startswith("api ") and "https" in line
    )
    assert line.split()[1:] == [
        "https://a.example,https://b.example",
        "allow_headers=X-Token",
        "allow_credentials=true",
        "max_age=600",
    ]


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
