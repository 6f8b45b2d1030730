"""Inspecting a run: saved rollouts, reward-hacking flags and a self-contained HTML report.

    from r1jax.report import write_report
    write_report("runs/r1_zero_tiny")        # → runs/r1_zero_tiny/report.html
"""
from r1jax.report.flags import DETECTORS, Flag, run_flags
from r1jax.report.page import REPORT_NAME, rl_flags, save_report, write_report
from r1jax.report.rollouts import RolloutLog, RolloutRecord, load_record, read_rollouts, save_record
from r1jax.report.run import PhaseSeries, Run, load_run

__all__ = ["DETECTORS", "REPORT_NAME", "Flag", "PhaseSeries", "RolloutLog", "RolloutRecord", "Run", "load_record",
           "load_run", "read_rollouts", "rl_flags", "run_flags", "save_record", "save_report", "write_report"]
