"""Benchmark baselines that play every role in one process by design (e.g. Flower's own dense SecAgg+).

Not part of the product: fl_server and fl_client never import from here, and these modules may import
both roles because a baseline needs the miner's training next to the server's evaluation.
"""
