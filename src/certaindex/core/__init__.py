"""The bottom layer: answers and their equivalence, certainty signals, stopping rules, calibration
statistics, the probe protocol and prompt text, shipped data sets and validation. Nothing here
imports another layer of the package."""
