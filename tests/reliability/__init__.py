"""Reliability tests: kill-and-resume of real CLI runs, numerical guards."""
