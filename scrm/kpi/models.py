"""Tables of the KPI domain (filled in by the attribution and rollup work)."""
