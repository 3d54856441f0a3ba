"""Deployment helpers that are Python (broker kit); importable as deploy.broker.*."""
