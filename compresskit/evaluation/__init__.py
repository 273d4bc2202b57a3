"""Metrics, cost profiles (layers executed, FLOPs, parameters) and model evaluation."""
