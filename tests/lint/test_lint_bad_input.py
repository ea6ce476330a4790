"""Bad input to lint and verify: one clear line and a non-zero exit, never a traceback."""

import os

from tests.helpers.cli import why_route
from tests.lint.lint_helpers import FIXTURES

SEED_BLOG = str(FIXTURES / "seed-blog.sh")


def one_line(result, status: int, text: str) -> None:
    assert result.returncode == status, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and text in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_unreadable_script(seed, tmp_path):
    one_line(why_route("lint", str(tmp_path / "missing.sh"), "--snapshot", seed["slow"], no_color=True), 2,
             "cannot read script")
    one_line(why_route("lint", str(tmp_path), "--snapshot", seed["slow"], no_color=True), 2, "is a directory")
    binary = tmp_path / "binary.sh"
    binary.write_bytes(b"\xff\xfe\x00ip")
    one_line(why_route("lint", str(binary), "--snapshot", seed["slow"], no_color=True), 2, "not a text file")


def test_missing_or_broken_snapshot(seed, tmp_path):
    one_line(why_route("lint", SEED_BLOG, "--snapshot", str(tmp_path / "none.json"), no_color=True), 2,
             "cannot read snapshot")
    broken = tmp_path / "broken.json"
    broken.write_text("{}")
    one_line(why_route("lint", SEED_BLOG, "--snapshot", str(broken), no_color=True), 2, "not a why-route snapshot")
    one_line(why_route("verify", str(FIXTURES / "seed-ultimate.toml"), "--snapshot", str(broken), no_color=True),
             2, "not a why-route snapshot")
    one_line(why_route("verify", str(tmp_path / "none.toml"), no_color=True), 2, "cannot read expectations")


def test_both_sources(seed):
    one_line(why_route("lint", SEED_BLOG, "--snapshot", seed["slow"], "--netns", "x", no_color=True), 2, "not both")


def test_not_root(seed):
    import tempfile

    # A copy nobody can read (pytest's tmp_path is private to root).
    with tempfile.NamedTemporaryFile("wb", suffix=".json", dir="/tmp") as snap:
        snap.write(open(seed["slow"], "rb").read())
        snap.flush()
        os.chmod(snap.name, 0o644)

        def as_nobody():
            os.setgid(65534)
            os.setuid(65534)

        one_line(why_route("lint", SEED_BLOG, "--snapshot", snap.name, preexec_fn=as_nobody, no_color=True), 3,
                 "needs root")
