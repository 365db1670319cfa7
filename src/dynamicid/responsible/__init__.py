"""Responsible generation: consent for the people depicted (more of issue 37 to come: marks and credentials)."""
