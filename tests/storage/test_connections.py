"""Where a storage keeps the runs paused between halving levels (``hpsearch.storage.connections.runs_folder``)."""

from __future__ import annotations

from hpsearch.storage.connections import runs_folder


def test_paused_runs_lie_beside_a_sqlite_database_and_in_the_cache_folder_for_a_server(tmp_path, monkeypatch):
    assert runs_folder(f"sqlite:///{tmp_path / 'study.db'}") == tmp_path / ".study.db.runs"
    server = "postgresql://postgres@127.0.0.1:5432/test"
    monkeypatch.setenv("HPSEARCH_CACHE_DIR", str(tmp_path / "cache"))
    assert runs_folder(server).parent == tmp_path / "cache" / "runs"
    assert runs_folder(server) == runs_folder(server) != runs_folder(server + "2")  # one folder per storage
    monkeypatch.delenv("HPSEARCH_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert runs_folder(server).parent == tmp_path / "xdg" / "hpsearch" / "runs"
