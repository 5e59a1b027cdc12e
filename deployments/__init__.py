"""Prefect deployments of the edgeport flows (schedules, triggers, work pools)."""
