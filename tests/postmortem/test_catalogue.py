"""The suspect catalogue: one module a suspect, docstrings with the fixed sections, docs up to date."""

from tracer.capture import docs
from tracer.capture.suspects import catalogue


def test_every_suspect_is_documented_and_the_pages_are_current():
    ids = [s.id for s in catalogue()]
    assert ids == sorted(ids) and len(ids) == len(set(ids)) >= 6
    for suspect in catalogue():
        docs.sections(suspect)  # raises on a missing section
    assert docs.main(["--check"]) == 0, "run: python -m tracer.capture.docs"
