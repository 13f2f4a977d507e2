# The benchmark suite: every scenario, every comparator.
#
#   make bench          # = MIX_ENV=prod mix run bench/run.exs
#   make bench-quick    # = ... --quick: a fast check that the harness runs
#
# Options: --quick, --only fanout,memory (names or numbers), --out DIR.
# Set PHOENIX_PUBSUB_PATH to a phoenix_pubsub checkout to include it.
# A full run writes bench/results/latest.md.
Code.require_file("support/harness.exs", __DIR__)
YggBench.Harness.main(System.argv())
