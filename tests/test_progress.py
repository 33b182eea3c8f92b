"""progress.each_file: the writers of a run's files, each telling the progress callable before and after it writes.

Three files: the calls are (0, 3) writing the first, (1, 3) wrote it, ... (3, 3) wrote the last, so a bar
drawn from them starts at 0 and ends full; no callable leaves the writers as they are."""

from __future__ import annotations

from dualpipe_sim.progress import each_file, report


def test_each_file_reports_before_and_after_every_write_and_ends_at_the_total():
    written, calls = [], []
    writers = {name: (lambda path, name=name: written.append((name, path))) for name in ("a.json", "b.png", "c.png")}
    wrapped = each_file(writers, lambda done, total, what: calls.append((done, total, what)))
    assert list(wrapped) == ["a.json", "b.png", "c.png"]  # the same files, in the same order
    for name, write in wrapped.items():
        write(f"/out/{name}")
    assert written == [("a.json", "/out/a.json"), ("b.png", "/out/b.png"), ("c.png", "/out/c.png")]
    assert calls == [(0, 3, "writing a.json"), (1, 3, "wrote a.json"),
                     (1, 3, "writing b.png"), (2, 3, "wrote b.png"),
                     (2, 3, "writing c.png"), (3, 3, "wrote c.png")]  # fmt: skip


def test_without_a_callable_nothing_is_wrapped_or_called():
    writers = {"a.json": print}
    assert each_file(writers, None) is writers
    report(None, 1, 2, "nothing")  # no callable: no call, no error
    seen = []
    report(lambda *a: seen.append(a), 1, 2, "point")
    assert seen == [(1, 2, "point")]
