"""The ADS push benchmark runs end to end with tiny numbers, and shows serialize-once.

Real processes and sockets, so the benchmark cannot rot unnoticed; no timing assertions, because
the numbers depend on the machine.
"""

from __future__ import annotations

import json
from pathlib import Path

from bench.ads_push import main


def test_benchmark_converges_and_serializes_once_per_push(tmp_path: Path) -> None:
    out = tmp_path / "results" / "ads_push.json"
    argv = ["--clients", "5", "20", "--clusters", "3", "--repeat", "1", "--timeout", "30"]
    assert main([*argv, "--json", str(out)]) == 0

    document = json.loads(out.read_text(encoding="utf-8"))
    assert document["machine"]["cpu_count"] >= 1
    results = document["results"]
    assert [r["clients"] for r in results] == [5, 20]
    for result in results:
        assert result["converged_clients"] == result["clients"]
        assert result["server_streams"] == result["clients"]
        assert result["initial_s"] > 0
        # A few milliseconds of server CPU: too few timer ticks for a user/system split.
        assert result["server_sys_share"] is None
        assert result["initial_server_sys_share"] is None
        assert len(result["pushes"]) == 1
        for push in result["pushes"]:
            assert push["converged_clients"] == result["clients"]
            assert push["push_s"] > 0
            assert push["server_cpu_s"] >= 0
            # Every type changed, so each push has new versions of all four types.
            assert set(push["versions"].values()).isdisjoint(
                result["initial_snapshot"]["versions"].values()
            )

    # Serialize once: the work per push depends on the snapshot, not on the number of proxies.
    per_n = [
        [(p["resources_serialized"], p["responses_built"]) for p in r["pushes"]] for r in results
    ]
    assert per_n[0] == per_n[1]
    assert per_n[0][0] == (2 * 3 + 2, 4)  # C clusters + C assignments + listener + route


def test_h2_clients_converge_on_two_native_workers(tmp_path: Path) -> None:
    """The cheap HTTP/2 client against the native transport, two workers on one port."""
    out = tmp_path / "ads_push.json"
    argv = ["--clients", "8", "24", "--clusters", "3", "--repeat", "1", "--timeout", "30"]
    argv += ["--transport", "native", "--client-impl", "h2", "--workers", "2"]
    assert main([*argv, "--json", str(out)]) == 0

    results = json.loads(out.read_text(encoding="utf-8"))["results"]
    assert [(r["clients"], r["workers"], r["client_impl"]) for r in results] == [
        (8, 2, "h2"),
        (24, 2, "h2"),
    ]
    for result in results:
        assert result["pinning"] is None  # only one worker is pinned (on 2 cores)
        assert result["converged_clients"] == result["clients"]
        assert sum(result["server_streams_per_worker"]) == result["clients"]
        (push,) = result["pushes"]
        assert push["converged_clients"] == result["clients"]
        assert push["client_cpu_s"] >= 0
        # Each worker has its own cache and serializes the snapshot once for itself.
        assert push["resources_serialized_per_worker"] == [2 * 3 + 2] * 2
    # The counters per push (per worker) do not depend on N.
    per_n = [
        [(p["resources_serialized"], p["responses_built"]) for p in r["pushes"]] for r in results
    ]
    assert per_n == [[(2 * 3 + 2, 4)]] * 2


def test_floor_server_converges_next_to_native_and_serializes_once(tmp_path: Path) -> None:
    """The issue's serialize-once baseline (`bench.floor`) beside the native transport: every
    proxy holds every push, the floor packs each resource and builds each type's response once
    per version whatever N, and its delta rows are skipped (it speaks SotW only)."""
    out = tmp_path / "ads_push.json"
    argv = ["--clients", "4", "12", "--clusters", "3", "--repeat", "2", "--timeout", "30"]
    argv += ["--transport", "floor", "native", "--protocol", "sotw", "delta"]
    assert main([*argv, "--json", str(out)]) == 0

    results = json.loads(out.read_text(encoding="utf-8"))["results"]
    assert [(r["clients"], r["transport"], r["protocol"]) for r in results] == [
        (4, "floor", "sotw"),
        (4, "native", "sotw"),
        (4, "native", "delta"),
        (12, "floor", "sotw"),
        (12, "native", "sotw"),
        (12, "native", "delta"),
    ]
    floors = [r for r in results if r["transport"] == "floor"]
    for result in floors:
        assert result["converged_clients"] == result["server_streams"] == result["clients"]
        for push in result["pushes"]:
            assert push["converged_clients"] == result["clients"]
            # Every type changed: all resources packed once, one response per type.
            assert (push["resources_serialized"], push["responses_built"]) == (2 * 3 + 2, 4)
        # Initial convergence: each type's response made once, for every proxy.
        initial = result["initial_snapshot"]
        assert (initial["resources_serialized"], initial["responses_built"]) == (2 * 3 + 2, 4)
    # The same bytes per proxy as pilotfish's, give or take the nonces and version strings.
    floor_bytes = floors[0]["pushes"][0]["bytes_per_client"]
    native_bytes = results[1]["pushes"][0]["bytes_per_client"]
    assert abs(floor_bytes - native_bytes) < 0.1 * native_bytes


