defmodule Yggdrasil.ClusterTest do
  # Section 9 of the spec on real nodes (loopback, OTP's :peer). Not
  # skipped when distribution is unavailable: setup_all fails and says why.
  use ExUnit.Case, async: false

  import Yggdrasil.Test.Helpers

  import Yggdrasil.Test.Cluster

  alias Yggdrasil.Adapter.Bridge
  alias Yggdrasil.Channel
  alias Yggdrasil.Registry

  @moduletag :cluster
  # Bridge retries log warnings on purpose; keep them out of the output.
  @moduletag :capture_log

  setup_all do
    started? = ensure_distributed!()
    if started?, do: on_exit(&stop_distribution/0)
    :ok
  end

  setup do
    # Every test gets its own channel names, so nothing leaks between tests.
    {:ok, id: System.unique_integer([:positive])}
  end

  defp peer! do
    {peer, node} = start_peer!()
    on_exit(fn -> stop_peer(peer) end)
    {peer, node}
  end

  # Messages `{tag, {:Y_EVENT, _, n}}` until the sentinel `:end`.
  defp events(tag, acc \\ []) do
    receive do
      {^tag, {:Y_EVENT, _, :end}} -> Enum.reverse(acc)
      {^tag, {:Y_EVENT, _, n}} -> events(tag, [n | acc])
    after
      10_000 -> flunk("#{inspect(tag)}: no sentinel; got #{length(acc)} events")
    end
  end

  defp local_events(channel, acc \\ []) do
    receive do
      {:Y_EVENT, ^channel, :end} -> Enum.reverse(acc)
      {:Y_EVENT, ^channel, n} -> local_events(channel, [n | acc])
    after
      10_000 -> flunk("local subscriber: no sentinel; got #{length(acc)} events")
    end
  end

  describe "adapters with delivery: :engine across nodes" do
    test "a third-party one is relayed like :elixir, once per event", %{id: id} do
      {_peer, node} = peer!()
      wait_relays([node(), node])
      :ok = Yggdrasil.Adapter.Direct.register()
      :ok = :erpc.call(node, Yggdrasil.Adapter.Direct, :register, [])
      {:ok, channel} = Yggdrasil.gen_channel(name: {:direct, id}, adapter: :direct)

      start_forwarder(node, channel, self(), :remote)
      assert_receive {:remote, {:Y_CONNECTED, ^channel}}

      :ok = Yggdrasil.publish(channel, 1)
      :ok = Yggdrasil.publish(channel, :end)
      assert events(:remote) == [1]
    end
  end

  describe ":elixir channels across nodes" do
    test "events cross both ways", %{id: id} do
      {_peer, node} = peer!()
      wait_relays([node(), node])
      {:ok, channel} = Yggdrasil.gen_channel(name: {:both_ways, id})

      :ok = Yggdrasil.subscribe(channel)
      assert_receive {:Y_CONNECTED, ^channel}
      start_forwarder(node, channel, self(), :remote)
      assert_receive {:remote, {:Y_CONNECTED, ^channel}}

      # Published here: the peer's subscriber gets it, with the metadata.
      :ok = Yggdrasil.publish(channel, "from test node", metadata: %{at: :origin})
      with_meta = %Channel{channel | metadata: %{at: :origin}}
      assert_receive {:Y_EVENT, ^with_meta, "from test node"}
      assert_receive {:remote, {:Y_EVENT, ^with_meta, "from test node"}}

      # Published on the peer: the subscriber here gets it.
      :ok = :erpc.call(node, Yggdrasil, :publish, [channel, "from peer"])
      assert_receive {:Y_EVENT, ^channel, "from peer"}
      assert_receive {:remote, {:Y_EVENT, ^channel, "from peer"}}

      # A transformer runs once, on the publishing node; the peer gets
      # the decoded message.
      {:ok, json} = Yggdrasil.gen_channel(name: {:json, id}, transformer: :json)
      start_forwarder(node, json, self(), :json)
      :ok = Yggdrasil.publish(json, %{"a" => 1})
      assert_receive {:json, {:Y_EVENT, ^json, %{"a" => 1}}}

      refute_receive {_, {:Y_EVENT, _, _}}, 100
      refute_received {:Y_EVENT, _, _}
    end

    test "1000 events from one publisher arrive in order on the other node", %{id: id} do
      {_peer, node} = peer!()
      wait_relays([node(), node])
      {:ok, channel} = Yggdrasil.gen_channel(name: {:order, id})
      start_forwarder(node, channel, self(), :remote)
      :ok = Yggdrasil.subscribe(channel)

      for n <- 1..1000, do: :ok = Yggdrasil.publish(channel, n)
      :ok = Yggdrasil.publish(channel, :end)
      assert events(:remote) == Enum.to_list(1..1000)
      assert local_events(channel) == Enum.to_list(1..1000)

      # And from a publisher on the peer to a subscriber here.
      start_publisher(node, channel, 1..1000, self(), :peer_publisher)
      assert_receive {:done, :peer_publisher, [:ok]}, 10_000
      :ok = :erpc.call(node, Yggdrasil, :publish, [channel, :end])
      assert local_events(channel) == Enum.to_list(1..1000)
      assert events(:remote) == Enum.to_list(1..1000)
    end

    test "local and remote subscribers each get exactly one copy, one message per node",
         %{id: id} do
      {_peer, node} = peer!()
      wait_relays([node(), node])
      {:ok, channel} = Yggdrasil.gen_channel(name: {:copies, id})

      # Two subscribers here (one of them subscribed twice), three on the
      # peer (one subscribed twice).
      :ok = Yggdrasil.subscribe(channel)
      :ok = Yggdrasil.subscribe(channel)
      me = self()

      local =
        spawn_link(fn ->
          :ok = Yggdrasil.subscribe(channel)
          send(me, :local_ready)
          Stream.repeatedly(fn -> receive(do: (m -> send(me, {:local, m}))) end) |> Stream.run()
        end)

      assert_receive :local_ready
      start_forwarder(node, channel, self(), :r1)
      start_forwarder(node, channel, self(), :r2, 2)
      start_forwarder(node, channel, self(), :r3)

      %{relayed: before} = Yggdrasil.Relay.stats(node)
      for n <- 1..200, do: :ok = Yggdrasil.publish(channel, n)
      :ok = Yggdrasil.publish(channel, :end)

      expected = Enum.to_list(1..200)
      assert local_events(channel) == expected
      assert events(:local) == expected
      assert events(:r1) == expected
      assert events(:r2) == expected
      assert events(:r3) == expected

      # One distribution message per publish to the peer, not one per
      # subscriber there.
      assert %{relayed: after_} = Yggdrasil.Relay.stats(node)
      assert after_ - before == 201

      refute_receive {_, {:Y_EVENT, _, _}}, 100
      refute_received {:Y_EVENT, _, _}
      Process.unlink(local)
      Process.exit(local, :kill)
    end

    test "a node stopping mid-stream: no crash, survivors get everything in order", %{id: id} do
      {peer1, node1} = peer!()
      {_peer2, node2} = peer!()
      wait_relays([node(), node1, node2])
      {:ok, channel} = Yggdrasil.gen_channel(name: {:midstream, id})

      :ok = Yggdrasil.subscribe(channel)
      start_forwarder(node1, channel, self(), :doomed)
      start_forwarder(node2, channel, self(), :survivor)
      :ok = :net_kernel.monitor_nodes(true)

      publisher = start_publisher(node(), channel, 1..5000, self(), :pub, 500)
      assert is_pid(publisher)
      assert_receive {:published, :pub, 1000}, 10_000
      stop_peer(peer1)
      assert_receive {:nodedown, ^node1}, 10_000

      # After nodedown, the relay list no longer names the node.
      eventually(
        fn -> node1 not in Yggdrasil.Relay.remote_nodes() end,
        "relay list without node1"
      )

      assert_receive {:done, :pub, [:ok]}, 20_000
      :ok = Yggdrasil.publish(channel, :end)

      assert local_events(channel) == Enum.to_list(1..5000)
      assert events(:survivor) == Enum.to_list(1..5000)
      assert Yggdrasil.Relay.remote_nodes() == [node2]
      assert node1 not in Node.list()

      # Whatever the doomed node got before it stopped came in order, once.
      doomed = for {:doomed, {:Y_EVENT, _, n}} <- flush(), do: n
      assert doomed == Enum.to_list(1..length(doomed)//1)
      :ok = :net_kernel.monitor_nodes(false)
    end
  end

  describe ":bridge" do
    test "adapter node and full channel through :pg", %{id: id} do
      {_peer, node} = peer!()
      register_cluster_mem(node)

      eventually(
        fn -> Registry.get_adapter_node(:cluster_mem) == {:ok, node} end,
        "adapter on peer"
      )

      assert Registry.get_adapter_node(:elixir) == {:ok, node()}
      assert Registry.get_adapter_node(Yggdrasil.Adapter.ClusterMem) == {:ok, node}
      assert {:error, _} = Registry.get_adapter_node(:nowhere)
      assert {:error, _} = Registry.get_adapter_module(:cluster_mem)

      remote = %Channel{name: {:bridged, id}, adapter: :cluster_mem}
      assert {:ok, bridge} = Yggdrasil.gen_channel(remote)

      assert bridge == %Channel{
               name: remote,
               adapter: :bridge,
               transformer: :default,
               backend: :default
             }

      assert {:ok, ^bridge} = Yggdrasil.gen_channel(bridge)
      assert {:ok, {local, full}} = Bridge.split_channels(bridge)
      assert full == %Channel{remote | transformer: :default, backend: :default}
      assert %Channel{name: {:"$yggdrasil_bridge", _}, adapter: :elixir} = local

      # On the peer the same channel is a plain :cluster_mem channel.
      assert {:ok, ^full} = :erpc.call(node, Yggdrasil, :gen_channel, [remote])
    end

    test "subscribe, publish, connection state and teardown across nodes", %{id: id} do
      {_peer, node} = peer!()
      register_cluster_mem(node)

      eventually(
        fn -> Registry.get_adapter_node(:cluster_mem) == {:ok, node} end,
        "adapter on peer"
      )

      remote = [name: {:cycle, id}, adapter: :cluster_mem]
      {:ok, bridge} = Yggdrasil.gen_channel(remote)
      {:ok, full} = :erpc.call(node, Yggdrasil, :gen_channel, [remote])

      :ok = Yggdrasil.subscribe(bridge)
      assert_receive {:Y_CONNECTED, ^bridge}, 5_000
      # A subscriber of the same channel on the peer, through the adapter.
      start_forwarder(node, full, self(), :peer_sub)
      assert_receive {:peer_sub, {:Y_CONNECTED, ^full}}, 5_000

      # Published here through the bridge, delivered on both nodes.
      assert :ok = Yggdrasil.publish(bridge, "hello", metadata: :meta)
      assert_receive {:Y_EVENT, %Channel{metadata: :meta} = got, "hello"}, 5_000
      assert %Channel{got | metadata: nil} == bridge
      assert_receive {:peer_sub, {:Y_EVENT, %Channel{metadata: :meta}, "hello"}}, 5_000

      # Published on the peer, delivered here, in order.
      for n <- 1..100, do: :ok = :erpc.call(node, Yggdrasil, :publish, [full, n])
      :ok = :erpc.call(node, Yggdrasil, :publish, [full, :end])
      assert local_events(bridge) == Enum.to_list(1..100)

      # The adapter's connection state is passed through.
      :ok = :erpc.call(node, Yggdrasil.ClusterMem.Broker, :set_up, [false])
      assert_receive {:Y_DISCONNECTED, ^bridge}, 5_000
      :ok = :erpc.call(node, Yggdrasil.ClusterMem.Broker, :set_up, [true])
      assert_receive {:Y_CONNECTED, ^bridge}, 5_000

      # The bridge process on the peer and the adapter process it uses.
      [remote_pid] = bridge_remotes(node)
      assert is_pid(:erpc.call(node, Yggdrasil.Subscriber.Generator, :whereis, [full]))

      # Ending the local subscription stops the remote subscriber; the
      # peer's own subscriber keeps the adapter running.
      :ok = Yggdrasil.unsubscribe(bridge)
      assert_receive {:Y_DISCONNECTED, ^bridge}
      eventually(fn -> bridge_remotes(node) == [] end, "remote bridge subscriber to stop")
      refute :erpc.call(node, Process, :alive?, [remote_pid])
      :ok = :erpc.call(node, Yggdrasil, :publish, [full, "after"])
      assert_receive {:peer_sub, {:Y_EVENT, _, "after"}}, 5_000
      refute_receive {:Y_EVENT, _, _}, 100

      # Subscribing again works (a new remote subscriber).
      :ok = Yggdrasil.subscribe(bridge)
      assert_receive {:Y_CONNECTED, ^bridge}, 5_000
      assert [_] = bridge_remotes(node)
      :ok = Yggdrasil.unsubscribe(bridge)
      eventually(fn -> bridge_remotes(node) == [] end, "remote bridge subscriber to stop again")
    end

    test "an explicit :bridge channel (keyword name) to an adapter on this node", %{id: id} do
      {:ok, bridge} = Yggdrasil.gen_channel(name: [name: {:explicit, id}], adapter: :bridge)
      assert %Channel{adapter: :bridge, transformer: :default, backend: :default} = bridge
      {:ok, target} = Yggdrasil.gen_channel(name: {:explicit, id})
      assert {:ok, {_local, ^target}} = Bridge.split_channels(bridge)

      :ok = Yggdrasil.subscribe(bridge)
      assert_receive {:Y_CONNECTED, ^bridge}, 5_000
      :ok = Yggdrasil.publish(target, "direct")
      assert_receive {:Y_EVENT, ^bridge, "direct"}, 5_000
      :ok = Yggdrasil.publish(bridge, "through the bridge")
      assert_receive {:Y_EVENT, ^bridge, "through the bridge"}, 5_000
      :ok = Yggdrasil.unsubscribe(bridge)
      assert_receive {:Y_DISCONNECTED, ^bridge}
      eventually(fn -> bridge_remotes(node()) == [] end, "local bridge subscriber to stop")

      assert {:error, _} =
               Bridge.split_channels(%Channel{name: "not a channel", adapter: :bridge})
    end

    test "a bridge whose name is not a channel, or one its adapter refuses, is refused at subscribe" do
      for name <- [[name: 12_345, adapter: :redis], 1, "not a channel"] do
        {:ok, bridge} = Yggdrasil.gen_channel(name: name, adapter: :bridge)
        assert {:error, reason} = Yggdrasil.subscribe(bridge)
        assert is_binary(reason), inspect(reason)
        # Nothing started, nothing left subscribed.
        assert Yggdrasil.Subscriber.Generator.whereis(bridge) == nil
        assert Yggdrasil.subscriber_count(bridge) == 0
      end

      refute_received {:Y_CONNECTED, _}
    end

    test "the last local subscriber leaving stops the adapter process on the peer", %{id: id} do
      {_peer, node} = peer!()
      register_cluster_mem(node)

      eventually(
        fn -> Registry.get_adapter_node(:cluster_mem) == {:ok, node} end,
        "adapter on peer"
      )

      {:ok, bridge} = Yggdrasil.gen_channel(name: {:teardown, id}, adapter: :cluster_mem)
      {:ok, {_local, full}} = Bridge.split_channels(bridge)

      :ok = Yggdrasil.subscribe(bridge)
      assert_receive {:Y_CONNECTED, ^bridge}, 5_000
      adapter = :erpc.call(node, Yggdrasil.Subscriber.Generator, :whereis, [full])
      assert is_pid(adapter)

      :ok = Yggdrasil.unsubscribe(bridge)
      eventually(fn -> bridge_remotes(node) == [] end, "remote bridge subscriber to stop")

      eventually(
        fn -> :erpc.call(node, Yggdrasil.Subscriber.Generator, :whereis, [full]) == nil end,
        "the peer's adapter process to stop"
      )

      refute :erpc.call(node, Process, :alive?, [adapter])
    end

    test "the remote node going away disconnects; coming back reconnects", %{id: id} do
      name = :"ygg_bridge_peer_#{id}_#{System.pid()}"
      {peer, node} = start_peer!(name)
      register_cluster_mem(node)

      eventually(
        fn -> Registry.get_adapter_node(:cluster_mem) == {:ok, node} end,
        "adapter on peer"
      )

      remote = %Channel{name: {:comeback, id}, adapter: :cluster_mem}
      {:ok, bridge} = Yggdrasil.gen_channel(remote)

      :ok = Yggdrasil.subscribe(bridge)
      assert_receive {:Y_CONNECTED, ^bridge}, 5_000

      stop_peer(peer)
      assert_receive {:Y_DISCONNECTED, ^bridge}, 10_000
      assert {:error, _} = Yggdrasil.publish(bridge, "nobody")
      # With the adapter nowhere, the channel cannot be built any more.
      eventually(fn -> match?({:error, _}, Yggdrasil.gen_channel(remote)) end, "no :cluster_mem")

      # Same node name again.
      {peer, ^node} = start_peer_again!(name)
      on_exit(fn -> stop_peer(peer) end)
      register_cluster_mem(node)
      assert_receive {:Y_CONNECTED, ^bridge}, 10_000
      assert :ok = Yggdrasil.publish(bridge, "back")
      assert_receive {:Y_EVENT, ^bridge, "back"}, 5_000

      :ok = Yggdrasil.unsubscribe(bridge)
      assert_receive {:Y_DISCONNECTED, ^bridge}
      eventually(fn -> bridge_remotes(node) == [] end, "remote bridge subscriber to stop")
      refute_receive {:Y_CONNECTED, _}, 100
    end
  end

  # epmd may still hold the old name for a moment after the node stopped.
  defp start_peer_again!(name, attempts \\ 50) do
    start_peer!(name)
  rescue
    error in MatchError ->
      if attempts == 0, do: reraise(error, __STACKTRACE__)
      Process.sleep(100)
      start_peer_again!(name, attempts - 1)
  end

  defp bridge_remotes(node) do
    for {_, pid, _, [Yggdrasil.Subscriber.Adapter.Bridge.Remote]} <-
          :erpc.call(node, DynamicSupervisor, :which_children, [Yggdrasil.Subscriber.Adapters]),
        do: pid
  end

  defp flush(acc \\ []) do
    receive do
      message -> flush([message | acc])
    after
      0 -> Enum.reverse(acc)
    end
  end
end
