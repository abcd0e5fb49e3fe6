"""End-to-end RL of parent and child threads (GRPO, RLOO; PPO with a critic): rollouts through the APR
runtime, token-exact sequences with credited advantages, the learner's update, and the loop.

config     typed `rl.yaml` (data, algo, loss, optim, train, rollout, engine, dist, checkpoint)
algos      registered variants: advantages, credit, policy losses, aggregations (pure functions)
rollout    a rollout worker: problems -> scored thread trees (rewards registered here)
sequences  trees -> `SequenceBatch` rows, one per thread, with credited advantages
batch      the tensor batch, micro-batches, shards for data-parallel learners
logprobs   token log-probs under a model (loss, recomputed old log-probs, reference)
loss       PPO-clip + KL + entropy, the critic's value loss
learner    policy (+ critic) stepped by an `apr.train` strategy; the frozen reference
weights    weight buckets from the learner to the rollout engines
trainer    the loop (rollout -> advantages -> ref -> update -> sync), checkpoints, failure
"""
