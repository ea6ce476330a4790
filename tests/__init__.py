"""The test suite, a package tree: tests, helpers and fixture generators import one another as
`tests.…` (`python -m pytest`, `python -m tests.rules.fixtures.make_fixtures`, from the repository root)."""
