"""Cluster formation: bootstrap, join and restart (JOIN.md), and the small policies they share."""
