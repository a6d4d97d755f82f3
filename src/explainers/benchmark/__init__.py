"""The benchmark: known-truth scenarios, every method on each, and a leaderboard that ranks them."""

from explainers.benchmark.leaderboard import Leaderboard, build_leaderboard, separation

__all__ = ["Leaderboard", "build_leaderboard", "separation"]
