"""Key -> vShard -> group -> leader routing."""
