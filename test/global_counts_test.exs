defmodule Yggdrasil.GlobalCountsTest do
  # What the engine's global counts (Yggdrasil.info/0) say after a
  # subscriber's death and a large fan-out, compared exactly. The scenarios
  # run on a peer node of their own (Yggdrasil.Test.QuietCounts), where
  # nothing else subscribes: in this VM other tests' processes come and go
  # at any time. Not async: it makes this node distributed for a while.
  use ExUnit.Case, async: false

  alias Yggdrasil.Test.Cluster
  alias Yggdrasil.Test.QuietCounts

  setup_all do
    distributed? = Cluster.ensure_distributed!()
    {peer, node} = Cluster.start_peer!()

    on_exit(fn ->
      Cluster.stop_peer(peer)
      if distributed?, do: Cluster.stop_distribution()
    end)

    %{node: node}
  end

  test "a dead subscriber leaves no channel, subscriber or subscription behind", %{node: node} do
    # One channel (removed inside the monitor's callback) and 2000 (more
    # than that takes: the reaper thread removes them in steps).
    for n <- [1, 2_000] do
      counts = :erpc.call(node, QuietCounts, :death, [n], 60_000)
      %{before: before, alive: alive, after_death: after_death} = counts
      assert alive.channels == before.channels + n
      assert alive.subscriptions == before.subscriptions + n
      assert alive.subscribers == before.subscribers + 1

      assert Map.take(after_death, [:channels, :subscribers, :subscriptions]) ==
               Map.take(before, [:channels, :subscribers, :subscriptions])

      # A publish to one of its channels reaches nobody.
      assert counts.published == 0
    end
  end

  test "deliveries counts every send of a fan-out larger than the delivery chunk", %{node: node} do
    assert :erpc.call(node, QuietCounts, :fan_out, [5_000, 3], 60_000) == 15_000
  end
end
