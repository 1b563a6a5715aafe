"""Re-exported from tests.support.procs for the peers that still import `.procs`; new code imports tests.support."""

from tests.support.procs import (
    descendants,
    kill_quietly,
    pid_alive,
    pid_runs,
    read_pid_file,
    terminate_tree,
    wait_gone,
)

__all__ = ["descendants", "kill_quietly", "pid_alive", "pid_runs", "read_pid_file", "terminate_tree", "wait_gone"]
