"""Calls run on the multi-node test cluster's driver (:mod:`tests._cluster`): each gets the cluster first."""

from __future__ import annotations

from datacopilot.executors import ray_dedup
from datacopilot.executors.ray import RayOptions, run_ops_on_ray


def run(cluster, table, ops, on_error="raise", root=None, batch_size=8, block_rows=8, barriers="partitioned"):
    """``run_ops_on_ray`` on the cluster: ``(rows, records, quarantine)``."""
    return run_ops_on_ray(table, ops, on_error, root=root, batch_size=batch_size,
                          options=RayOptions(block_rows=block_rows, barriers=barriers))


def driver_state(cluster, table, ops, block_rows):
    """A run on the cluster with what the dedup barrier holds on the driver recorded (the real functions run,
    their results kept): the rows, then, per barrier, the sizes of the structures and where each object they
    refer to lives (the node ids holding it in their object store; none: held inline, in the driver's memory)."""
    import ray

    seen = []
    scatter, decide = ray_dedup.scatter_all, ray_dedup.decide_all

    def scatter_all(*a, **k):
        blocks, counts, pieces = scatter(*a, **k)
        seen.append({"counts": counts, "pieces": pieces})
        return blocks, counts, pieces

    def decide_all(*a, **k):
        routed = decide(*a, **k)
        seen[-1]["routed"] = routed
        return routed

    ray_dedup.scatter_all, ray_dedup.decide_all = scatter_all, decide_all
    try:
        table, _, _ = run(cluster, table, ops, block_rows=block_rows, batch_size=block_rows)
    finally:
        ray_dedup.scatter_all, ray_dedup.decide_all = scatter, decide
    head = ray.get_runtime_context().get_node_id()
    out = []
    for s in seen:
        refs = [r for part in s["pieces"] for r in part] + [r for d in s["routed"] for r in d if r is not None]
        kinds = {type(r).__name__ for part in s["pieces"] for r in part}
        kinds |= {type(r).__name__ for d in s["routed"] for r in d}
        where = ray.experimental.get_object_locations(refs)
        out.append({"blocks": len(s["counts"]), "counts": s["counts"].dtype.name,
                    "pieces": [len(p) for p in s["pieces"]], "routed": [len(d) for d in s["routed"]],
                    "kinds": kinds, "objects": len(refs),
                    "inline": sum(not w["node_ids"] for w in where.values()),
                    "on_head": sum(head in w["node_ids"] for w in where.values()),
                    "bytes": int(sum(w["object_size"] or 0 for w in where.values()))})
    return table.num_rows, out


def kill_a_node_while_partitioned(cluster, table, ops, block_rows=8):
    """A run on the cluster where, once the first barrier's keys are scattered (held in the workers' object
    stores) and before its partitions decide, the worker node holding the first piece is killed (a fresh one
    joins): ``(rows, records, quarantine, the killed node's id, how many times partitions decided)``."""
    import ray

    decide, killed, calls = ray_dedup.decide_all, [], []

    def decide_all(ray_, op, counts, pieces, get):
        calls.append(op.name)
        if not killed:
            where = ray.experimental.get_object_locations([pieces[0][0]])
            node_id = next(iter(where.values()))["node_ids"][0]
            node = next(n for n in cluster.worker_nodes if n.node_id == node_id)
            cluster.remove_node(node, allow_graceful=False)
            cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
            killed.append(node_id)
        return decide(ray_, op, counts, pieces, get)

    ray_dedup.decide_all = decide_all
    try:
        return (*run(cluster, table, ops, block_rows=block_rows), killed[0] if killed else None, len(calls))
    finally:
        ray_dedup.decide_all = decide
