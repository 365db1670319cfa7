"""Responsible generation: consent for the people depicted, and provenance metadata on generated images."""
