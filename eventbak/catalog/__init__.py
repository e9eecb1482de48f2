"""The catalog in the vault: per-session manifests (manifest.py)."""
