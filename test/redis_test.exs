defmodule Yggdrasil.RedisTest do
  # The :redis adapter end to end (section 10 of the contract) against real,
  # private redis-server instances, with redis-cli as the independent client.
  # Every test has its own namespace (so its own client, read from its own
  # config) and its own channel names. Servers are stopped by pid when the
  # test or module ends, also on failure (BrokerServer's on_exit and guard).
  use ExUnit.Case, async: false

  import ExUnit.CaptureLog
  import Yggdrasil.Test.Helpers, only: [eventually: 3]

  alias Yggdrasil.Broker
  alias Yggdrasil.Test.BrokerServer
  alias Yggdrasil.Test.RedisCli

  @moduletag :brokers
  @moduletag :redis
  @moduletag :capture_log
  @moduletag timeout: 180_000

  # Generous: the machine is shared and loaded. Nothing here asserts a time.
  @wait 15_000

  setup_all do
    %{server: BrokerServer.start!(:redis)}
  end

  defp namespace, do: Module.concat(__MODULE__, "Ns#{System.unique_integer([:positive])}")

  # A namespace whose settings reach `port` (fast reconnects for the tests).
  defp configure(port, extra \\ []) do
    namespace = namespace()
    settings = [hostname: "127.0.0.1", port: port, backoff_max: 300] ++ extra
    Application.put_env(:yggdrasil, namespace, redis: settings)
    on_exit(fn -> Application.delete_env(:yggdrasil, namespace) end)
    namespace
  end

  defp channel(namespace, name, extra \\ []) do
    {:ok, channel} =
      Yggdrasil.gen_channel([name: name, adapter: :redis, namespace: namespace] ++ extra)

    channel
  end

  defp subscribe!(channel) do
    assert :ok = Yggdrasil.subscribe(channel)
    assert_receive {:Y_CONNECTED, ^channel}, @wait
  end

  defp unique(prefix), do: "#{prefix}.#{System.unique_integer([:positive])}"

  defp event_name(channel, redis_channel), do: %{channel | metadata: %{channel: redis_channel}}

  # A process subscribed to `channel` that forwards what it gets to the test.
  defp forwarder(channel) do
    parent = self()

    pid =
      spawn_link(fn ->
        :ok = Yggdrasil.subscribe(channel)
        forward(parent)
      end)

    assert_receive {:forwarded, ^pid, {:Y_CONNECTED, ^channel}}, @wait
    pid
  end

  defp forward(parent) do
    receive do
      message ->
        send(parent, {:forwarded, self(), message})
        forward(parent)
    end
  end

  describe "connection state and events" do
    test "connected, an event from redis-cli, disconnected on unsubscribe", %{server: server} do
      namespace = configure(server.port)
      channel = channel(namespace, unique("basic"))
      subscribe!(channel)

      assert RedisCli.publish!(server.port, channel.name, "hello") == 1
      expected = event_name(channel, channel.name)
      assert_receive {:Y_EVENT, ^expected, "hello"}, @wait

      assert :ok = Yggdrasil.unsubscribe(channel)
      assert_receive {:Y_DISCONNECTED, ^channel}, @wait
      # The broker-level subscription went with the last subscriber.
      eventually(
        fn -> RedisCli.cmd!(server.port, ["pubsub", "numpat"]) == "0" end,
        "PUNSUBSCRIBE",
        @wait
      )
    end

    test "a pattern name receives every matching channel, with metadata.channel", %{
      server: server
    } do
      namespace = configure(server.port)
      prefix = unique("orders")
      channel = channel(namespace, prefix <> ".*")
      subscribe!(channel)

      RedisCli.publish!(server.port, prefix <> ".new", "one")
      RedisCli.publish!(server.port, prefix <> "-other", "not matching")
      RedisCli.publish!(server.port, prefix <> ".paid", "two")

      new = event_name(channel, prefix <> ".new")
      paid = event_name(channel, prefix <> ".paid")
      assert_receive {:Y_EVENT, ^new, "one"}, @wait
      assert_receive {:Y_EVENT, ^paid, "two"}, @wait
      refute_received {:Y_EVENT, _, "not matching"}

      # Our own publish on a matching channel name comes back the same way.
      assert :ok = Yggdrasil.publish(channel(namespace, prefix <> ".sent"), "three")
      sent = event_name(channel, prefix <> ".sent")
      assert_receive {:Y_EVENT, ^sent, "three"}, @wait
    end
  end

  describe "payloads" do
    @payloads [
      "with some spaces",
      "two\nlines\r\nand a trailing newline\n",
      <<0>>,
      <<"nul", 0, "inside", 0>>,
      "UTF-8: héllo wörld ✓ 🌳 日本",
      ~S(quotes " and \ backslashes),
      <<255, 254, 0, 128>>,
      ""
    ]

    test "arrive byte for byte from redis-cli", %{server: server} do
      namespace = configure(server.port)
      channel = channel(namespace, unique("bytes.in"))
      subscribe!(channel)
      expected = event_name(channel, channel.name)

      for payload <- @payloads do
        RedisCli.publish!(server.port, channel.name, payload)
        assert_receive {:Y_EVENT, ^expected, ^payload}, @wait
      end
    end

    test "reach redis-cli byte for byte", %{server: server} do
      namespace = configure(server.port)
      name = unique("bytes.out")
      cli = RedisCli.subscribe!(server.port, name)

      try do
        for payload <- @payloads,
            do: assert(:ok = Yggdrasil.publish(channel(namespace, name), payload))

        assert {received, _cli} = RedisCli.messages!(cli, length(@payloads))
        assert received == @payloads
      after
        RedisCli.stop(cli)
      end
    end

    test "a payload of several MB (published from a dirty scheduler)", %{server: server} do
      namespace = configure(server.port)
      channel = channel(namespace, unique("big"))
      subscribe!(channel)
      payload = :crypto.strong_rand_bytes(3 * 1024 * 1024)
      assert :ok = Yggdrasil.publish(channel, payload)
      expected = event_name(channel, channel.name)
      assert_receive {:Y_EVENT, ^expected, ^payload}, @wait
    end

    test ":json across the broker, both ways", %{server: server} do
      namespace = configure(server.port)
      name = unique("json")
      channel = channel(namespace, name, transformer: :json)
      subscribe!(channel)
      cli = RedisCli.subscribe!(server.port, name)

      try do
        RedisCli.publish!(server.port, name, ~S({"a":[1,2],"b":"é"}))
        expected = event_name(channel, name)
        assert_receive {:Y_EVENT, ^expected, %{"a" => [1, 2], "b" => "é"}}, @wait

        assert :ok = Yggdrasil.publish(channel, %{"hello" => "world"})
        assert_receive {:Y_EVENT, ^expected, %{"hello" => "world"}}, @wait
        assert {[~S({"a":[1,2],"b":"é"}), ~S({"hello":"world"})], _} = RedisCli.messages!(cli, 2)
      after
        RedisCli.stop(cli)
      end
    end

    test ":default with a non-binary message is an error that says what to do", %{
      server: server
    } do
      namespace = configure(server.port)
      channel = channel(namespace, unique("default"))
      subscribe!(channel)

      for message <- [%{"a" => 1}, :atom, 42, ["list"]] do
        assert {:error, reason} = Yggdrasil.publish(channel, message)
        assert reason =~ ":json"
      end

      refute_received {:Y_EVENT, _, _}
    end
  end

  describe "configuration" do
    test "a namespace selects another server", %{server: server} do
      other = BrokerServer.start!(:redis)
      here = configure(server.port)
      there = configure(other.port)
      name = unique("where")
      channel_here = channel(here, name)
      channel_there = channel(there, name)
      subscribe!(channel_here)
      subscribe!(channel_there)

      assert RedisCli.publish!(other.port, name, "on the other server") == 1
      expected = event_name(channel_there, name)
      assert_receive {:Y_EVENT, ^expected, "on the other server"}, @wait

      assert :ok = Yggdrasil.publish(channel_here, "on the first server")
      expected = event_name(channel_here, name)
      assert_receive {:Y_EVENT, ^expected, "on the first server"}, @wait

      refute_received {:Y_EVENT, %{namespace: ^here}, "on the other server"}
      refute_received {:Y_EVENT, %{namespace: ^there}, "on the first server"}
    end

    test "a bad setting: {:error, _} naming it, from subscribe and publish" do
      namespace = namespace()
      Application.put_env(:yggdrasil, namespace, redis: [port: :six])
      on_exit(fn -> Application.delete_env(:yggdrasil, namespace) end)
      channel = channel(namespace, unique("badconfig"))

      assert {:error, reason} = Yggdrasil.subscribe(channel)
      assert reason =~ "port"
      assert {:error, ^reason} = Yggdrasil.publish(channel, "x")
      assert Yggdrasil.Subscriber.Generator.status(channel) == nil
    end

    test "an environment variable overrides the namespace's config", %{server: server} do
      # The config names a port where nothing listens; the variable fixes it.
      namespace = configure(free_port())
      variable = Yggdrasil.Config.env_prefix(namespace) <> "YGGDRASIL_REDIS_PORT"
      System.put_env(variable, Integer.to_string(server.port))
      on_exit(fn -> System.delete_env(variable) end)

      channel = channel(namespace, unique("env"))
      subscribe!(channel)
      assert :ok = Yggdrasil.publish(channel, "via the variable")
      expected = event_name(channel, channel.name)
      assert_receive {:Y_EVENT, ^expected, "via the variable"}, @wait
    end
  end

  describe "faults" do
    test "server killed: every subscriber disconnected; back on its port: connected again, no new subscribe" do
      server = BrokerServer.start!(:redis)
      namespace = configure(server.port)
      channels = for i <- 1..3, do: channel(namespace, unique("fault#{i}"))
      Enum.each(channels, &subscribe!/1)
      [first | _] = channels
      helpers = for _ <- 1..2, do: forwarder(first)

      server = BrokerServer.kill!(server)

      for channel <- channels, do: assert_receive({:Y_DISCONNECTED, ^channel}, @wait)
      for pid <- helpers, do: assert_receive({:forwarded, ^pid, {:Y_DISCONNECTED, ^first}}, @wait)

      server = BrokerServer.start_again!(server)

      for channel <- channels, do: assert_receive({:Y_CONNECTED, ^channel}, @wait)
      for pid <- helpers, do: assert_receive({:forwarded, ^pid, {:Y_CONNECTED, ^first}}, @wait)

      for channel <- channels do
        RedisCli.publish!(server.port, channel.name, "after the restart")
        expected = event_name(channel, channel.name)
        assert_receive {:Y_EVENT, ^expected, "after the restart"}, @wait
      end

      expected = event_name(first, first.name)

      for pid <- helpers,
          do:
            assert_receive({:forwarded, ^pid, {:Y_EVENT, ^expected, "after the restart"}}, @wait)

      # The publishing connection comes back too.
      assert :ok = Yggdrasil.publish(first, "published again")
      assert_receive {:Y_EVENT, ^expected, "published again"}, @wait
    end

    test "an unreachable server: subscribe :ok, no :Y_CONNECTED, publish {:error, _}, a warning" do
      namespace = configure(free_port(), publish_timeout: 500)
      channel = channel(namespace, unique("unreachable"))

      log =
        capture_log(fn ->
          assert :ok = Yggdrasil.subscribe(channel)
          assert {:error, reason} = Yggdrasil.publish(channel, "nobody hears this")
          assert is_binary(reason)
          refute_receive {:Y_CONNECTED, _}, 1_000
        end)

      assert log =~ "cannot connect to redis"
      assert log =~ inspect(namespace)
    end

    test "a killed adapter process leaves no broker subscription behind", %{server: server} do
      namespace = configure(server.port)
      channel = channel(namespace, unique("killed"))
      subscribe!(channel)
      adapter = Yggdrasil.Subscriber.Generator.whereis(channel)
      assert is_pid(adapter)

      Process.exit(adapter, :kill)
      assert_receive {:Y_DISCONNECTED, ^channel}, @wait
      # Restarted by Yggdrasil for its subscriber, on the same client.
      assert_receive {:Y_CONNECTED, ^channel}, @wait

      eventually(
        fn ->
          new_adapter = Yggdrasil.Subscriber.Generator.whereis(channel)
          is_pid(new_adapter) and new_adapter != adapter
        end,
        "a new adapter process",
        @wait
      )

      eventually(
        fn -> match?(%{subscriptions: 1, monitored: 1}, Broker.stats(:redis, namespace)) end,
        "one subscription, one monitored process",
        @wait
      )

      RedisCli.publish!(server.port, channel.name, "once")
      expected = event_name(channel, channel.name)
      assert_receive {:Y_EVENT, ^expected, "once"}, @wait
      refute_receive {:Y_EVENT, _, "once"}, 500
    end

    test "bad names: {:error, _} from subscribe and publish, nothing started", %{server: server} do
      namespace = configure(server.port)

      for name <- [42, :orders, {"a", "b"}, "", ~c"chars", %{}, nil] do
        channel = channel(namespace, name)
        assert {:error, reason} = Yggdrasil.subscribe(channel), inspect(name)
        assert is_binary(reason)
        assert {:error, _} = Yggdrasil.publish(channel, "x")
        assert Yggdrasil.subscriber_count(channel) == 0
        assert Yggdrasil.Subscriber.Generator.status(channel) == nil
      end

      assert %{subscriptions: 0, monitored: 0} = Broker.stats(:redis, namespace)
      refute_received {:Y_CONNECTED, _}
    end
  end

  describe "load and leaks" do
    test "4 concurrent publishers x 20 subscribers: exactly once, in per-publisher order", %{
      server: server
    } do
      namespace = configure(server.port)
      channel = channel(namespace, unique("load"))
      per_publisher = 100
      total = 4 * per_publisher
      parent = self()

      subscribers =
        for _ <- 1..20 do
          spawn_link(fn ->
            :ok = Yggdrasil.subscribe(channel)

            receive do
              {:Y_CONNECTED, _} -> send(parent, {:ready, self()})
            end

            send(parent, {:received, self(), collect(total, [])})
          end)
        end

      for pid <- subscribers, do: assert_receive({:ready, ^pid}, @wait)

      1..4
      |> Enum.map(fn publisher ->
        Task.async(fn ->
          for seq <- 1..per_publisher,
              do: :ok = Yggdrasil.publish(channel, "#{publisher}:#{seq}")
        end)
      end)
      |> Task.await_many(120_000)

      for pid <- subscribers do
        assert_receive {:received, ^pid, messages}, 60_000
        assert length(messages) == total

        by_publisher =
          Enum.group_by(
            messages,
            &hd(String.split(&1, ":")),
            &(&1 |> String.split(":") |> List.last() |> String.to_integer())
          )

        assert Map.keys(by_publisher) |> Enum.sort() == ["1", "2", "3", "4"]
        for {_, seqs} <- by_publisher, do: assert(seqs == Enum.to_list(1..per_publisher))
      end
    end

    test "nothing is left after the last channel and publisher go" do
      # A server of its own: CLIENT LIST then shows this namespace's connections only.
      server = BrokerServer.start!(:redis)
      namespace = configure(server.port, idle_timeout: 300)
      channels = for i <- 1..5, do: channel(namespace, unique("leak#{i}"))

      for channel <- channels do
        subscribe!(channel)
        assert :ok = Yggdrasil.publish(channel, "x")
        assert_receive {:Y_EVENT, _, "x"}, @wait
      end

      assert :ok = Yggdrasil.publish(channel(namespace, unique("publish.only")), "y")
      assert %{connections: 2, topics: 5, subscriptions: 5} = Broker.stats(:redis, namespace)
      assert length(RedisCli.clients!(server.port)) == 2
      adapters = Enum.map(channels, &Yggdrasil.Subscriber.Generator.whereis/1)
      assert Enum.all?(adapters, &is_pid/1)

      for channel <- channels do
        assert :ok = Yggdrasil.unsubscribe(channel)
        assert_receive {:Y_DISCONNECTED, ^channel}, @wait
      end

      eventually(fn -> not Enum.any?(adapters, &Process.alive?/1) end, "adapters gone", @wait)
      assert Enum.all?(channels, &(Yggdrasil.Subscriber.Generator.status(&1) == nil))

      eventually(
        fn ->
          Broker.stats(:redis, namespace) ==
            %{connections: 0, tasks: 0, topics: 0, subscriptions: 0, monitored: 0}
        end,
        "no connection, task or subscription in the client",
        @wait
      )

      eventually(fn -> RedisCli.clients!(server.port) == [] end, "CLIENT LIST empty", @wait)
    end

    test "a `use Yggdrasil` subscriber sees connect, event and disconnect across a restart" do
      server = BrokerServer.start!(:redis)
      namespace = configure(server.port)
      channel = channel(namespace, unique("behaviour"))
      {:ok, pid} = Yggdrasil.start_link(__MODULE__.Watcher, {channel, self()})
      assert_receive {:watcher, :connect, ^channel}, @wait

      RedisCli.publish!(server.port, channel.name, "before")
      expected = event_name(channel, channel.name)
      assert_receive {:watcher, :event, ^expected, "before"}, @wait

      server = BrokerServer.restart!(server)
      assert_receive {:watcher, :disconnect, ^channel}, @wait
      assert_receive {:watcher, :connect, ^channel}, @wait

      RedisCli.publish!(server.port, channel.name, "after")
      assert_receive {:watcher, :event, ^expected, "after"}, @wait
      Yggdrasil.stop(pid)
    end
  end

  defmodule Watcher do
    @moduledoc false
    use Yggdrasil

    @impl Yggdrasil
    def init({channel, parent}), do: {:subscribe, [channel], parent}

    @impl Yggdrasil
    def handle_connect(channel, parent) do
      send(parent, {:watcher, :connect, channel})
      {:ok, parent}
    end

    @impl Yggdrasil
    def handle_disconnect(channel, parent) do
      send(parent, {:watcher, :disconnect, channel})
      {:ok, parent}
    end

    @impl Yggdrasil
    def handle_event(channel, message, parent) do
      send(parent, {:watcher, :event, channel, message})
      {:ok, parent}
    end
  end

  defp collect(0, acc) do
    # Exactly once: nothing more may follow.
    receive do
      {:Y_EVENT, _, message} -> Enum.reverse([{:extra, message} | acc])
    after
      500 -> Enum.reverse(acc)
    end
  end

  defp collect(n, acc) do
    receive do
      {:Y_EVENT, _, message} -> collect(n - 1, [message | acc])
    after
      60_000 -> Enum.reverse(acc)
    end
  end

  defp free_port do
    {out, 0} = System.cmd(BrokerServer.ctl(), ["free-port"])
    out |> String.trim() |> String.to_integer()
  end
end
