"""Tables of the store funnel and owner compliance rollups."""
