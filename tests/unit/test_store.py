"""The store's atomic folder writes when several processes build the same cache at once (the ranks of one
training run): the first finished folder stays, nobody deletes a folder another process may be reading."""

from __future__ import annotations

from pathlib import Path

from drafter.store import atomic_dir, discard_dir


def write_part(folder: Path, text: str) -> None:
    """What a cache writer does with the temporary folder it is given (save_to_disk creates it)."""
    folder.mkdir()
    (folder / "part").write_text(text)


def test_a_later_writer_keeps_the_folder_another_process_finished_first(tmp_path):
    target = tmp_path / "cache"
    with atomic_dir(target) as late:
        write_part(late, "late")
        with atomic_dir(target) as early:  # another process finishes the same work while this one still writes
            write_part(early, "early")
        reader = open(target / "part")  # ...and a reader opens theirs before this one finishes
    try:
        assert (target / "part").read_text() == "early"
        assert reader.read() == "early"
    finally:
        reader.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]  # no temporary folder left behind


def test_a_discarded_folder_is_written_anew(tmp_path):
    target = tmp_path / "cache"
    with atomic_dir(target) as first:
        write_part(first, "damaged")
    discard_dir(target)
    assert not target.exists()
    discard_dir(target)  # already gone: nothing to do
    with atomic_dir(target) as second:
        write_part(second, "rebuilt")
    assert (target / "part").read_text() == "rebuilt"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]
