"""The backup pipeline: scanner, builder and uploader tasks run by the coordinator."""
