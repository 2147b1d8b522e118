"""``r1v2.fsutil``: write into a temporary sibling folder, then swap it into place."""

from __future__ import annotations

import os

import pytest

from r1v2.fsutil import OutputDirError, check_output_dir, replace_dir


def _folder(path, **files):
    path.mkdir(parents=True)
    for name, text in files.items():
        (path / name).write_text(text)
    return path


def _listing(root):
    return sorted(p.name for p in root.iterdir())


def test_new_folder_is_written_through_a_temporary_sibling(tmp_path):
    out = tmp_path / "a" / "out"
    with replace_dir(out, overwrite=False) as tmp:
        assert tmp == (tmp_path / "a" / f"out.tmp-{os.getpid()}")
        assert not out.exists()  # nothing at OUT until the body is done
        (tmp / "w.txt").write_text("new")
    assert (out / "w.txt").read_text() == "new"
    assert _listing(tmp_path / "a") == ["out"]


def test_overwrite_swaps_and_removes_the_old_folder(tmp_path):
    out = _folder(tmp_path / "out", old="1")
    with replace_dir(out, overwrite=True) as tmp:
        (tmp / "new").write_text("2")
        assert (out / "old").read_text() == "1"  # untouched while the body runs
    assert _listing(out) == ["new"]
    assert _listing(tmp_path) == ["out"]  # no .tmp-/.old- left


def test_failing_body_leaves_out_untouched_and_no_temporary(tmp_path):
    out = _folder(tmp_path / "out", old="1")
    with pytest.raises(RuntimeError, match="boom"):
        with replace_dir(out, overwrite=True) as tmp:
            (tmp / "half").write_text("x")
            raise RuntimeError("boom")
    assert _listing(out) == ["old"] and (out / "old").read_text() == "1"
    assert _listing(tmp_path) == ["out"]


def test_os_error_in_body_names_the_output(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(OutputDirError, match=r"out: cannot write the output folder: .*disk full"):
        with replace_dir(out, overwrite=False):
            raise OSError(28, "disk full")
    assert _listing(tmp_path) == []


def test_failed_swap_puts_the_old_folder_back(tmp_path, monkeypatch):
    """The second rename (tmp -> OUT) fails: OUT is renamed back from OUT.old-<pid>."""
    out = _folder(tmp_path / "out", old="1")
    real_replace = os.replace
    calls = []

    def flaky(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:
            raise PermissionError(13, "denied")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", flaky)
    with pytest.raises(OutputDirError, match="denied"):
        with replace_dir(out, overwrite=True) as tmp:
            (tmp / "new").write_text("2")
    assert _listing(out) == ["old"]
    assert _listing(tmp_path) == ["out"]


def test_existing_output_needs_overwrite(tmp_path):
    out = _folder(tmp_path / "out", old="1")
    with pytest.raises(OutputDirError, match="not empty.*overwrite=true"):
        with replace_dir(out, overwrite=False):
            pytest.fail("the body must not run")
    assert _listing(out) == ["old"]
    (tmp_path / "empty").mkdir()
    assert check_output_dir(tmp_path / "empty", overwrite=False) == tmp_path / "empty"


def test_file_in_the_way_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputDirError, match=r"f: the output path is not a folder$"):
        check_output_dir(tmp_path / "f", overwrite=True)
    with pytest.raises(OutputDirError, match=r"f/sub: the output path is not a folder \(.*f is a"):
        check_output_dir(tmp_path / "f" / "sub", overwrite=True)


@pytest.mark.parametrize(
    "out, message",
    [
        ("in", "is the model input"),
        ("in/sub", "is inside the model input"),
        (".", "holds the model input"),
        ("in/../in", "is the model input"),
    ],
)
def test_output_overlapping_an_input_is_refused(tmp_path, out, message):
    source = _folder(tmp_path / "in", w="1")
    with pytest.raises(OutputDirError, match=message):
        check_output_dir(tmp_path / out, overwrite=True, inputs={"model": source})
    assert _listing(source) == ["w"]


def test_symlinked_input_is_recognised(tmp_path):
    source = _folder(tmp_path / "in", w="1")
    (tmp_path / "link").symlink_to(source)
    with pytest.raises(OutputDirError, match="is the model input"):
        check_output_dir(tmp_path / "link", overwrite=True, inputs={"model": source})
