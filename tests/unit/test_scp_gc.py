"""The listener's accept loop never runs a full garbage collection (a ~100 ms stall of every thread)."""

import gc

from osirix_py.net.scp import _Server


def test_accept_loop_collects_only_young_generations(monkeypatch):
    calls = []
    monkeypatch.setattr(gc, "collect", lambda generation=2: calls.append(generation) or 0)
    server = _Server.__new__(_Server)  # only the poll counter is needed
    server._gc = [0, 59]
    for _ in range(180):
        server.service_actions()
    assert calls == [1, 1, 1]  # every 60 polls, generations 0-1 only
