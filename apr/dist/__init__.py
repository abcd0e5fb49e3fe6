"""Placement of the RL pieces: the only package that imports ray (lazily, from `make_cluster`).

    >>> # cluster = make_cluster(cfg)     # dist.mode: none | ray_local | ray_cluster
"""

from __future__ import annotations


def make_cluster(cfg):
    """`InProcessCluster` for `dist.mode=none`, else a `RayCluster` (local or joined)."""
    if cfg.dist.mode == "none":
        from apr.rl.trainer import InProcessCluster

        return InProcessCluster(cfg)
    from apr.dist.ray_cluster import RayCluster

    return RayCluster(cfg)
