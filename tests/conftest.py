import os

# Small ops on 2 cores slow down 5-10x without this (DESIGN.md, Facts).
os.environ.setdefault("OMP_NUM_THREADS", "1")
