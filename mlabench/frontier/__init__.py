"""The serving frontier: attention tokens per second per GPU against context, each point
measured at the largest batch whose KV cache fits a memory budget.

A small KV cache matters because it lets a server hold more sequences, and more sequences
per step means more tokens per second. The frontier joins the two halves of that argument:

1. `plan` (analytic, from `mlabench.capacity`): for each variant and context T, B_max(T), the
   most sequences whose whole-model cache fits one GPU's budget (memory minus a reserve for
   weights, activations and workspace), honouring the cache dtype, tensor parallelism and
   whole pages, capped by a maximum batch. The points become an ordinary suite: one decode
   step of one layer at (B_max, T), so resume, rounds, executors, the accuracy check and
   the run directory work unchanged. One layer's cache at B_max is 1/L of the budget, so it
   fits where the whole model's would.
2. `table` (pandas only, no torch, so the report can read it): the measured rows joined with
   the plan, tokens/s per GPU = B_max / (tp x L x step latency), the fastest backend per
   point, and the winner at each context.

The plan is kept beside the rows as `frontier.json` in the run directory. The figure is the
attention layers' bound: MLP and MoE time are not in it.
"""

FRONTIER_JSON = "frontier.json"
FRONTIER_SUITE = "frontier"

__all__ = ["FRONTIER_JSON", "FRONTIER_SUITE"]
