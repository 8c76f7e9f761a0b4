"""Cluster formation: bootstrap, join and restart (docs/JOIN.md), and the policies they share."""
