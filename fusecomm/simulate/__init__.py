"""Predict what fusecomm's all-reduce algorithms and fusion plans cost on a cluster one cannot
run: a discrete-event model of each algorithm's schedule on an α-β cluster description (or a
calibration file fusecomm measured). See docs/simulate.md."""
from fusecomm.simulate.api import simulate_allreduce, simulate_training_step, sweep
from fusecomm.simulate.cluster import PRESETS, Cluster, SelectorModel, link_beta
from fusecomm.simulate.closed_form import auto_choice, closed_form_seconds, selector_seconds
from fusecomm.simulate.events import simulate_schedule
from fusecomm.simulate.schedules import ALGORITHMS
from fusecomm.simulate.workloads import parse_size, parse_sizes, resnet50_gradients

__all__ = ["ALGORITHMS", "PRESETS", "Cluster", "SelectorModel", "auto_choice",
           "closed_form_seconds", "link_beta", "parse_size", "parse_sizes", "resnet50_gradients",
           "selector_seconds", "simulate_allreduce", "simulate_schedule",
           "simulate_training_step", "sweep"]
