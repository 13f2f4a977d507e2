defmodule Yggdrasil.BackendTest do
  # Spec section 4: Yggdrasil.Backend, Yggdrasil.Backend.Default, custom
  # backends.
  use ExUnit.Case, async: true

  import Yggdrasil.Test.Helpers, only: [forward_all: 1]

  # assert_receive waits this long (ms) for other processes on a busy machine.
  @timeout 2_000

  alias Yggdrasil.Backend
  alias Yggdrasil.Backend.Default
  alias Yggdrasil.Channel
  alias Yggdrasil.Engine

  # A custom backend: overrides publish/3 and calls the default through super.
  defmodule Audit do
    use Yggdrasil.Backend, name: :backend_test_audit

    @impl Yggdrasil.Backend
    def publish(channel, message, metadata) do
      # Runs in the publisher's process: tell it what went through.
      send(self(), {:audited, channel.name, message, metadata})
      super(channel, {:audited, message}, metadata)
    end
  end

  # A backend refusing subscriptions, to see errors come back unchanged.
  defmodule Refusing do
    use Yggdrasil.Backend, name: :backend_test_refusing

    @impl Yggdrasil.Backend
    def subscribe(_channel), do: {:error, :refused}
  end

  setup_all do
    :ok = Audit.register()
    :ok = Refusing.register()
  end

  defp channel!(fields \\ []) do
    name = {:backend_test, System.unique_integer([:positive])}
    {:ok, channel} = Yggdrasil.gen_channel(Keyword.put_new(fields, :name, name))
    channel
  end

  defp key(channel), do: Channel.key(channel)

  # A process subscribed to `channel` through `subscribe` that forwards
  # every message it gets to the test process, tagged with its pid.
  defp forwarder(channel, subscribe) do
    parent = self()

    pid =
      spawn_link(fn ->
        :ok = subscribe.(channel)
        send(parent, {:subscribed, self()})
        forward_all(parent)
      end)

    assert_receive {:subscribed, ^pid}, @timeout
    pid
  end

  describe "Yggdrasil.Backend.Default" do
    test "documents exactly its eight functions" do
      {:docs_v1, _, _, _, _, _, docs} = Code.fetch_docs(Default)

      documented =
        for {{:function, name, arity}, _, _, doc, _} <- docs, is_map(doc), do: {name, arity}

      assert Enum.sort(documented) == [
               child_spec: 1,
               connected: 2,
               disconnected: 2,
               publish: 3,
               register: 0,
               start_link: 1,
               subscribe: 1,
               unsubscribe: 1
             ]
    end

    test "implements the Yggdrasil.Backend behaviour" do
      behaviours = Default.module_info(:attributes) |> Keyword.get_values(:behaviour)
      assert [Backend] in behaviours

      for {name, arity} <- Backend.behaviour_info(:callbacks) do
        assert function_exported?(Default, name, arity)
      end
    end

    test "child_spec/1 is what `use Task, restart: :transient` gives" do
      assert Default.child_spec(:anything) == %{
               id: Default,
               start: {Default, :start_link, [:anything]},
               restart: :transient
             }
    end

    test "start_link/1 registers and starts a task that ends normally" do
      assert {:ok, pid} = Default.start_link([])
      ref = Process.monitor(pid)

      assert_receive {:DOWN, ^ref, :process, ^pid, reason} when reason in [:normal, :noproc],
                     @timeout

      assert {:ok, Default} == Yggdrasil.Registry.get_backend_module(:default)
    end

    test "register/0 registers :default and the module itself" do
      assert :ok = Default.register()
      assert {:ok, Default} == Yggdrasil.Registry.get_backend_module(:default)
      assert {:ok, Default} == Yggdrasil.Registry.get_backend_module(Default)
    end

    test "works under a supervisor like any child" do
      assert {:ok, _} = start_supervised(Default)
    end

    test "subscribe/1 subscribes the calling process" do
      channel = channel!()
      assert :ok = Default.subscribe(channel)
      assert Engine.subscribed?(key(channel), self())
      assert :ok = Default.subscribe(channel)
      assert Engine.subscriber_count(key(channel)) == 1

      assert :ok = Default.publish(channel, "hi", nil)
      assert_receive {:Y_EVENT, ^channel, "hi"}, @timeout
    end

    test "unsubscribe/1 stops delivery to the caller; :ok when not subscribed" do
      channel = channel!()
      other = forwarder(channel, &Default.subscribe/1)

      :ok = Default.subscribe(channel)
      assert :ok = Default.unsubscribe(channel)
      refute Engine.subscribed?(key(channel), self())
      assert :ok = Default.unsubscribe(channel)

      :ok = Default.publish(channel, :after, nil)
      assert_receive {:forwarded, ^other, {:Y_EVENT, ^channel, :after}}, @timeout
      refute_received {:Y_EVENT, _, _}
    end

    test "unsubscribe/1 stops delivery whichever API subscribed (improved)" do
      channel = channel!()

      :ok = Default.subscribe(channel)
      :ok = Yggdrasil.unsubscribe(channel)
      refute Engine.subscribed?(key(channel), self())

      :ok = Yggdrasil.subscribe(channel)
      :ok = Default.unsubscribe(channel)
      refute Engine.subscribed?(key(channel), self())

      :ok = Yggdrasil.publish(channel, :nobody)
      refute_received {:Y_EVENT, _, _}
    end

    test "connected/2 with nil broadcasts to every subscriber, with a pid to that pid only" do
      channel = channel!()
      a = forwarder(channel, &Default.subscribe/1)
      b = forwarder(channel, &Default.subscribe/1)
      outsider = forwarder(channel!(), &Default.subscribe/1)

      assert :ok = Default.connected(channel, nil)
      assert_receive {:forwarded, ^a, {:Y_CONNECTED, ^channel}}, @timeout
      assert_receive {:forwarded, ^b, {:Y_CONNECTED, ^channel}}, @timeout

      # To one pid, subscribed or not.
      assert :ok = Default.connected(channel, a)
      assert_receive {:forwarded, ^a, {:Y_CONNECTED, ^channel}}, @timeout
      assert :ok = Default.connected(channel, self())
      assert_receive {:Y_CONNECTED, ^channel}, @timeout

      # Nothing else went anywhere.
      sync_all([a, b, outsider])
      refute_received {:forwarded, _, _}
    end

    test "disconnected/2 with nil broadcasts, with a pid sends to that pid only" do
      channel = channel!()
      a = forwarder(channel, &Default.subscribe/1)
      b = forwarder(channel, &Default.subscribe/1)

      assert :ok = Default.disconnected(channel, nil)
      assert_receive {:forwarded, ^a, {:Y_DISCONNECTED, ^channel}}, @timeout
      assert_receive {:forwarded, ^b, {:Y_DISCONNECTED, ^channel}}, @timeout

      assert :ok = Default.disconnected(channel, b)
      assert_receive {:forwarded, ^b, {:Y_DISCONNECTED, ^channel}}, @timeout

      # A notification does not change membership.
      assert Engine.subscriber_count(key(channel)) == 2
      sync_all([a, b])
      refute_received {:forwarded, _, _}
    end

    test "connected/2 and disconnected/2 to a dead pid are :ok" do
      channel = channel!()
      pid = spawn(fn -> :ok end)
      ref = Process.monitor(pid)
      assert_receive {:DOWN, ^ref, _, _, _}, @timeout
      assert :ok = Default.connected(channel, pid)
      assert :ok = Default.disconnected(channel, pid)
    end

    test "publish/3 sends the event with the metadata in the channel to every subscriber" do
      channel = channel!()
      a = forwarder(channel, &Default.subscribe/1)
      :ok = Default.subscribe(channel)

      assert :ok = Default.publish(channel, {:any, "term"}, %{trace: 1})
      expected = %Channel{channel | metadata: %{trace: 1}}
      assert_receive {:Y_EVENT, ^expected, {:any, "term"}}, @timeout
      assert_receive {:forwarded, ^a, {:Y_EVENT, ^expected, {:any, "term"}}}, @timeout

      # Publishing with a channel that carries metadata replaces it.
      assert :ok = Default.publish(%Channel{channel | metadata: :old}, "m", nil)
      assert_receive {:Y_EVENT, ^channel, "m"}, @timeout
    end

    test "bad arguments give {:error, _}, never a crash" do
      channel = channel!()

      for bad <- ["room", nil, %{name: "x"}, [name: "x"], {:channel}] do
        assert {:error, _} = Default.subscribe(bad)
        assert {:error, _} = Default.unsubscribe(bad)
        assert {:error, _} = Default.connected(bad, nil)
        assert {:error, _} = Default.connected(bad, self())
        assert {:error, _} = Default.disconnected(bad, nil)
        assert {:error, _} = Default.publish(bad, "m", nil)
      end

      for target <- [:name, "pid", 1, make_ref(), {:via, Registry, :x}, [self()]] do
        assert {:error, _} = Default.connected(channel, target), inspect(target)
        assert {:error, _} = Default.disconnected(channel, target), inspect(target)
      end

      refute_received _
    end
  end

  describe "Yggdrasil.Backend dispatchers" do
    test "subscribe/1, publish/2,3 and unsubscribe/1 go through the channel's backend" do
      channel = channel!()
      assert :ok = Backend.subscribe(channel)
      assert Engine.subscribed?(key(channel), self())

      assert :ok = Backend.publish(channel, "two")
      assert_receive {:Y_EVENT, ^channel, "two"}, @timeout

      assert :ok = Backend.publish(channel, "three", :meta)
      assert_receive {:Y_EVENT, %Channel{metadata: :meta}, "three"}, @timeout

      assert :ok = Backend.unsubscribe(channel)
      refute Engine.subscribed?(key(channel), self())
    end

    test "connected/1,2 and disconnected/1,2" do
      channel = channel!()
      a = forwarder(channel, &Backend.subscribe/1)

      assert :ok = Backend.connected(channel)
      assert_receive {:forwarded, ^a, {:Y_CONNECTED, ^channel}}, @timeout
      assert :ok = Backend.connected(channel, self())
      assert_receive {:Y_CONNECTED, ^channel}, @timeout

      assert :ok = Backend.disconnected(channel)
      assert_receive {:forwarded, ^a, {:Y_DISCONNECTED, ^channel}}, @timeout
      assert :ok = Backend.disconnected(channel, self())
      assert_receive {:Y_DISCONNECTED, ^channel}, @timeout

      assert {:error, _} = Backend.connected(channel, :not_a_pid)
      assert {:error, _} = Backend.disconnected(channel, "not a pid")
    end

    test "non-channels and unknown backends give {:error, _}" do
      unknown = %Channel{name: "x", backend: :no_such_backend}

      for bad <- ["x", nil, %{name: "x", backend: :default}, unknown] do
        assert {:error, _} = Backend.subscribe(bad)
        assert {:error, _} = Backend.unsubscribe(bad)
        assert {:error, _} = Backend.connected(bad)
        assert {:error, _} = Backend.connected(bad, self())
        assert {:error, _} = Backend.disconnected(bad)
        assert {:error, _} = Backend.disconnected(bad, self())
        assert {:error, _} = Backend.publish(bad, "m")
        assert {:error, _} = Backend.publish(bad, "m", :meta)
      end

      refute Engine.subscribed?(key(unknown), self())
      refute_received _
    end

    test "transform_name/1 gives a stable binary, independent of metadata" do
      channel = channel!()
      name = Backend.transform_name(channel)
      assert is_binary(name)
      assert name =~ ~r/\A\d+\z/
      assert name == Backend.transform_name(channel)
      assert name == Backend.transform_name(%Channel{channel | metadata: %{any: 1}})
      refute name == Backend.transform_name(%Channel{channel | name: {:other, make_ref()}})
      assert_raise ArgumentError, fn -> Backend.transform_name("not a channel") end
    end

    test "Subscriber.Manager's predicates answer for channels and raise ArgumentError otherwise" do
      alias Yggdrasil.Subscriber.Manager
      channel = channel!()
      refute Manager.subscribed?(channel)
      :ok = Backend.subscribe(channel)
      assert Manager.subscribed?(channel)
      assert Manager.subscribed?(channel, self())
      refute Manager.connected?(channel)
      :ok = Backend.unsubscribe(channel)
      refute Manager.subscribed?(channel)
      assert_raise ArgumentError, fn -> Manager.subscribed?(:nope) end
      assert_raise ArgumentError, fn -> Manager.subscribed?(channel, :not_a_pid) end
      assert_raise ArgumentError, fn -> Manager.connected?(%{name: "x"}) end
    end

    test "errors from a backend come back as they are" do
      channel = channel!(backend: :backend_test_refusing)
      assert {:error, :refused} = Backend.subscribe(channel)
      assert {:error, :refused} = Yggdrasil.subscribe(channel)
      refute Engine.subscribed?(key(channel), self())
      refute_received {:Y_CONNECTED, _}
    end
  end

  describe "use Yggdrasil.Backend" do
    test "without :name raises ArgumentError" do
      assert_raise ArgumentError, ~r/name/, fn ->
        defmodule NoName do
          use Yggdrasil.Backend
        end
      end

      assert_raise ArgumentError, fn ->
        defmodule BadName do
          use Yggdrasil.Backend, name: "not an atom"
        end
      end

      assert_raise ArgumentError, fn ->
        defmodule NilName do
          use Yggdrasil.Backend, name: nil
        end
      end
    end

    test "a custom backend is found by alias and by module" do
      assert {:ok, Audit} == Yggdrasil.Registry.get_backend_module(:backend_test_audit)
      assert {:ok, Audit} == Yggdrasil.Registry.get_backend_module(Audit)
    end

    test "a custom backend alias is used by Yggdrasil.publish/3 and subscribe/1" do
      channel = channel!(backend: :backend_test_audit)
      assert %Channel{backend: :backend_test_audit} = channel
      name = channel.name

      assert :ok = Yggdrasil.subscribe(channel)
      assert_receive {:Y_CONNECTED, ^channel}, @timeout
      assert Engine.subscribed?(key(channel), self())

      assert :ok = Yggdrasil.publish(channel, "hello", metadata: :m)
      assert_receive {:audited, ^name, "hello", :m}, @timeout

      assert_receive {:Y_EVENT, %Channel{name: ^name, metadata: :m}, {:audited, "hello"}},
                     @timeout

      # Through the dispatcher, with the module as the channel's backend.
      module_channel = %Channel{channel | backend: Audit}
      :ok = Yggdrasil.subscribe(module_channel)
      assert :ok = Backend.publish(module_channel, "direct", nil)
      assert_receive {:audited, ^name, "direct", nil}, @timeout
      assert_receive {:Y_EVENT, ^module_channel, {:audited, "direct"}}, @timeout

      assert :ok = Yggdrasil.unsubscribe(channel)
      assert_receive {:Y_DISCONNECTED, ^channel}, @timeout
    end

    test "a backend's channel is a different channel from the same name on :default" do
      audited = channel!(backend: :backend_test_audit)
      {:ok, plain} = Yggdrasil.gen_channel(name: audited.name)

      :ok = Yggdrasil.subscribe(audited)
      :ok = Yggdrasil.publish(plain, "plain")
      :ok = Yggdrasil.publish(audited, "audited")
      assert_receive {:Y_EVENT, _, {:audited, "audited"}}, @timeout
      refute_received {:Y_EVENT, _, "plain"}
    end

    test "a custom backend starts under a supervisor and registers" do
      defmodule Supervised do
        use Yggdrasil.Backend, name: :backend_test_supervised
      end

      assert {:error, _} = Yggdrasil.gen_channel(name: "s", backend: :backend_test_supervised)
      assert {:ok, _} = start_supervised(Supervised)

      assert {:ok, %Channel{backend: :backend_test_supervised}} =
               Yggdrasil.gen_channel(name: "s", backend: :backend_test_supervised)
    end
  end

  # A round trip through each forwarder: anything it received before is
  # already forwarded to the test process.
  defp sync_all(pids) do
    for pid <- pids do
      ref = make_ref()
      send(pid, {:sync, ref})
      assert_receive {:forwarded, ^pid, {:sync, ^ref}}, @timeout
    end
  end
end
