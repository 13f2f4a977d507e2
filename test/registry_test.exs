# An adapter whose process modules are the :elixir ones, with :json as its
# default transformer.
defmodule Yggdrasil.Adapter.RegistryTestJson do
  use Yggdrasil.Adapter,
    name: :registry_test_json,
    transformer: :json,
    subscriber: Yggdrasil.Subscriber.Adapter.Elixir,
    publisher: Yggdrasil.Publisher.Adapter.Elixir
end

# An adapter whose derived subscriber/publisher modules do not exist.
defmodule Yggdrasil.Adapter.RegistryTestMissing do
  use Yggdrasil.Adapter, name: :registry_test_missing
end

defmodule Yggdrasil.RegistryTest do
  # Spec section 5 (Yggdrasil.Registry) and the configuration of section 8.
  use ExUnit.Case, async: true

  # assert_receive waits this long (ms) for other processes on a busy machine.
  @timeout 2_000

  alias Yggdrasil.Channel
  alias Yggdrasil.Registry

  alias Yggdrasil.Adapter.RegistryTestJson, as: JsonAdapter
  alias Yggdrasil.Adapter.RegistryTestMissing, as: MissingAdapter

  describe "lookups by alias and by module" do
    test "transformers" do
      assert {:ok, Yggdrasil.Transformer.Default} == Registry.get_transformer_module(:default)
      assert {:ok, Yggdrasil.Transformer.Json} == Registry.get_transformer_module(:json)

      for module <- [Yggdrasil.Transformer.Default, Yggdrasil.Transformer.Json] do
        assert {:ok, module} == Registry.get_transformer_module(module)
      end
    end

    test "backends" do
      assert {:ok, Yggdrasil.Backend.Default} == Registry.get_backend_module(:default)

      assert {:ok, Yggdrasil.Backend.Default} ==
               Registry.get_backend_module(Yggdrasil.Backend.Default)
    end

    test "adapters and their subscriber and publisher modules" do
      assert {:ok, Yggdrasil.Adapter.Elixir} == Registry.get_adapter_module(:elixir)

      assert {:ok, Yggdrasil.Adapter.Elixir} ==
               Registry.get_adapter_module(Yggdrasil.Adapter.Elixir)

      assert {:ok, Yggdrasil.Subscriber.Adapter.Elixir} == Registry.get_subscriber_module(:elixir)
      assert {:ok, Yggdrasil.Publisher.Adapter.Elixir} == Registry.get_publisher_module(:elixir)

      assert {:ok, Yggdrasil.Subscriber.Adapter.Elixir} ==
               Registry.get_subscriber_module(Yggdrasil.Subscriber.Adapter.Elixir)

      assert {:ok, Yggdrasil.Publisher.Adapter.Elixir} ==
               Registry.get_publisher_module(Yggdrasil.Publisher.Adapter.Elixir)
    end

    test "a channel whose adapter is given as the module works end to end" do
      {:ok, channel} = Yggdrasil.gen_channel(name: make_ref(), adapter: Yggdrasil.Adapter.Elixir)
      assert :ok = Yggdrasil.subscribe(channel)
      assert_receive {:Y_CONNECTED, ^channel}, @timeout
      assert :ok = Yggdrasil.publish(channel, "by module")
      assert_receive {:Y_EVENT, ^channel, "by module"}, @timeout
      assert :ok = Yggdrasil.unsubscribe(channel)
      assert_receive {:Y_DISCONNECTED, ^channel}, @timeout
    end

    test "unknown names give {:error, binary}" do
      for lookup <- [
            &Registry.get_transformer_module/1,
            &Registry.get_backend_module/1,
            &Registry.get_adapter_module/1,
            &Registry.get_subscriber_module/1,
            &Registry.get_publisher_module/1
          ],
          name <- [:registry_test_nope, Registry.Test.Nope, "json", nil, 1, {:json}] do
        assert {:error, reason} = lookup.(name)
        assert is_binary(reason)
      end
    end

    test "a transformer alias does not answer for another kind" do
      assert {:error, _} = Registry.get_backend_module(:json)
      assert {:error, _} = Registry.get_adapter_module(:json)
      assert {:error, _} = Registry.get_transformer_module(:elixir)
    end
  end

  describe "get_adapter_node/1" do
    test "a locally registered adapter is on this node, by alias or module" do
      assert {:ok, node()} == Registry.get_adapter_node(:elixir)
      assert {:ok, node()} == Registry.get_adapter_node(Yggdrasil.Adapter.Elixir)
    end

    test "an adapter registered nowhere gives {:error, binary}" do
      assert {:error, reason} = Registry.get_adapter_node(:registry_test_nowhere)
      assert is_binary(reason)
      assert {:error, _} = Registry.get_adapter_node("elixir")
    end
  end

  describe "get_full_channel/1" do
    test "fills the adapter's defaults" do
      assert {:ok,
              %Channel{name: "f", adapter: :elixir, transformer: :default, backend: :default}} =
               Registry.get_full_channel(%Channel{name: "f"})
    end

    test "keeps given fields and metadata" do
      channel = %Channel{name: "f", transformer: :json, namespace: Ns, metadata: :m}
      assert {:ok, %Channel{channel | backend: :default}} == Registry.get_full_channel(channel)
    end

    test "unknown adapter, transformer or backend, or a non-channel, give {:error, binary}" do
      for bad <- [
            %Channel{name: "f", adapter: :registry_test_nope},
            %Channel{name: "f", transformer: :registry_test_nope},
            %Channel{name: "f", backend: :registry_test_nope},
            %{name: "f"},
            [name: "f"],
            nil
          ] do
        assert {:error, reason} = Registry.get_full_channel(bad), inspect(bad)
        assert is_binary(reason)
      end
    end
  end

  describe "register_*" do
    test "a registration replaces the cached routes, also while they are being resolved" do
      channel = %Channel{name: "swap", transformer: :registry_test_swap}
      :ok = Registry.register_transformer(:registry_test_swap, Yggdrasil.Transformer.Default)

      assert {:ok, _, %{transformer_module: Yggdrasil.Transformer.Default, direct: true}} =
               Registry.resolve(channel)

      resolvers =
        for _ <- 1..2 do
          spawn_link(fn ->
            Stream.repeatedly(fn -> Registry.resolve(channel) end) |> Stream.run()
          end)
        end

      for round <- 1..50 do
        module =
          if rem(round, 2) == 0,
            do: Yggdrasil.Transformer.Default,
            else: Yggdrasil.Transformer.Json

        :ok = Registry.register_transformer(:registry_test_swap, module)
        assert {:ok, _, %{transformer_module: ^module}} = Registry.resolve(channel)
      end

      Enum.each(resolvers, &(Process.unlink(&1) && Process.exit(&1, :kill)))

      assert {:ok, _, %{transformer_module: Yggdrasil.Transformer.Default}} =
               Registry.resolve(channel)
    end

    test "register_transformer/2 and register_backend/2 make aliases" do
      assert :ok =
               Registry.register_transformer(
                 :registry_test_identity,
                 Yggdrasil.Transformer.Default
               )

      assert {:ok, Yggdrasil.Transformer.Default} ==
               Registry.get_transformer_module(:registry_test_identity)

      assert :ok = Registry.register_backend(:registry_test_backend, Yggdrasil.Backend.Default)

      assert {:ok, Yggdrasil.Backend.Default} ==
               Registry.get_backend_module(:registry_test_backend)

      {:ok, channel} =
        Yggdrasil.gen_channel(
          name: make_ref(),
          transformer: :registry_test_identity,
          backend: :registry_test_backend
        )

      :ok = Yggdrasil.subscribe(channel)
      :ok = Yggdrasil.publish(channel, {:aliased, 1})
      assert_receive {:Y_EVENT, ^channel, {:aliased, 1}}, @timeout
    end

    test "register_adapter/2 registers the adapter and its subscriber and publisher modules" do
      assert :ok = Registry.register_adapter(:registry_test_json, JsonAdapter)
      assert {:ok, JsonAdapter} == Registry.get_adapter_module(:registry_test_json)
      assert {:ok, JsonAdapter} == Registry.get_adapter_module(JsonAdapter)

      assert {:ok, Yggdrasil.Subscriber.Adapter.Elixir} ==
               Registry.get_subscriber_module(:registry_test_json)

      assert {:ok, Yggdrasil.Publisher.Adapter.Elixir} ==
               Registry.get_publisher_module(:registry_test_json)

      assert {:ok, node()} == Registry.get_adapter_node(:registry_test_json)

      # gen_channel fills the adapter's own default transformer.
      assert {:ok,
              %Channel{adapter: :registry_test_json, transformer: :json, backend: :default} =
                channel} = Yggdrasil.gen_channel(name: make_ref(), adapter: :registry_test_json)

      :ok = Yggdrasil.subscribe(channel)
      assert_receive {:Y_CONNECTED, ^channel}, @timeout
      :ok = Yggdrasil.publish(channel, %{json: true})
      assert_receive {:Y_EVENT, ^channel, %{"json" => true}}, @timeout
    end

    test "start_link/1 of a `use Yggdrasil.Adapter` module registers it" do
      assert {:ok, _} = start_supervised(JsonAdapter)
      assert {:ok, JsonAdapter} == Registry.get_adapter_module(:registry_test_json)
    end

    test "an adapter whose modules do not exist is refused, and nothing is half-registered" do
      assert {:error, _} = Registry.register_adapter(:registry_test_missing, MissingAdapter)
      assert {:error, _} = MissingAdapter.register()
      assert {:error, _} = MissingAdapter.start_link([])
      assert {:error, _} = Registry.get_adapter_module(:registry_test_missing)
      assert {:error, _} = Registry.get_subscriber_module(:registry_test_missing)
      assert {:error, _} = Registry.get_publisher_module(:registry_test_missing)
      assert {:error, _} = Registry.get_adapter_node(:registry_test_missing)
      assert {:error, _} = Yggdrasil.gen_channel(name: "x", adapter: :registry_test_missing)
    end

    test "bad arguments give {:error, _}" do
      assert {:error, _} = Registry.register_transformer("name", Yggdrasil.Transformer.Default)
      assert {:error, _} = Registry.register_transformer(:registry_test_bad, "module")
      assert {:error, _} = Registry.register_backend(1, Yggdrasil.Backend.Default)
      assert {:error, _} = Registry.register_backend(:registry_test_bad, {:module})
      # Modules that are not one, refused before a channel uses them.
      assert {:error, no_module} = Registry.register_transformer(:registry_test_bad, :no_such)
      assert no_module =~ "not a transformer (no encode/2, decode/2)"

      assert {:error, not_backend} =
               Registry.register_backend(:registry_test_bad, Yggdrasil.Transformer.Default)

      assert not_backend =~ "not a backend (no subscribe/1"
      assert {:error, _} = Registry.get_transformer_module(:registry_test_bad)
      assert {:error, _} = Registry.get_backend_module(:registry_test_bad)
      assert {:error, _} = Registry.register_adapter("elixir", Yggdrasil.Adapter.Elixir)
      assert {:error, _} = Registry.register_adapter(:registry_test_bad, "module")
      assert {:error, _} = Registry.register_adapter(:registry_test_bad, Registry.Test.NotLoaded)
      # A module that is not an adapter.
      assert {:error, _} =
               Registry.register_adapter(:registry_test_bad, Yggdrasil.Transformer.Json)

      for lookup <- [
            &Registry.get_transformer_module/1,
            &Registry.get_backend_module/1,
            &Registry.get_adapter_module/1
          ] do
        assert {:error, _} = lookup.(:registry_test_bad)
      end
    end
  end

  describe "Yggdrasil.Config" do
    test "publisher_options!/0 defaults to size 1, max_overflow 5" do
      assert Yggdrasil.Config.publisher_options!() == [size: 1, max_overflow: 5]
      assert Yggdrasil.Config.publisher_options!(nil) == [size: 1, max_overflow: 5]
    end

    test "publisher_options!/1 reads the namespace first, then falls back" do
      namespace = :"Elixir.Yggdrasil.RegistryTest.Ns#{System.unique_integer([:positive])}"
      assert Yggdrasil.Config.publisher_options!(namespace) == [size: 1, max_overflow: 5]

      Application.put_env(:yggdrasil, namespace, publisher_options: [size: 3, max_overflow: 0])
      on_exit(fn -> Application.delete_env(:yggdrasil, namespace) end)
      assert Yggdrasil.Config.publisher_options!(namespace) == [size: 3, max_overflow: 0]

      Application.put_env(:yggdrasil, namespace, other: :setting)
      assert Yggdrasil.Config.publisher_options!(namespace) == [size: 1, max_overflow: 5]
    end

    test "module_registry!/0 defaults to :\"$yggdrasil_registry\"" do
      assert Yggdrasil.Config.module_registry!() == :"$yggdrasil_registry"
    end
  end
