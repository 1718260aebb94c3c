"""Judging programs and policies: the bench harness (live engines) and the evaluation of early-exit
policies on recorded traces (replay, selection of thresholds, tables and plots)."""
