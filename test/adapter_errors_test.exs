defmodule Yggdrasil.AdapterErrorsTest do
  # Bad adapters and crashing adapter processes: `{:error, _}` or a clean
  # `:Y_DISCONNECTED`, never a leaked subscription or adapter process.
  use Yggdrasil.AdapterCase, async: true

  alias Yggdrasil.Registry
  alias Yggdrasil.Subscriber.Manager

  @moduletag :capture_log

  defp unique_name, do: {:memory_errors, System.unique_integer([:positive])}

  describe "bad adapters" do
    test "an unknown adapter gives {:error, _} everywhere" do
      channel = [name: unique_name(), adapter: :no_such_adapter]
      assert {:error, _} = Yggdrasil.subscribe(channel)
      assert {:error, _} = Yggdrasil.publish(channel, :x)
      assert {:error, _} = Yggdrasil.unsubscribe(channel)
      refute_received {:Y_CONNECTED, _}
    end

    test "an adapter whose subscriber or publisher module does not exist is not registered" do
      assert {:error, message} = Registry.register_adapter(:ghost, Yggdrasil.Adapter.Ghost)
      assert message =~ "Ghost"
      assert {:error, _} = Yggdrasil.Adapter.Ghost.register()
      assert {:error, _} = Registry.register_adapter(:half_ghost, Yggdrasil.Adapter.HalfGhost)
      assert {:error, _} = Registry.get_adapter_module(:ghost)
      assert {:error, _} = Registry.get_subscriber_module(:half_ghost)
      assert {:error, _} = Registry.register_adapter(:not_a_module, Nope.Missing)
      assert {:error, _} = Registry.register_adapter("ghost", Yggdrasil.Adapter.Ghost)

      for adapter <- [:ghost, :half_ghost, Yggdrasil.Adapter.Ghost] do
        channel = [name: unique_name(), adapter: adapter]
        assert {:error, _} = Yggdrasil.subscribe(channel)
        assert {:error, _} = Yggdrasil.publish(channel, :x)
      end

      # A supervisor does not start it either.
      assert {:error, _} = start_supervised({Yggdrasil.Adapter.Ghost, []})
    end

    test "a subscriber module that is not a subscriber adapter gives {:error, _}, no subscription" do
      assert :ok = Yggdrasil.Adapter.NotAnAdapter.register()
      {:ok, channel} = Yggdrasil.gen_channel(name: unique_name(), adapter: :not_an_adapter)

      assert {:error, {:adapter_not_started, _}} = Yggdrasil.subscribe(channel)
      assert Engine.subscriber_count(key(channel)) == 0
      refute Manager.subscribed?(channel)
      assert Generator.status(channel) == nil

      assert {:error, _} = Yggdrasil.publish(channel, :x)
      refute_received {:Y_CONNECTED, _}
    end

    test "an adapter whose start_link returns {:error, _} leaves nobody subscribed" do
      channel = channel!()
      :ok = MemoryBroker.set(channel, :refuse, :no_route)

      assert {:error, {:adapter_not_started, :no_route}} = Yggdrasil.subscribe(channel)
      assert Engine.subscriber_count(key(channel)) == 0
      refute Manager.subscribed?(channel)

      # Many at once: all get the error, none stays subscribed.
      tasks = for _ <- 1..50, do: Task.async(fn -> Yggdrasil.subscribe(channel) end)

      for task <- tasks do
        assert {:error, {:adapter_not_started, :no_route}} = Task.await(task)
      end

      assert Engine.subscriber_count(key(channel)) == 0
      assert Generator.status(channel) == nil
      assert MemoryBroker.adapters(channel) == []
      refute_received {:Y_CONNECTED, _}

      # Once the broker accepts it, subscribing works.
      :ok = MemoryBroker.unset(channel, :refuse)
      assert :ok = Yggdrasil.subscribe(channel)
      assert_receive {:Y_CONNECTED, ^channel}, @wait
      :ok = Yggdrasil.unsubscribe(channel)
    end

    test "a failed subscribe does not unsubscribe a caller that was subscribed before" do
      channel = channel!()
      :ok = Yggdrasil.subscribe(channel)
      assert_receive {:Y_CONNECTED, ^channel}, @wait
      adapter = adapter!(channel)

      # The adapter crashes and cannot be restarted.
      :ok = MemoryBroker.set(channel, :refuse, :gone)
      ref = Process.monitor(adapter)
      :ok = MemoryBroker.crash(channel)
      assert down_reason(ref) == :memory_crash
      assert_receive {:Y_DISCONNECTED, ^channel}, @wait
      eventually(fn -> Generator.status(channel) == nil end)

      assert {:error, {:adapter_not_started, :gone}} = Yggdrasil.subscribe(channel)
      assert Manager.subscribed?(channel)

      :ok = MemoryBroker.unset(channel, :refuse)
      assert :ok = Yggdrasil.subscribe(channel)
      assert_receive {:Y_CONNECTED, ^channel}, @wait
      :ok = Yggdrasil.unsubscribe(channel)
    end

    test "a caller that dies while its subscribe starts the adapter leaks nothing" do
      channel = channel!()

      for _ <- 1..50 do
        {pid, ref} = spawn_monitor(fn -> Yggdrasil.subscribe(channel) end)
        Process.exit(pid, :kill)
        assert_receive {:DOWN, ^ref, :process, ^pid, _}, @wait
      end

      # Adapters that did start are stopped again.
      eventually(fn -> Generator.status(channel) == nil end)
      eventually(fn -> MemoryBroker.adapters(channel) == [] end)
      assert Engine.subscriber_count(key(channel)) == 0
    end
  end

  describe "crashing adapter processes" do
    test "a crash gives one clean :Y_DISCONNECTED, then a restarted adapter connects" do
      channel = channel!()
      :ok = Yggdrasil.subscribe(channel)
      assert_receive {:Y_CONNECTED, ^channel}, @wait
      {other, :ok} = start_subscriber(channel)
      assert_receive {^other, {:Y_CONNECTED, ^channel}}, @wait

      old = adapter!(channel)
      ref = Process.monitor(old)
      :ok = MemoryBroker.crash(channel)
      assert down_reason(ref) == :memory_crash

      assert_receive {:Y_DISCONNECTED, ^channel}, @wait
      assert_receive {:Y_CONNECTED, ^channel}, @wait
      assert_receive {^other, {:Y_DISCONNECTED, ^channel}}, @wait
      assert_receive {^other, {:Y_CONNECTED, ^channel}}, @wait

      new = adapter!(channel)
      assert new != old
      assert events_until_sentinel(channel) == []
      refute_received {:Y_DISCONNECTED, _}
      refute_received {:Y_CONNECTED, _}

      send(other, :stop)
      :ok = Yggdrasil.unsubscribe(channel)
    end

    test "a killed adapter (no terminate/2) gives :Y_DISCONNECTED too, and is restarted" do
      channel = channel!()
      :ok = Yggdrasil.subscribe(channel)
      assert_receive {:Y_CONNECTED, ^channel}, @wait

      old = adapter!(channel)
      kill(old)
      assert_receive {:Y_DISCONNECTED, ^channel}, @wait
      assert_receive {:Y_CONNECTED, ^channel}, @wait
      assert adapter!(channel) != old

      :ok = Yggdrasil.publish(channel, :after_restart)
      assert events_until_sentinel(channel) == [:after_restart]
      refute_received {:Y_DISCONNECTED, _}

      :ok = Yggdrasil.unsubscribe(channel)
    end

    test "an adapter that keeps crashing is given up on until the next subscribe" do
      channel = channel!()
      :ok = Yggdrasil.subscribe(channel)
      assert_receive {:Y_CONNECTED, ^channel}, @wait

      # Three restarts per window; the fourth crash is final.
      for _ <- 1..3 do
        ref = Process.monitor(adapter!(channel))
        :ok = MemoryBroker.crash(channel)
        assert down_reason(ref) == :memory_crash
        assert_receive {:Y_DISCONNECTED, ^channel}, @wait
        assert_receive {:Y_CONNECTED, ^channel}, @wait
      end

      ref = Process.monitor(adapter!(channel))
      :ok = MemoryBroker.crash(channel)
      assert down_reason(ref) == :memory_crash
      assert_receive {:Y_DISCONNECTED, ^channel}, @wait
      eventually(fn -> Generator.status(channel) == nil end)
      refute Manager.connected?(channel)
      assert Manager.subscribed?(channel)

      # The next subscriber starts it again, and everybody hears of it.
      {other, :ok} = start_subscriber(channel)
      assert_receive {^other, {:Y_CONNECTED, ^channel}}, @wait
      assert_receive {:Y_CONNECTED, ^channel}, @wait

      ref = Process.monitor(adapter!(channel))
      send(other, :stop)
      :ok = Yggdrasil.unsubscribe(channel)
      assert down_reason(ref) == :normal
    end

    test "a crash when nobody is left starts nothing" do
      channel = channel!()
      :ok = MemoryBroker.set(channel, :hold_stop, self())
      :ok = Yggdrasil.subscribe(channel)
      assert_receive {:Y_CONNECTED, ^channel}, @wait
      adapter = adapter!(channel)
      ref = Process.monitor(adapter)

      # The adapter is held in terminate/2, then killed instead of stopping.
      :ok = Yggdrasil.unsubscribe(channel)
      assert_receive {:hold_stop, ^adapter, _}, @wait
      Process.exit(adapter, :kill)
      assert down_reason(ref) == :killed

      eventually(fn -> Generator.status(channel) == nil end)
      assert MemoryBroker.adapters(channel) == []
      assert MemoryBroker.setting(channel, :starts) == 1
    end
  end
end