end

defmodule Yggdrasil.ApplicationTest do
  # Spec section 8: the application and its built-ins. Not async: one test
  # restarts the application.
  use ExUnit.Case, async: false

  # assert_receive waits this long (ms) for other processes on a busy machine.
  @timeout 2_000

  import ExUnit.CaptureLog

  alias Yggdrasil.Registry

  defmodule BootSubscriber do
    use Yggdrasil

    @impl Yggdrasil
    def init(test), do: {:subscribe, [[name: {:boot, test}]], test}

    @impl Yggdrasil
    def handle_connect(channel, test) do
      send(test, {:boot_connected, channel})
      {:ok, test}
    end
  end

  @builtins [
    {:backend, :default, Yggdrasil.Backend.Default},
    {:transformer, :default, Yggdrasil.Transformer.Default},
    {:transformer, :json, Yggdrasil.Transformer.Json},
    {:adapter, :elixir, Yggdrasil.Adapter.Elixir},
    {:adapter, :bridge, Yggdrasil.Adapter.Bridge}
  ]

  defp lookup(:backend, name), do: Registry.get_backend_module(name)
  defp lookup(:transformer, name), do: Registry.get_transformer_module(name)
  defp lookup(:adapter, name), do: Registry.get_adapter_module(name)

  test "the application runs with no configuration" do
    assert Enum.any?(Application.started_applications(), &match?({:yggdrasil, _, _}, &1))
    assert {:ok, vsn} = :application.get_key(:yggdrasil, :vsn)
    assert Version.match?(to_string(vsn), "~> 6.0")
  end

  test "the built-ins are registered, by alias and by module" do
    for {kind, name, module} <- @builtins do
      assert {:ok, module} == lookup(kind, name), "#{kind} #{name}"
      assert {:ok, module} == lookup(kind, module), "#{kind} #{inspect(module)}"
    end
  end

  test "the built-ins are registered before the application's start returns" do
    keys =
      for {kind, name, module} <- @builtins, key <- [name, module] do
        {Registry, kind, key}
      end ++
        for kind <- [:subscriber, :publisher],
            key <- [:elixir, :bridge],
            do: {Registry, kind, key}

    capture_log(fn ->
      :ok = Application.stop(:yggdrasil)
      # A fresh boot: nothing registered, no route cached (all routes are
      # one term, see Yggdrasil.Registry).
      Enum.each([:"Yggdrasil.Registry.routes" | keys], &:persistent_term.erase/1)
      assert {:error, _} = Yggdrasil.gen_channel(name: "boot")

      :ok = Application.start(:yggdrasil)
      # What a dependent application's supervisor would do right now.
      {:ok, pid} = Yggdrasil.start_link(BootSubscriber, self())
      assert_receive {:boot_connected, %Yggdrasil.Channel{name: {:boot, _}}}, @timeout
      Yggdrasil.stop(pid)
    end)

    for {kind, name, module} <- @builtins do
      assert {:ok, module} == lookup(kind, name)
    end

    {:ok, channel} = Yggdrasil.gen_channel(name: {:after_restart, make_ref()})
    :ok = Yggdrasil.subscribe(channel)
    :ok = Yggdrasil.publish(channel, "after restart")
    assert_receive {:Y_EVENT, ^channel, "after restart"}, @timeout
  end

  test "mix.exs depends on no hex package" do
    deps = Mix.Project.config()[:deps]
    assert deps == []
  end
end
