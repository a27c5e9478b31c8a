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


def test_translate_benchmark_shares_translations_by_proxy_shape(tmp_path: Path) -> None:
    from bench.translate import main as translate_main

    out = tmp_path / "translate.json"
    assert translate_main(["--proxies", "12", "--repeat", "1", "--json", str(out)]) == 0
    rows = json.loads(out.read_text(encoding="utf-8"))["rows"]
    shared, distinct = rows
    assert (shared["proxies"], shared["shapes"], distinct["shapes"]) == (12, 6, 12)
    # Translations done in the last run (initial, full, edit): one per shape per round.
    assert shared["translations_last_run"] == 6 * 3
    assert distinct["translations_last_run"] == 12 * 3
