"""Crash-matrix tests: SIGKILL logq child processes at random points and check invariants after reopening."""
