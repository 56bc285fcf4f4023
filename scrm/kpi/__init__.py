"""Managers' figures: order attribution, the rollups and the dashboard's queries."""
