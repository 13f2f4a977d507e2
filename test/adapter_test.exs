defmodule Yggdrasil.AdapterTest do
  # Spec section 7: a third-party adapter (test/support/memory_adapter.ex,
  # written only against the public adapter API) on the native engine.
  use Yggdrasil.AdapterCase, async: true

  alias Yggdrasil.Adapter
  alias Yggdrasil.Registry
  alias Yggdrasil.Subscriber.Manager

  @moduletag :capture_log

  describe "registration" do
    test "register_adapter/2 registers the adapter, subscriber and publisher modules" do
      assert :ok = Registry.register_adapter(:memory, Yggdrasil.Adapter.Memory)

      for name <- [:memory, Yggdrasil.Adapter.Memory] do
        assert {:ok, Yggdrasil.Adapter.Memory} = Registry.get_adapter_module(name)
        assert {:ok, Yggdrasil.Subscriber.Adapter.Memory} = Registry.get_subscriber_module(name)
        assert {:ok, Yggdrasil.Publisher.Adapter.Memory} = Registry.get_publisher_module(name)
      end
    end

    test "an adapter registers itself from a supervisor, as in Yggdrasil 6" do
      assert {:ok, _} = start_supervised({Yggdrasil.Adapter.MemoryJson, []})
      assert {:ok, Yggdrasil.Adapter.MemoryJson} = Registry.get_adapter_module(:memory_json)
    end

    test "use options: default transformer and backend, explicit modules" do
      assert Yggdrasil.Adapter.Memory.get_transformer() == :default
      assert Yggdrasil.Adapter.Memory.get_backend() == :default
      assert Yggdrasil.Adapter.MemoryJson.get_transformer() == :json

      assert {:ok, Yggdrasil.Subscriber.Adapter.Memory} ==
               Yggdrasil.Adapter.MemoryJson.get_subscriber_module()

      assert {:ok, Yggdrasil.Publisher.Adapter.Memory} ==
               Yggdrasil.Adapter.MemoryJson.get_publisher_module()

      assert {:ok, %Channel{adapter: :memory_json, transformer: :json, backend: :default}} =
               Yggdrasil.gen_channel(name: "j", adapter: :memory_json)

      assert {:ok, %Channel{adapter: :memory, transformer: :default}} =
               Yggdrasil.gen_channel(name: "m", adapter: :memory)
    end

    test "get_subscriber_module/1 and get_publisher_module/1 check the module they get" do
      assert {:ok, Yggdrasil.Subscriber.Adapter.Memory} ==
               Yggdrasil.Adapter.Memory.get_subscriber_module(nil)

      assert {:ok, Yggdrasil.Subscriber.Adapter.Elixir} ==
               Yggdrasil.Adapter.Memory.get_subscriber_module(Yggdrasil.Subscriber.Adapter.Elixir)

      assert {:error, _} = Yggdrasil.Adapter.Memory.get_publisher_module(Nope.Missing)
      assert {:error, _} = Yggdrasil.Adapter.Ghost.get_subscriber_module()
      assert {:error, _} = Yggdrasil.Adapter.Ghost.get_publisher_module()
    end

    test "generate_module/2 puts the type in front of the Adapter segment" do
      assert {:ok, Yggdrasil.Subscriber.Adapter.Memory} =
               Adapter.generate_module(Yggdrasil.Adapter.Memory, Subscriber)

      assert {:ok, Yggdrasil.Publisher.Adapter.Memory} =
               Adapter.generate_module(Yggdrasil.Adapter.Memory, Publisher)

      assert {:ok, MyApp.Subscriber.Adapter.Queue.Fast} =
               Adapter.generate_module(MyApp.Adapter.Queue.Fast, Subscriber)

      assert {:error, _} = Adapter.generate_module(MyApp.Queue, Subscriber)
      assert {:error, _} = Adapter.generate_module(Yggdrasil.Adapter.Memory, Other)
      assert {:error, _} = Adapter.generate_module(:memory, Publisher)
      assert {:error, _} = Adapter.generate_module("Yggdrasil.Adapter.Memory", Publisher)
    end

    test "check_module/2 tells whether the module exists" do
      assert {:ok, Yggdrasil.Publisher.Adapter.Memory} =
               Adapter.check_module(Yggdrasil.Adapter.Memory, Yggdrasil.Publisher.Adapter.Memory)

      assert {:error, message} =
               Adapter.check_module(Yggdrasil.Adapter.Ghost, Yggdrasil.Subscriber.Adapter.Ghost)

      assert message =~ "Ghost"
      assert {:error, _} = Adapter.check_module(Yggdrasil.Adapter.Ghost, "not a module")
    end

    test "channels may name the adapter by its module" do
      {:ok, channel} =
        Yggdrasil.gen_channel(name: {:by_module, make_ref()}, adapter: Yggdrasil.Adapter.Memory)

      :ok = Yggdrasil.subscribe(channel)
      assert_receive {:Y_CONNECTED, ^channel}, @wait
      assert is_pid(adapter!(channel))
      :ok = Yggdrasil.publish(channel, :hello)
      assert_receive {:Y_EVENT, ^channel, :hello}, @wait
      :ok = Yggdrasil.unsubscribe(channel)

      {:ok, native} =
        Yggdrasil.gen_channel(name: {:by_module, make_ref()}, adapter: Yggdrasil.Adapter.Elixir)

      :ok = Yggdrasil.subscribe(native)
      assert_receive {:Y_CONNECTED, ^native}, @wait
      assert Generator.status(native) == nil
      :ok = Yggdrasil.unsubscribe(native)
    end

    test ":elixir keeps its three modules and runs no adapter process" do
      assert {:ok, Yggdrasil.Adapter.Elixir} = Registry.get_adapter_module(:elixir)
      assert {:ok, Yggdrasil.Subscriber.Adapter.Elixir} = Registry.get_subscriber_module(:elixir)
      assert {:ok, Yggdrasil.Publisher.Adapter.Elixir} = Registry.get_publisher_module(:elixir)

      {:ok, channel} = Yggdrasil.gen_channel(name: {:elixir_no_adapter, make_ref()})
      :ok = Yggdrasil.subscribe(channel)
      assert_receive {:Y_CONNECTED, ^channel}, @wait
      assert Generator.status(channel) == nil
      :ok = Yggdrasil.unsubscribe(channel)
    end
  end

  describe "connecting and events" do
    test "the first subscriber starts one adapter process, which connects" do
      channel = channel!()
      assert :ok = Yggdrasil.subscribe(channel)
      assert_receive {:Y_CONNECTED, ^channel}, @wait

      adapter = adapter!(channel)
      assert MemoryBroker.adapters(channel) == [adapter]
      assert Manager.connected?(channel)
      assert Manager.subscribed?(channel)
      assert Manager.subscribed?(channel, self())
      assert Engine.subscriber_count(key(channel)) == 1

      ref = Process.monitor(adapter)
      assert :ok = Yggdrasil.unsubscribe(channel)
      assert_receive {:Y_DISCONNECTED, ^channel}, @wait
      assert down_reason(ref) == :normal
      refute Manager.subscribed?(channel)
      assert Engine.subscriber_count(key(channel)) == 0
    end

    test "events go through the channel's transformer and carry the adapter's metadata" do
      channel = channel!(adapter: :memory_json)
      :ok = Yggdrasil.subscribe(channel)
      assert_receive {:Y_CONNECTED, ^channel}, @wait
      # See what travels through the broker, too.
      :ok = MemoryBroker.tap(channel)

      message = %{"n" => 1, "tags" => ["a", "b"]}
      assert :ok = Yggdrasil.publish(channel, message, metadata: %{id: 7})

      assert_receive {:memory_message, payload, %{id: 7}}, @wait
      assert is_binary(payload)
      assert {:ok, ^message} = Yggdrasil.Transformer.decode(channel, payload)

      assert_receive {:Y_EVENT, %Channel{metadata: %{id: 7}} = received, ^message}, @wait
      assert %Channel{received | metadata: nil} == channel

      assert :ok = Yggdrasil.publish(channel, %{"m" => nil})
      assert_receive {:Y_EVENT, %Channel{metadata: nil}, %{"m" => nil}}, @wait

      # What the transformer cannot encode is an error, and nothing arrives.
      assert {:error, _} = Yggdrasil.publish(channel, {:not, :json})
      assert events_until_sentinel(channel) == []

      :ok = Yggdrasil.unsubscribe(channel)
    end

    test "any term travels with the :default transformer" do
      channel = channel!()
      :ok = Yggdrasil.subscribe(channel)
      assert_receive {:Y_CONNECTED, ^channel}, @wait

      messages = [{:tuple, self()}, %{a: [1, 2]}, "text", make_ref()]
      for message <- messages, do: :ok = Yggdrasil.publish(channel, message)
      assert events_until_sentinel(channel) == messages

      :ok = Yggdrasil.unsubscribe(channel)
    end

    test "Subscriber.Publisher.notify/2,3 decodes and delivers with metadata" do
      channel = channel!(adapter: :memory_json)
      :ok = Yggdrasil.subscribe(channel)
      assert_receive {:Y_CONNECTED, ^channel}, @wait

      alias Yggdrasil.Subscriber.Publisher
      assert :ok = Publisher.notify(channel, ~s({"a":1}))
      assert_receive {:Y_EVENT, %Channel{metadata: nil}, %{"a" => 1}}, @wait
      assert :ok = Publisher.notify(channel, ~s([true]), {:offset, 3})
      assert_receive {:Y_EVENT, %Channel{metadata: {:offset, 3}}, [true]}, @wait
      assert {:error, _} = Publisher.notify(channel, "{oops", nil)
      assert {:error, _} = Publisher.notify(:not_a_channel, "{}", nil)
      refute_received {:Y_EVENT, _, _}

      :ok = Yggdrasil.unsubscribe(channel)
    end

    test "every subscriber gets every event once, in order" do
      channel = channel!()
      :ok = Yggdrasil.subscribe(channel)
      assert_receive {:Y_CONNECTED, ^channel}, @wait

      others =
        for _ <- 1..3 do
          {pid, :ok} = start_subscriber(channel)
          assert_receive {^pid, {:Y_CONNECTED, ^channel}}, @wait
          pid
        end

      # Subscribing twice changes nothing.
      assert :ok = Yggdrasil.subscribe(channel)
      assert_receive {:Y_CONNECTED, ^channel}, @wait

      for n <- 1..200, do: :ok = Yggdrasil.publish(channel, n)
      assert events_until_sentinel(channel) == Enum.to_list(1..200)

      for pid <- others do
        received =
          for _ <- 1..200 do
            assert_receive {^pid, {:Y_EVENT, ^channel, n}}, @wait
            n
          end

        assert received == Enum.to_list(1..200)
      end

      assert MemoryBroker.adapters(channel) == [adapter!(channel)]
      for pid <- others, do: send(pid, :stop)
      :ok = Yggdrasil.unsubscribe(channel)
    end
  end

  describe "connection state" do
    test "a dropped and restored connection reaches every subscriber, every time" do
      channel = channel!()
      :ok = Yggdrasil.subscribe(channel)
      assert_receive {:Y_CONNECTED, ^channel}, @wait

      others =
        for _ <- 1..5 do
          {pid, :ok} = start_subscriber(channel)
          assert_receive {^pid, {:Y_CONNECTED, ^channel}}, @wait
          pid
        end

      adapter = adapter!(channel)

      for round <- 1..3 do
        :ok = MemoryBroker.drop(channel)
        assert_receive {:Y_DISCONNECTED, ^channel}, @wait
        for pid <- others, do: assert_receive({^pid, {:Y_DISCONNECTED, ^channel}}, @wait)
        refute Manager.connected?(channel)

        # Nothing reaches a disconnected adapter.
        :ok = Yggdrasil.publish(channel, {:lost, round})

        :ok = MemoryBroker.restore(channel)
        assert_receive {:Y_CONNECTED, ^channel}, @wait
        for pid <- others, do: assert_receive({^pid, {:Y_CONNECTED, ^channel}}, @wait)
        assert Manager.connected?(channel)

        :ok = Yggdrasil.publish(channel, {:kept, round})
        assert events_until_sentinel(channel) == [{:kept, round}]
      end

      # One notification per change, and the same adapter process throughout.
      refute_received {:Y_CONNECTED, _}
      refute_received {:Y_DISCONNECTED, _}
      assert adapter!(channel) == adapter

      for pid <- others, do: send(pid, :stop)
      :ok = Yggdrasil.unsubscribe(channel)
    end

    test "a late subscriber gets its own :Y_CONNECTED, exactly once" do
      channel = channel!()
      :ok = Yggdrasil.subscribe(channel)
      assert_receive {:Y_CONNECTED, ^channel}, @wait

      {late, :ok} = start_subscriber(channel)
      assert_receive {^late, {:Y_CONNECTED, ^channel}}, @wait

      # Messages from one process keep their order: a second :Y_CONNECTED
      # would have come before this event.
      :ok = Yggdrasil.publish(channel, :after)
      assert_receive {^late, {:Y_EVENT, ^channel, :after}}, @wait
      refute_received {^late, {:Y_CONNECTED, _}}
      assert events_until_sentinel(channel) == [:after]
      refute_received {:Y_CONNECTED, _}

      send(late, :stop)
      :ok = Yggdrasil.unsubscribe(channel)
    end

    test "a subscriber of a disconnected channel gets :Y_CONNECTED when the adapter connects" do
      channel = channel!()
      :ok = MemoryBroker.drop(channel)

      assert :ok = Yggdrasil.subscribe(channel)
      adapter = adapter!(channel)
      refute Manager.connected?(channel)

      {other, :ok} = start_subscriber(channel)
      :ok = MemoryBroker.restore(channel)
      assert_receive {:Y_CONNECTED, ^channel}, @wait
      assert_receive {^other, {:Y_CONNECTED, ^channel}}, @wait

      assert events_until_sentinel(channel) == []
      refute_received {:Y_CONNECTED, _}
      assert adapter!(channel) == adapter

      send(other, :stop)
      :ok = Yggdrasil.unsubscribe(channel)
    end

    test "Manager.connected/1 and disconnected/1 notify only on a change" do
      channel = channel!()
      :ok = Yggdrasil.subscribe(channel)
      assert_receive {:Y_CONNECTED, ^channel}, @wait

      assert :ok = Manager.connected(channel)
      assert :ok = Manager.disconnected(%Channel{channel | metadata: :ignored})
      assert :ok = Manager.disconnected(channel)
      assert :ok = Manager.connected(channel)
      assert {:error, _} = Manager.connected(:not_a_channel)
      assert {:error, _} = Manager.disconnected(%{name: "x"})

      assert events_until_sentinel(channel) == []
      assert_received {:Y_DISCONNECTED, ^channel}
      assert_received {:Y_CONNECTED, ^channel}
      refute_received {:Y_CONNECTED, _}
      refute_received {:Y_DISCONNECTED, _}

      :ok = Yggdrasil.unsubscribe(channel)
    end
  end

  describe "adapter life cycle" do
    test "the adapter stops with :normal after the last unsubscribe, not before" do
      channel = channel!()
      :ok = Yggdrasil.subscribe(channel)
      assert_receive {:Y_CONNECTED, ^channel}, @wait
      {other, :ok} = start_subscriber(channel)
      assert_receive {^other, {:Y_CONNECTED, ^channel}}, @wait

      adapter = adapter!(channel)
      ref = Process.monitor(adapter)

      :ok = Yggdrasil.unsubscribe(channel)
      assert_receive {:Y_DISCONNECTED, ^channel}, @wait

      # The adapter still serves the other subscriber.
      :ok = Yggdrasil.publish(channel, :still_there)
      assert_receive {^other, {:Y_EVENT, ^channel, :still_there}}, @wait
      refute_received {:DOWN, ^ref, _, _, _}
      assert adapter!(channel) == adapter

      assert unsubscribe_subscriber(other, channel) == :ok
      assert_receive {^other, {:Y_DISCONNECTED, ^channel}}, @wait
      assert down_reason(ref) == :normal
      assert Engine.subscriber_count(key(channel)) == 0
      send(other, :stop)
    end

    test "the adapter stops with :normal after the last subscriber dies" do
      channel = channel!()
      {first, :ok} = start_subscriber(channel)
      {second, :ok} = start_subscriber(channel)
      assert_receive {^first, {:Y_CONNECTED, ^channel}}, @wait
      assert_receive {^second, {:Y_CONNECTED, ^channel}}, @wait

      adapter = adapter!(channel)
      ref = Process.monitor(adapter)

      kill(first)
      :ok = Yggdrasil.publish(channel, :still_there)
      assert_receive {^second, {:Y_EVENT, ^channel, :still_there}}, @wait
      refute_received {:DOWN, ^ref, _, _, _}

      kill(second)
      assert down_reason(ref) == :normal
      assert Engine.subscriber_count(key(channel)) == 0
    end

    test "a subscriber that exits normally leaves, too" do
      channel = channel!()
      {pid, :ok} = start_subscriber(channel)
      assert_receive {^pid, {:Y_CONNECTED, ^channel}}, @wait
      ref = Process.monitor(adapter!(channel))

      send(pid, :stop)
      assert down_reason(ref) == :normal
    end

    test "a slow terminate/2 holds up neither the Generator nor other channels" do
      slow = channel!()
      :ok = MemoryBroker.set(slow, :hold_stop, self())
      :ok = Yggdrasil.subscribe(slow)
      assert_receive {:Y_CONNECTED, ^slow}, @wait
      old = adapter!(slow)
      ref = Process.monitor(old)

      :ok = Yggdrasil.unsubscribe(slow)
      assert_receive {:hold_stop, ^old, hold}, @wait

      # Other channels start and stop adapters meanwhile.
      other = channel!()
      :ok = Yggdrasil.subscribe(other)
      assert_receive {:Y_CONNECTED, ^other}, @wait
      :ok = Yggdrasil.unsubscribe(other)

      # A new subscriber of the slow channel waits for the old adapter.
      task =
        Task.async(fn ->
          :ok = Yggdrasil.subscribe(slow)
          assert_receive {:Y_CONNECTED, ^slow}, @wait
          adapter!(slow)
        end)

      assert Task.yield(task, 100) == nil
      assert Process.alive?(old)

      :ok = MemoryBroker.unset(slow, :hold_stop)
      MemoryBroker.go(old, hold)
      assert down_reason(ref) == :normal

      new = Task.await(task)
      assert is_pid(new) and new != old
      assert MemoryBroker.setting(slow, {:overlap, new}) == nil
    end
  end

  describe "source compatibility" do
    test "Yggdrasil 6 style adapter modules compile without warnings, with or without @impl" do
      suffix = "V6Style#{System.unique_integer([:positive])}"

      source = """
      defmodule Yggdrasil.Adapter.#{suffix} do
        use Yggdrasil.Adapter, name: :#{Macro.underscore(suffix)}
      end

      defmodule Yggdrasil.Subscriber.Adapter.#{suffix} do
        use Yggdrasil.Subscriber.Adapter
        use GenServer

        def init(%{channel: channel}), do: {:ok, channel}
        def handle_info(_message, channel), do: {:noreply, channel}
      end

      defmodule Yggdrasil.Publisher.Adapter.#{suffix} do
        use Yggdrasil.Publisher.Adapter
        use GenServer

        @impl true
        def init(namespace), do: {:ok, namespace}

        @impl Yggdrasil.Publisher.Adapter
        def publish(publisher, %Yggdrasil.Channel{} = channel, message, options \\\\ []) do
          GenServer.call(publisher, {:publish, channel, message, options})
        end

        @impl true
        def handle_call({:publish, _channel, _message, _options}, _from, namespace),
          do: {:reply, :ok, namespace}
      end
      """

      warnings =
        ExUnit.CaptureIO.capture_io(:stderr, fn ->
          assert [_, _, _] = Code.compile_string(source)
        end)

      assert warnings == ""
      adapter = Module.concat(Yggdrasil.Adapter, suffix)
      assert :ok = adapter.register()

      channel = [name: "v6", adapter: adapter]
      assert :ok = Yggdrasil.subscribe(channel)
      assert :ok = Yggdrasil.publish(channel, :x)
      assert :ok = Yggdrasil.unsubscribe(channel)
    end
  end

  describe "generic dispatchers" do
    test "Subscriber.Adapter.start_link/2 and stop/1,2,3 work on the channel's adapter" do
      alias Yggdrasil.Subscriber.Adapter, as: SubscriberAdapter
      channel = channel!()

      assert {:ok, pid} = SubscriberAdapter.start_link(channel)
      assert MemoryBroker.adapters(channel) == [pid]
      assert :ok = SubscriberAdapter.stop(pid)

      assert {:ok, pid} = SubscriberAdapter.start_link(channel, name: :memory_dispatch_test)
      assert Process.whereis(:memory_dispatch_test) == pid
      assert :ok = SubscriberAdapter.stop(:memory_dispatch_test, :normal)

      {:ok, pid} = SubscriberAdapter.start_link(channel)
      assert :ok = SubscriberAdapter.stop(pid, :normal, 1_000)

      assert {:error, _} = SubscriberAdapter.start_link(:not_a_channel)
      assert {:error, _} = SubscriberAdapter.start_link(%Channel{name: "x", adapter: :nope})
    end

    test "Publisher.Adapter.start_link/2, publish/4 and stop/1 work on the channel's adapter" do
      alias Yggdrasil.Publisher.Adapter, as: PublisherAdapter
      channel = channel!()
      :ok = Yggdrasil.subscribe(channel)
      assert_receive {:Y_CONNECTED, ^channel}, @wait

      assert {:ok, publisher} = PublisherAdapter.start_link(channel)
      assert :ok = PublisherAdapter.publish(publisher, channel, :direct, metadata: :meta)
      assert_receive {:Y_EVENT, %Channel{metadata: :meta}, :direct}, @wait
      assert :ok = PublisherAdapter.stop(publisher)
      refute Process.alive?(publisher)

      # The :elixir publisher module works through the same dispatchers.
      {:ok, native} = Yggdrasil.gen_channel(name: {:elixir_dispatch, make_ref()})
      :ok = Yggdrasil.subscribe(native)
      assert_receive {:Y_CONNECTED, ^native}, @wait
      assert {:ok, elixir_publisher} = PublisherAdapter.start_link(native)
      assert :ok = PublisherAdapter.publish(elixir_publisher, native, :native, [])
      assert_receive {:Y_EVENT, ^native, :native}, @wait
      assert :ok = GenServer.call(elixir_publisher, {:publish, native, :by_call})
      assert_receive {:Y_EVENT, ^native, :by_call}, @wait
      assert :ok = PublisherAdapter.stop(elixir_publisher)
      :ok = Yggdrasil.unsubscribe(native)

      assert {:error, _} = PublisherAdapter.start_link(:not_a_channel)
      assert {:error, _} = PublisherAdapter.publish(self(), :not_a_channel, :x, [])
      :ok = Yggdrasil.unsubscribe(channel)
    end
  end
end
