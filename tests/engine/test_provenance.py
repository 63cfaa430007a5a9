import subprocess

from resnet_repro.engine.provenance import git_commit


def git(root, *args):
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=root, check=True, capture_output=True
    )


def test_commit_is_dirty_for_changed_code_not_for_changed_results(tmp_path):
    (tmp_path / "resnet_repro").mkdir()
    (tmp_path / "results").mkdir()
    (tmp_path / "resnet_repro" / "net.py").write_text("depth = 20\n")
    (tmp_path / "results" / "metrics.csv").write_text("iteration\n")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-q", "-m", "first")
    clean = git_commit(tmp_path)
    assert clean and "+" not in clean and clean != "unknown"

    (tmp_path / "results" / "metrics.csv").write_text("iteration\n390\n")  # a run writing its rows
    assert git_commit(tmp_path) == clean

    (tmp_path / "resnet_repro" / "net.py").write_text("depth = 56\n")
    assert git_commit(tmp_path) == clean + "+dirty"


def test_a_folder_that_is_no_checkout_gives_unknown(tmp_path):
    assert git_commit(tmp_path) == "unknown"