def test_translate_benchmark_shares_translations_by_proxy_shape(tmp_path: Path) -> None:
    from bench.translate import main as translate_main

    out = tmp_path / "translate.json"
    assert translate_main(["--proxies", "12", "--repeat", "1", "--json", str(out)]) == 0
    rows = json.loads(out.read_text(encoding="utf-8"))["rows"]
    shared, distinct = rows
    assert (shared["proxies"], shared["shapes"], distinct["shapes"]) == (12, 6, 12)
    # Translations done in the last run (the full one, then the edit): one per shape per
    # round; proxies connected before the first round are not translated on their own.
    assert shared["translations_last_run"] == 6 * 2
    assert distinct["translations_last_run"] == 12 * 2


def test_synthetic_translate_redoes_only_what_one_change_touches(tmp_path: Path) -> None:
    from bench.translate import main as translate_main

    out = tmp_path / "translate.json"
    assert translate_main(["--services", "20", "--repeat", "2", "--json", str(out)]) == 0
    document = json.loads(out.read_text(encoding="utf-8"))
    assert document["rows"] == []  # bookinfo was not asked for
    assert document["machine_info"]["cpu_count"] >= 1
    (row,) = document["synthetic"]["rows"]
    assert (row["services"], row["shapes"], row["objects"]) == (20, 1, 60)
    # Per service 4 clusters and 4 load assignments (all endpoints, subsets v1..v3), plus the
    # listener and the route configuration.
    assert row["resources"] == 8 * 20 + 2
    assert row["full"]["units_translated"] == 2 * 20  # an outbound unit and a virtual host each
    assert row["full"]["resources_serialized"] == 8 * 20 + 2
    assert row["memory_mb"]["peak"] > 0
    # A VirtualService's weights: that service's two units, and the one route configuration.
    route = row["route_change"]
    assert (route["units_translated"], route["units_reused"]) == (2, 2 * 20 - 2)
    assert route["resources_serialized"] == 1
    # One more endpoint (labelled v1): that service's outbound unit, and the load assignments
    # that hold it: the service's and subset v1's.
    endpoint = row["endpoint_change"]
    assert (endpoint["units_translated"], endpoint["units_reused"]) == (1, 2 * 20 - 1)
    assert endpoint["resources_serialized"] == 2
    for change in (*route["runs"], *endpoint["runs"]):
        assert change["proxies_changed"] == 1
        assert change["total_s"] > 0


def test_envoys_benchmark_every_envoy_follows_a_flip(tmp_path: Path) -> None:
    from bench.envoys import main as envoys_main

    out = tmp_path / "envoys.json"
    argv = ["--envoys", "2", "--repeat", "1", "--settle", "0.1", "--timeout", "20"]
    assert envoys_main([*argv, "--json", str(out)]) == 0
    result = json.loads(out.read_text(encoding="utf-8"))["result"]
    (flip,) = result["flips"]
    assert flip["colour"] == "green" and flip["converged"] == 2
    assert all(0 < ms < 20_000 for ms in flip["envoy_ms"])
    assert flip["first_ms"] <= flip["p50_ms"] <= flip["last_ms"]
    assert result["median"]["all_converged"] is True


def test_suite_quick_writes_a_summary(tmp_path: Path) -> None:
    from bench.__main__ import main as suite_main

    assert suite_main(["--quick", "--only", "translate", "--results", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text(encoding="utf-8"))
    entry = summary["benchmarks"]["translate"]
    assert entry["ok"] is True
    assert [row["services"] for row in entry["headline"]["synthetic"]] == [20, 200]
    assert (tmp_path / "translate.json").is_file()
