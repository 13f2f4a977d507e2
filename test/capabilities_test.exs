defmodule Yggdrasil.CapabilitiesTest do
  # Adapters declare how they deliver (`delivery:`) and how they are
  # published to (`publish:`); the core reads that from the route and never
  # asks for an adapter by name.
  use Yggdrasil.AdapterCase, async: true

  alias Yggdrasil.MemoryBroker
  alias Yggdrasil.Publisher.Adapter.Direct, as: DirectPublisher
  alias Yggdrasil.Registry
  alias Yggdrasil.Route
  alias Yggdrasil.Subscriber.Generator

  setup_all do
    :ok = Yggdrasil.Adapter.Direct.register()
    :ok = Yggdrasil.Adapter.MemoryCaller.register()
  end

  defp direct!(fields \\ []) do
    {:ok, channel} =
      fields
      |> Keyword.put_new(:name, {:direct, System.unique_integer([:positive])})
      |> Keyword.put(:adapter, :direct)
      |> Yggdrasil.gen_channel()

    channel
  end

  describe "routes" do
    test "carry the adapter's capabilities" do
      cases = [
        {:elixir, :engine, :caller},
        {:direct, :engine, :caller},
        {:memory_caller, :process, :caller},
        {:memory, :process, :pool},
        {:bridge, :process, :pool}
      ]

      for {adapter, delivery, publish} <- cases do
        channel = %Yggdrasil.Channel{name: "x", adapter: adapter}

        assert {:ok, _, %Route{delivery: ^delivery, publish: ^publish}} =
                 Registry.resolve(channel)

        assert Registry.get_delivery(adapter) == delivery
      end
    end

    test "are direct with the identity transformer and the engine's backend" do
      cases = [
        {[adapter: :elixir], true},
        {[adapter: :elixir, transformer: :default, backend: :default], true},
        {[adapter: :elixir, transformer: :json], false},
        {[adapter: :direct], true},
        {[adapter: :direct, transformer: :json], false},
        {[adapter: :memory_caller], true}
      ]

      for {fields, direct} <- cases do
        channel = struct(Yggdrasil.Channel, [name: "x"] ++ fields)
        assert {:ok, _, %Route{direct: ^direct}} = Registry.resolve(channel), inspect(fields)
      end
    end

    test "a direct publish delivers what the whole pipeline delivers" do
      {:ok, channel} = Yggdrasil.gen_channel(name: {:direct_route, make_ref()})
      assert {:ok, _, %Route{direct: true}} = Registry.resolve(channel)
      :ok = Yggdrasil.subscribe(channel)
      assert_receive {:Y_CONNECTED, ^channel}

      assert :ok = Yggdrasil.publish(channel, {:any, "term"}, metadata: %{id: 7})
      with_metadata = %{channel | metadata: %{id: 7}}
      assert_receive {:Y_EVENT, ^with_metadata, {:any, "term"}}
      assert :ok = Yggdrasil.publish(channel, :plain)
      assert_receive {:Y_EVENT, ^channel, :plain}
      assert {:error, _} = Yggdrasil.publish(channel, :x, :not_a_keyword_list)
      refute_receive {:Y_EVENT, _, :x}, 50
    end

    test "unknown adapters have the Yggdrasil 6 delivery" do
      assert Registry.get_delivery(:no_such_adapter) == :process
    end
  end

  describe "an adapter with delivery: :engine and publish: :caller" do
    test "needs no process: connected at once, published in the caller" do
      channel = direct!(transformer: :json)

      assert :ok = Yggdrasil.subscribe(channel)
      assert_receive {:Y_CONNECTED, ^channel}
      assert Generator.status(channel) == nil

      assert :ok = Yggdrasil.publish(channel, %{"n" => 1}, metadata: :meta)
      meta_channel = %{channel | metadata: :meta}
      assert_receive {:Y_EVENT, ^meta_channel, %{"n" => 1}}
      assert DirectPublisher.published() == 1
      assert Yggdrasil.Publisher.whereis(channel) == nil

      assert {:error, _} = Yggdrasil.publish(channel, "not a map")
      assert DirectPublisher.published() == 1

      assert :ok = Yggdrasil.unsubscribe(channel)
      assert_receive {:Y_DISCONNECTED, ^channel}
      assert :ok = Yggdrasil.publish(channel, %{"n" => 2})
      refute_receive {:Y_EVENT, _, _}, 50
    end

    test "delivers to every subscriber once" do
      channel = direct!()
      subscribers = for _ <- 1..3, do: start_subscriber(channel)
      assert Enum.all?(subscribers, &match?({_, :ok}, &1))
      assert :ok = Yggdrasil.publish(channel, :hello)

      for {pid, :ok} <- subscribers do
        assert_receive {^pid, {:Y_EVENT, _, :hello}}, @wait
        refute_receive {^pid, {:Y_EVENT, _, :hello}}, 20
      end
    end
  end

  describe "an adapter with delivery: :process and publish: :caller" do
    test "runs one subscriber process per channel and publishes without a pool" do
      channel = channel!(adapter: :memory_caller)

      assert :ok = Yggdrasil.subscribe(channel)
      assert_receive {:Y_CONNECTED, ^channel}, @wait
      assert is_pid(adapter!(channel))

      assert :ok = Yggdrasil.publish(channel, "hi")
      assert_receive {:Y_EVENT, ^channel, "hi"}, @wait
      # Published by this process (its pool, shared with :memory, is not used).
      assert MemoryBroker.setting(channel, {:caller_publish, self()}) == 1

      assert :ok = Yggdrasil.unsubscribe(channel)
      assert_receive {:Y_DISCONNECTED, ^channel}, @wait
    end
  end

  describe "declaring capabilities" do
    test "refuses values it does not know, at compile time" do
      for option <- [delivery: :somewhere, publish: :by_pigeon] do
        message = ~r/must be one of/

        assert_raise ArgumentError, message, fn ->
          Code.eval_quoted(
            quote do
              defmodule Yggdrasil.Adapter.Bad do
                use Yggdrasil.Adapter, unquote([{:name, :bad}, option])
              end
            end
          )
        end
      end
    end

    test "publish: :caller needs publish_in_caller/4" do
      assert {:error, reason} =
               Registry.register_adapter(:caller_without, Yggdrasil.Adapter.CallerWithout)

      assert reason =~ "publish_in_caller/4"
      assert {:error, _} = Registry.get_adapter_module(:caller_without)
    end
  end
end
