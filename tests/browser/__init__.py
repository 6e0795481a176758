"""The web dashboard in a real headless chromium (`tox -e browser`)."""
