# Recipes wrap scripts/; run `just --list`.

# the whole suite (lint + tests)
test *ARGS:
    scripts/test {{ARGS}}

# ruff and mypy
lint:
    scripts/lint

# benchmarks (scripts/bench arrives with the benchmark issue)
bench *ARGS:
    scripts/bench {{ARGS}}

# a real backup and restore into a local vault, in a temp dir
demo:
    scripts/demo
