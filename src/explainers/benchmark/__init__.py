"""The benchmark: known-truth scenarios (:mod:`.scenarios`), every method on each (:mod:`.runner`), the
randomisation sanity check (:mod:`.sanity`) and the leaderboard that ranks them (:mod:`.leaderboard`).

Submodules are imported where used, so that ``explainers.benchmark.scenarios`` stays light for the CLI.
"""
