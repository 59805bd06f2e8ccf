"""The champion registry and the promotion gate.

`store` keeps every candidate model the promote stage has seen (its files, checksums, metrics,
data version, params hash, parent and status) and which one is the champion, in
`models/registry/`; `gate` holds the rules a candidate must meet to replace the champion.
`lock` keeps one writer at a time (promote, continual learning, package) and `recovery` names
what a killed writer left behind. `python -m tasks.registry` prints the registry (`--verify`
checks every recorded checksum and says which state it is in; `--clean` removes leftovers).
"""
