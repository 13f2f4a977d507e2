defmodule Yggdrasil.RelayFaultsTest do
  # Issue 10 point 1: the relay's exit (every shutdown, or a crash) must not
  # crash the `:pg` scope `Yggdrasil.Registry`, whose state is what other
  # nodes use to find this node's adapters and relay.
  use ExUnit.Case, async: false

  import ExUnit.CaptureLog
  import Yggdrasil.Test.Cluster
  import Yggdrasil.Test.Helpers

  alias Yggdrasil.Registry

  @moduletag :cluster

  setup_all do
    started? = ensure_distributed!()
    if started?, do: on_exit(&stop_distribution/0)
    :ok
  end

  setup do
    # A fresh supervision tree: the restarts earlier tests caused must not
    # count against its restart intensity (3 in 5 s).
    capture_log(fn ->
      :ok = Application.stop(:yggdrasil)
      {:ok, _} = Application.ensure_all_started(:yggdrasil)
    end)

    :ok
  end

  defp kill_relay! do
    relay = Process.whereis(Yggdrasil.Relay)
    ref = Process.monitor(relay)
    Process.exit(relay, :kill)
    assert_receive {:DOWN, ^ref, :process, ^relay, :killed}
    eventually(fn -> Process.whereis(Yggdrasil.Relay) not in [nil, relay] end, "a new relay")
  end

  test "stopping and starting the application logs no error" do
    log =
      capture_log(fn ->
        :ok = Application.stop(:yggdrasil)
        {:ok, _} = Application.ensure_all_started(:yggdrasil)
        # Crash reports are written asynchronously.
        Process.sleep(200)
      end)

    refute log =~ "[error]", log
    refute log =~ "terminating", log
  end

  # What crashes the scope on OTP 25.1-25.2: one local process both in a
  # group and monitoring the scope. Checked on the scope's state, because
  # whether a given exit crashes it depends on the order of two `:DOWN`s.
  test "no process of this node is both a member and a monitor of the scope" do
    state = :sys.get_state(Registry)
    assert elem(state, 0) == :state
    maps = state |> Tuple.to_list() |> Enum.filter(&is_map/1)

    members =
      for map <- maps,
          {pid, {ref, groups}} when is_pid(pid) <- map,
          node(pid) == node() and is_reference(ref) and is_list(groups),
          do: pid

    monitors = for map <- maps, {ref, pid} when is_reference(ref) and is_pid(pid) <- map, do: pid

    assert Yggdrasil.Relay |> Process.whereis() |> then(&(&1 in monitors))
    assert members != []
    assert Enum.filter(members, &(&1 in monitors)) == []
  end

  test "a relay crash restarts the relay and nothing else" do
    supervisor = Process.whereis(Yggdrasil.Supervisor)
    scope = Process.whereis(Registry)
    generator = Process.whereis(Yggdrasil.Subscriber.Generator)

    log =
      capture_log(fn ->
        kill_relay!()
        Process.sleep(300)
        kill_relay!()
        Process.sleep(200)
      end)

    refute log =~ "Yggdrasil.Registry terminating", log
    assert Process.whereis(Yggdrasil.Supervisor) == supervisor
    assert Process.whereis(Registry) == scope
    assert Process.whereis(Yggdrasil.Subscriber.Generator) == generator
    assert {:ok, _} = Yggdrasil.gen_channel(name: "after relay kills")
  end

  test "after a relay crash other nodes still find this node's adapters and relay" do
    {peer, node} = start_peer!()
    on_exit(fn -> stop_peer(peer) end)

    adapter = :"faults_memory_#{System.unique_integer([:positive])}"
    :ok = Registry.register_adapter(adapter, Yggdrasil.Adapter.Memory)
    here = node()

    found? = fn -> :erpc.call(node, Registry, :get_adapter_node, [adapter]) == {:ok, here} end
    eventually(found?, "the peer to find #{adapter} here")
    wait_relays([here, node])

    capture_log(&kill_relay!/0)

    wait_relays([here, node])
    assert found?.()

    # :elixir events cross in both directions again.
    {:ok, channel} = Yggdrasil.gen_channel(name: {:after_relay_kill, make_ref()})
    :ok = Yggdrasil.subscribe(channel)
    start_forwarder(node, channel, self(), :remote)
    assert_receive {:remote, {:Y_CONNECTED, ^channel}}

    :ok = Yggdrasil.publish(channel, :from_here)
    assert_receive {:remote, {:Y_EVENT, ^channel, :from_here}}, 5_000
    :ok = :erpc.call(node, Yggdrasil, :publish, [channel, :from_peer])
    assert_receive {:Y_EVENT, ^channel, :from_peer}, 5_000
  end
end
