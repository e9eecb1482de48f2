"""The daemon: its schedule (when to resume, start or sleep) and the loop that follows it."""
