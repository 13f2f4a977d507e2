defmodule Yggdrasil.RestartFaultsTest do
  # Issue 10 point 2: the engine's table outlives the Generator, the
  # adapters' supervisor and the application; adapter processes do not. A
  # subscription that is still counted after any of them restarts must
  # receive events again (its adapter is started again), with
  # `:Y_DISCONNECTED` / `:Y_CONNECTED` telling the subscriber about the gap.
  use ExUnit.Case, async: false

  defmodule HeldAdapter do
    # An adapter whose init/1 waits until the test lets it go.
    use Yggdrasil.Adapter,
      name: :faults_held,
      subscriber: Yggdrasil.RestartFaultsTest.HeldSubscriber,
      publisher: Yggdrasil.Publisher.Adapter.Memory
  end

  defmodule HeldSubscriber do
    use Yggdrasil.Subscriber.Adapter
    use GenServer

    @impl GenServer
    def init(%{channel: %Yggdrasil.Channel{name: {:held, test}}} = state) do
      ref = make_ref()
      send(test, {:held, self(), ref})

      receive do
        {:go, ^ref} -> {:ok, state}
      end
    end
  end

  import Yggdrasil.AdapterCase
  import Yggdrasil.Test.Helpers

  alias Yggdrasil.MemoryBroker
  alias Yggdrasil.Subscriber.Generator
  alias Yggdrasil.Subscriber.Manager

  @moduletag :capture_log
  @wait 5_000

  setup do
    # A fresh supervision tree: the restarts earlier tests caused must not
    # count against its restart intensity (3 in 5 s).
    :ok = Application.stop(:yggdrasil)
    {:ok, _} = Application.ensure_all_started(:yggdrasil)
    :ok = Yggdrasil.Adapter.Memory.register()
    channel = channel!()
    {subscriber, :ok} = start_subscriber(channel)
    assert_receive {^subscriber, {:Y_CONNECTED, ^channel}}, @wait
    old = adapter!(channel)

    on_exit(fn -> send(subscriber, :stop) end)
    {:ok, channel: channel, subscriber: subscriber, old: old}
  end

  defp restart!(name) do
    pid = Process.whereis(name)
    kill(pid)
    eventually(fn -> Process.whereis(name) not in [nil, pid] end)
  end

  # The subscriber is told about the gap, is still counted, is served by
  # exactly one new adapter, and gets what is published.
  defp assert_served_again(channel, subscriber, old) do
    assert_receive {^subscriber, {:Y_DISCONNECTED, ^channel}}, @wait
    assert_receive {^subscriber, {:Y_CONNECTED, ^channel}}, @wait
    new = adapter!(channel)
    assert new != old
    refute Process.alive?(old)
    assert MemoryBroker.adapters(channel) == [new]
    assert Manager.connected?(channel)
    assert Manager.subscribed?(channel, subscriber)
    assert Yggdrasil.subscriber_count(channel) == 1

    :ok = Yggdrasil.publish(channel, :after_restart)
    assert_receive {^subscriber, {:Y_EVENT, ^channel, :after_restart}}, @wait

    # And the last unsubscribe still stops the new adapter.
    assert unsubscribe_subscriber(subscriber, channel) == :ok
    eventually(fn -> Generator.status(channel) == nil end)
    refute Process.alive?(new)
  end

  test "a Generator crash: the channel gets a new adapter", context do
    restart!(Generator)
    assert_served_again(context.channel, context.subscriber, context.old)
  end

  test "a crash of the adapters' supervisor: the channel gets a new adapter", context do
    restart!(Yggdrasil.Subscriber.Adapters)
    assert_served_again(context.channel, context.subscriber, context.old)
  end

  test "an application restart: disconnected while stopped, then a new adapter", context do
    %{channel: channel, subscriber: subscriber} = context
    :ok = Application.stop(:yggdrasil)
    assert_receive {^subscriber, {:Y_DISCONNECTED, ^channel}}, @wait
    refute Manager.connected?(channel)
    assert Manager.subscribed?(channel, subscriber)

    {:ok, _} = Application.ensure_all_started(:yggdrasil)
    assert_receive {^subscriber, {:Y_CONNECTED, ^channel}}, @wait
    # Replayed for assert_served_again, which expects both.
    send(self(), {subscriber, {:Y_DISCONNECTED, channel}})
    send(self(), {subscriber, {:Y_CONNECTED, channel}})
    assert_served_again(channel, subscriber, context.old)
  end

  test "a subscribe whose Generator dies during the call returns an error, no subscription" do
    :ok = HeldAdapter.register()
    {:ok, channel} = Yggdrasil.gen_channel(name: {:held, self()}, adapter: :faults_held)
    parent = self()
    caller = spawn(fn -> send(parent, {:result, Yggdrasil.subscribe(channel)}) end)
    assert_receive {:held, adapter, ref}, @wait

    restart!(Generator)
    send(adapter, {:go, ref})
    assert_receive {:result, {:error, {:generator_unavailable, _}}}, @wait
    refute Manager.subscribed?(channel, caller)
    assert Yggdrasil.subscriber_count(channel) == 0
    eventually(fn -> not Process.alive?(adapter) end)
  end
end
