"""Evaluation: metrics, ranking a task's candidates, classic baselines."""
