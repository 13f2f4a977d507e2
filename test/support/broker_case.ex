defmodule Yggdrasil.Test.BrokerCase do
  @moduledoc false
  # The scenarios of section 10 that every broker adapter must pass, run
  # against real private servers with the broker's own CLI as the other
  # side. A broker's test module is
  #
  #     use Yggdrasil.Test.BrokerCase, peer: Yggdrasil.Test.RedisCli
  #
  # plus its own tests; the peer module speaks to the server the way an
  # independent program would (see the callbacks below). Every test has its
  # own namespace (so its own client, read from its own config) and its own
  # channel names; a test that stops or kills a server starts one of its own.
  # Servers are stopped by pid when the test or module ends, also on failure
  # (Yggdrasil.Test.BrokerServer's on_exit and guard).
  #
  #     use Yggdrasil.Test.BrokerCase, peer: Yggdrasil.Test.RedisCli, tls: true
  #
  # runs the same scenarios against TLS servers (`tls:` as for
  # BrokerServer.start!/2): every server a scenario starts, or restarts, is in
  # that mode, the namespaces get its TLS settings (BrokerServer.config/1),
  # and the peer speaks TLS too. The context has `tls:` (false or the option).
  # `moduletag: [...]` adds module tags (they must be set before the shared
  # tests are defined, so a `@moduletag` after the `use` would not reach them).

  import ExUnit.Assertions
  import Yggdrasil.Test.Helpers, only: [broker_senders: 0, eventually: 3, forward_all: 1]

  alias Yggdrasil.Test.BrokerServer

  @typedoc "What a peer's subscribe!/2 returns, passed back to messages!/2 and stop/1."
  @type handle :: term()

  @doc "The broker (`:redis`, `:postgres`, `:rabbitmq`)."
  @callback broker() :: atom()
  @doc "A fresh channel name for this broker, made from `prefix`."
  @callback name(server :: BrokerServer.t(), prefix :: String.t()) :: term()
  @doc "Publishes exact bytes on `name`, as an independent client."
  @callback publish!(server :: BrokerServer.t(), name :: term(), payload :: binary()) :: term()
  @doc "Subscribes to `name` as an independent client, once the server confirmed."
  @callback subscribe!(server :: BrokerServer.t(), name :: term()) :: handle()
  @doc "The next `n` payloads the independent subscriber received, exact bytes."
  @callback messages!(handle(), n :: pos_integer()) :: {[binary()], handle()}
  @doc "Stops the independent subscriber."
  @callback stop(handle()) :: :ok
  @doc "The `metadata` of an event published on `name` by `publish!/3`."
  @callback metadata(name :: term()) :: term()
  @doc "Payloads the broker carries byte for byte."
  @callback payloads() :: [binary()]
  @doc "Names the broker cannot take."
  @callback bad_names() :: [term()]
  @doc "The server's client connections, except the one asking."
  @callback clients!(server :: BrokerServer.t()) :: [term()]

  @wait 15_000

  @doc false
  def wait, do: @wait

  @doc "Payloads of text (UTF-8, no NUL): spaces, newlines, quotes, non-ASCII, empty."
  def text_payloads do
    [
      "with some spaces",
      "two\nlines\r\nand a trailing newline\n",
      "UTF-8: héllo wörld ✓ 🌳 日本",
      ~S(quotes ' " and \ backslashes),
      ""
    ]
  end

  @doc "`text_payloads/0` plus NUL bytes and bytes that are not UTF-8."
  def byte_payloads,
    do: text_payloads() ++ [<<0>>, <<"nul", 0, "inside", 0>>, <<255, 254, 0, 128>>]

  defmacro __using__(opts) do
    peer = Keyword.fetch!(opts, :peer)
    tls = Keyword.get(opts, :tls, false)
    moduletags = List.wrap(Keyword.get(opts, :moduletag, []))

    quote location: :keep do
      use ExUnit.Case, async: false

      import Yggdrasil.Test.BrokerCase

      @peer unquote(peer)
      @tls unquote(tls)

      @moduletag :brokers
      @moduletag @peer.broker()
      @moduletag :capture_log
      @moduletag timeout: 300_000
      for tag <- unquote(moduletags), do: @moduletag(tag)

      setup_all do
        %{server: BrokerServer.start!(@peer.broker(), tls: @tls), peer: @peer, tls: @tls}
      end

      describe "common: connection state and events" do
        test "connected, an event from the broker's CLI, disconnected on unsubscribe", ctx do
          scenario_basic(ctx)
        end

        test "payloads arrive byte for byte from the broker's CLI", ctx do
          scenario_payloads_in(ctx)
        end

        test "payloads reach the broker's CLI byte for byte", ctx do
          scenario_payloads_out(ctx)
        end

        test(":json across the broker, both ways", ctx, do: scenario_json(ctx))

        test "JSON that does not decode: logged, dropped, the next event arrives", ctx do
          scenario_json_undecodable(ctx)
        end

        test "a transformer of the user's: events decoded in the channel's process", ctx do
          scenario_user_transformer(ctx)
        end

        test ":default with a non-binary message: an error that says what to do", ctx do
          scenario_default_non_binary(ctx)
        end
      end

      describe "common: configuration" do
        test("a namespace selects another server", ctx, do: scenario_other_server(ctx))

        test "an environment variable overrides the namespace's config", ctx do
          scenario_env_override(ctx)
        end

        test "a bad setting: {:error, _} naming it, from subscribe and publish", ctx do
          scenario_bad_setting(ctx)
        end
      end

      describe "common: faults" do
        test "server killed: every subscriber disconnected; back on its port: connected again, no new subscribe",
             ctx do
          scenario_kill_and_back(ctx)
        end

        test "a wide channel: each of its 300 subscribers gets events and notices in order, across a restart",
             ctx do
          scenario_wide(ctx)
        end

        test "an unreachable server: subscribe :ok, no :Y_CONNECTED, publish {:error, _}, a warning",
             ctx do
          scenario_unreachable(ctx)
        end

        test "a killed adapter process leaves no broker subscription behind", ctx do
          scenario_killed_adapter(ctx)
        end

        test "bad names: {:error, _} from subscribe and publish, nothing started", ctx do
          scenario_bad_names(ctx)
        end
      end

      describe "common: load and leaks" do
        test "4 concurrent publishers x 20 subscribers: exactly once, in per-publisher order",
             ctx do
          scenario_load(ctx)
        end

        test "big and small messages interleaved arrive in the order they were published",
             ctx do
          scenario_sizes_in_order(ctx)
        end

        test "nothing is left after the last channel and publisher go", ctx do
          scenario_leaks(ctx)
        end

        test "a publisher's mailbox backlog is not scanned by its publishes", ctx do
          scenario_publisher_backlog(ctx)
        end

        test "a `use Yggdrasil` subscriber sees connect, event and disconnect across a restart",
             ctx do
          scenario_behaviour(ctx)
        end
      end
    end
  end

  ## Helpers for the scenarios and the brokers' own tests

  @doc "A fresh namespace whose settings reach `port` (fast reconnects for the tests)."
  def configure(peer, server_or_port, extra \\ []) do
    namespace = namespace()
    base = settings(peer, server_or_port)
    put_settings(peer, namespace, Keyword.merge(base, [backoff_max: 300] ++ extra))
    namespace
  end

  @doc "Sets `config :yggdrasil, namespace, <broker>: settings` for this test."
  def put_settings(peer, namespace, settings) do
    Application.put_env(:yggdrasil, namespace, [{peer.broker(), settings}])
    ExUnit.Callbacks.on_exit(fn -> Application.delete_env(:yggdrasil, namespace) end)
  end

  defp settings(_peer, %BrokerServer{} = server), do: BrokerServer.config(server)

  # A port where nothing may listen: a server's settings with that port.
  defp settings(peer, port) when is_integer(port),
    do: BrokerServer.config(%BrokerServer{kind: peer.broker(), port: port})

  @doc """
  A server of the test's broker, in the test's TLS mode (`ctx.tls`),
  stopped when the test ends.
  """
  def start_server!(%{peer: peer} = ctx), do: BrokerServer.start!(peer.broker(), tls: ctx[:tls])

  @doc """
  `server` as if it listened on a port where nothing listens: its settings
  (TLS ones included) with that port.
  """
  def unreachable(%BrokerServer{} = server), do: %{server | port: free_port(), os_pid: nil}

  @doc "A module name unique to this call, as a namespace."
  def namespace, do: Module.concat(__MODULE__, "Ns#{System.unique_integer([:positive])}")

  @doc "The complete channel."
  def channel(peer, namespace, name, extra \\ []) do
    {:ok, channel} =
      Yggdrasil.gen_channel([name: name, adapter: peer.broker(), namespace: namespace] ++ extra)

    channel
  end

  @doc "Subscribes the caller and waits for `:Y_CONNECTED`."
  def subscribe!(channel) do
    assert :ok = Yggdrasil.subscribe(channel)
    assert_receive {:Y_CONNECTED, ^channel}, @wait
    channel
  end

  @doc "The channel an event published on `name` by the peer arrives with."
  def event_channel(peer, channel, name \\ nil),
    do: %{channel | metadata: peer.metadata(name || channel.name)}

  @doc "A port where nothing listens."
  def free_port do
    {out, 0} = System.cmd(BrokerServer.ctl(), ["free-port"])
    out |> String.trim() |> String.to_integer()
  end

  @doc "A process subscribed to `channel` that forwards what it gets to the caller."
  def forwarder(channel) do
    parent = self()

    pid =
      spawn_link(fn ->
        :ok = Yggdrasil.subscribe(channel)
        forward_all(parent)
      end)

    assert_receive {:forwarded, ^pid, {:Y_CONNECTED, ^channel}}, @wait
    pid
  end

  ## Scenarios

  @doc false
  def scenario_basic(%{server: server, peer: peer}) do
    namespace = configure(peer, server)
    channel = subscribe!(channel(peer, namespace, peer.name(server, "basic")))

    # A :default channel's events skip its process (`direct.rs` in the NIF):
    # they arrive while it is suspended.
    adapter = Yggdrasil.Subscriber.Generator.whereis(channel)
    :ok = :sys.suspend(adapter)
    peer.publish!(server, channel.name, "hello")
    expected = event_channel(peer, channel)
    assert_receive {:Y_EVENT, ^expected, "hello"}, @wait
    :ok = :sys.resume(adapter)

    assert :ok = Yggdrasil.unsubscribe(channel)
    assert_receive {:Y_DISCONNECTED, ^channel}, @wait

    eventually(
      fn ->
        match?(%{topics: 0, subscriptions: 0}, Yggdrasil.Broker.stats(peer.broker(), namespace))
      end,
      "the broker-level subscription gone with the last subscriber",
      @wait
    )
  end

  @doc false
  def scenario_payloads_in(%{server: server, peer: peer}) do
    namespace = configure(peer, server)
    channel = subscribe!(channel(peer, namespace, peer.name(server, "bytes_in")))
    expected = event_channel(peer, channel)

    for payload <- peer.payloads() do
      peer.publish!(server, channel.name, payload)
      assert_receive {:Y_EVENT, ^expected, ^payload}, @wait
    end
  end

  @doc false
  def scenario_payloads_out(%{server: server, peer: peer}) do
    namespace = configure(peer, server)
    name = peer.name(server, "bytes_out")
    handle = peer.subscribe!(server, name)

    try do
      for payload <- peer.payloads(),
          do: assert(:ok = Yggdrasil.publish(channel(peer, namespace, name), payload))

      assert {received, _} = peer.messages!(handle, length(peer.payloads()))
      assert received == peer.payloads()
    after
      peer.stop(handle)
    end
  end

  @doc false
  def scenario_json(%{server: server, peer: peer}) do
    namespace = configure(peer, server)
    name = peer.name(server, "json")
    channel = subscribe!(channel(peer, namespace, name, transformer: :json))
    handle = peer.subscribe!(server, name)

    try do
      peer.publish!(server, name, ~S({"a":[1,2],"b":"é"}))
      expected = event_channel(peer, channel)
      assert_receive {:Y_EVENT, ^expected, %{"a" => [1, 2], "b" => "é"}}, @wait

      assert :ok = Yggdrasil.publish(channel, %{"hello" => "world"})
      assert_receive {:Y_EVENT, %{name: ^name}, %{"hello" => "world"}}, @wait

      assert {[~S({"a":[1,2],"b":"é"}), ~S({"hello":"world"})], _} = peer.messages!(handle, 2)
    after
      peer.stop(handle)
    end
  end

  @doc false
  def scenario_json_undecodable(%{server: server, peer: peer}) do
    namespace = configure(peer, server)
    name = peer.name(server, "json_bad")
    subscribe!(channel(peer, namespace, name, transformer: :json))

    log =
      ExUnit.CaptureLog.capture_log(fn ->
        peer.publish!(server, name, "{oops")
        peer.publish!(server, name, ~S({"after":true}))
        assert_receive {:Y_EVENT, %{name: ^name}, %{"after" => true}}, @wait
      end)

    assert log =~ "cannot decode"
    refute_received {:Y_EVENT, _, _}
  end

  defmodule Reverse do
    @moduledoc false
    # A transformer of the user's: its channels keep the process path.
    use Yggdrasil.Transformer, name: :broker_case_reverse

    @impl Yggdrasil.Transformer
    def decode(_channel, text) when is_binary(text), do: {:ok, {:reversed, String.reverse(text)}}

    @impl Yggdrasil.Transformer
    def encode(_channel, text) when is_binary(text), do: {:ok, String.reverse(text)}
  end

  @doc false
  def scenario_user_transformer(%{server: server, peer: peer}) do
    namespace = configure(peer, server)
    name = peer.name(server, "reversed")
    :ok = Reverse.register()
    channel = subscribe!(channel(peer, namespace, name, transformer: Reverse))

    # Decoded in the channel's process: nothing while it is suspended.
    adapter = Yggdrasil.Subscriber.Generator.whereis(channel)
    :ok = :sys.suspend(adapter)
    peer.publish!(server, name, "abc")
    refute_receive {:Y_EVENT, _, _}, 300
    :ok = :sys.resume(adapter)
    expected = event_channel(peer, channel)
    assert_receive {:Y_EVENT, ^expected, {:reversed, "cba"}}, @wait

    assert :ok = Yggdrasil.publish(channel, "xyz")
    assert_receive {:Y_EVENT, %{name: ^name}, {:reversed, "xyz"}}, @wait

    assert :ok = Yggdrasil.unsubscribe(channel)
    assert_receive {:Y_DISCONNECTED, ^channel}, @wait
  end

  @doc false
  def scenario_default_non_binary(%{server: server, peer: peer}) do
    namespace = configure(peer, server)
    channel = subscribe!(channel(peer, namespace, peer.name(server, "default")))

    for message <- [%{"a" => 1}, :atom, 42, ["list"]] do
      assert {:error, reason} = Yggdrasil.publish(channel, message)
      assert reason =~ ":json"
    end

    refute_received {:Y_EVENT, _, _}
  end

  @doc false
  def scenario_other_server(%{server: server, peer: peer} = ctx) do
    other = start_server!(ctx)
    here = configure(peer, server)
    there = configure(peer, other)
    name = peer.name(server, "where")
    channel_here = subscribe!(channel(peer, here, name))
    channel_there = subscribe!(channel(peer, there, name))

    peer.publish!(other, name, "on the other server")
    expected = event_channel(peer, channel_there)
    assert_receive {:Y_EVENT, ^expected, "on the other server"}, @wait

    peer.publish!(server, name, "on the first server")
    expected = event_channel(peer, channel_here)
    assert_receive {:Y_EVENT, ^expected, "on the first server"}, @wait

    refute_received {:Y_EVENT, %{namespace: ^here}, "on the other server"}
    refute_received {:Y_EVENT, %{namespace: ^there}, "on the first server"}
  end

  @doc false
  def scenario_env_override(%{server: server, peer: peer}) do
    # The config names a port where nothing listens; the variable fixes it.
    namespace = configure(peer, unreachable(server))
    broker = peer.broker() |> Atom.to_string() |> String.upcase()
    variable = Yggdrasil.Config.env_prefix(namespace) <> "YGGDRASIL_#{broker}_PORT"
    System.put_env(variable, Integer.to_string(server.port))
    ExUnit.Callbacks.on_exit(fn -> System.delete_env(variable) end)

    channel = subscribe!(channel(peer, namespace, peer.name(server, "env")))
    assert :ok = Yggdrasil.publish(channel, "via the variable")
    assert_receive {:Y_EVENT, %{name: name}, "via the variable"}, @wait
    assert name == channel.name
  end

  @doc false
  def scenario_bad_setting(%{server: server, peer: peer}) do
    namespace = namespace()
    put_settings(peer, namespace, port: :six)
    channel = channel(peer, namespace, peer.name(server, "bad_setting"))

    assert {:error, reason} = Yggdrasil.subscribe(channel)
    assert reason =~ "port"
    assert {:error, ^reason} = Yggdrasil.publish(channel, "x")
    assert Yggdrasil.Subscriber.Generator.status(channel) == nil
  end

  @doc false
  def scenario_kill_and_back(%{peer: peer} = ctx) do
    # start_again! restarts it in the same (TLS) mode.
    server = start_server!(ctx)
    namespace = configure(peer, server)
    channels = for i <- 1..3, do: channel(peer, namespace, peer.name(server, "fault#{i}"))
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
      peer.publish!(server, channel.name, "after the restart")
      expected = event_channel(peer, channel)
      assert_receive {:Y_EVENT, ^expected, "after the restart"}, @wait
    end

    expected = event_channel(peer, first)

    for pid <- helpers,
        do: assert_receive({:forwarded, ^pid, {:Y_EVENT, ^expected, "after the restart"}}, @wait)

    # The publishing side comes back too.
    assert :ok = Yggdrasil.publish(first, "published again")
    assert_receive {:Y_EVENT, %{name: name}, "published again"}, @wait
    assert name == first.name
  end

  @doc false
  # Wide enough (256 subscribers, `direct.rs`) for the channel's events and
  # notices to be sent by the broker senders, one process per scheduler,
  # each with its share of the subscribers. With `kill_senders: true` they
  # are killed between two rounds of events: the delivery thread sends
  # their shares itself until they are back, and since a killed sender's
  # mailbox may have held events, every subscriber is told of a gap first.
  def scenario_wide(%{peer: peer} = ctx, opts \\ []) do
    server = start_server!(ctx)
    namespace = configure(peer, server)
    channel = channel(peer, namespace, peer.name(server, "wide"))
    subscribers = for _ <- 1..300, do: forwarder(channel)
    event = event_channel(peer, channel)
    events = fn range -> for i <- range, do: {:Y_EVENT, event, "#{i}"} end

    publish = fn range ->
      for i <- range, do: assert(:ok = Yggdrasil.publish(channel, "#{i}"))
    end

    # Each subscriber's next messages, in order: a message out of order
    # fails here, not just a missing one.
    expect = fn messages ->
      for pid <- subscribers, message <- messages do
        assert_receive {:forwarded, ^pid, got}, @wait
        assert got == message
      end
    end

    publish.(1..50)
    expect.(events.(1..50))

    told =
      if opts[:kill_senders] do
        kill_senders!(broker_senders())
        [{:Y_DISCONNECTED, channel}, {:Y_CONNECTED, channel}]
      else
        []
      end

    publish.(51..100)
    server = BrokerServer.kill!(server)
    expect.(told ++ events.(51..100) ++ [{:Y_DISCONNECTED, channel}])
    BrokerServer.start_again!(server)
    expect.([{:Y_CONNECTED, channel}])
    publish.(101..150)
    expect.(events.(101..150))
  end

  @doc """
  Kills the broker senders `senders` and returns once they are down and
  restarted: else the next events could go to a sender about to die, lost
  and told only before the events after them.
  """
  def kill_senders!(senders) do
    for sender <- senders do
      dead = Process.monitor(sender)
      Process.exit(sender, :kill)
      assert_receive {:DOWN, ^dead, _, _, _}, @wait
    end

    eventually(
      fn -> Enum.all?(broker_senders(), &(is_pid(&1) and &1 not in senders)) end,
      "the senders restarted",
      @wait
    )
  end

  @doc false
  def scenario_unreachable(%{server: server, peer: peer}) do
    namespace = configure(peer, unreachable(server), publish_timeout: 500)
    channel = channel(peer, namespace, peer.name(server, "unreachable"))

    log =
      ExUnit.CaptureLog.capture_log(fn ->
        assert :ok = Yggdrasil.subscribe(channel)
        assert {:error, reason} = Yggdrasil.publish(channel, "nobody hears this")
        assert is_binary(reason)
        refute_receive {:Y_CONNECTED, _}, 1_000
      end)

    assert log =~ "cannot connect to #{peer.broker()}"
    assert log =~ inspect(namespace)
  end

  @doc false
  def scenario_killed_adapter(%{server: server, peer: peer}) do
    namespace = configure(peer, server)
    channel = subscribe!(channel(peer, namespace, peer.name(server, "killed")))
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
      fn ->
        match?(
          %{subscriptions: 1, monitored: 1},
          Yggdrasil.Broker.stats(peer.broker(), namespace)
        )
      end,
      "one subscription, one monitored process",
      @wait
    )

    peer.publish!(server, channel.name, "once")
    expected = event_channel(peer, channel)
    assert_receive {:Y_EVENT, ^expected, "once"}, @wait
    refute_receive {:Y_EVENT, _, "once"}, 500
  end

  @doc false
  def scenario_bad_names(%{server: server, peer: peer}) do
    namespace = configure(peer, server)

    for name <- peer.bad_names() do
      channel = channel(peer, namespace, name)
      assert {:error, reason} = Yggdrasil.subscribe(channel), inspect(name)
      assert is_binary(reason)
      assert {:error, _} = Yggdrasil.publish(channel, "x")
      assert Yggdrasil.subscriber_count(channel) == 0
      assert Yggdrasil.Subscriber.Generator.status(channel) == nil
    end

    assert %{subscriptions: 0, monitored: 0} = Yggdrasil.Broker.stats(peer.broker(), namespace)
    refute_received {:Y_CONNECTED, _}
  end

  @doc false
  def scenario_load(%{server: server, peer: peer}) do
    namespace = configure(peer, server)
    channel = channel(peer, namespace, peer.name(server, "load"))
    per_publisher_order!(channel, 20, 100, fn publisher, seq -> "#{publisher}:#{seq}" end)
  end

  # A narrow channel's small messages may be sent by the broker runtime itself
  # while bigger ones wait for the delivery thread: none may overtake another.
  # Four publishers at once, so that messages reach the broker client back to back.
  @doc false
  def scenario_sizes_in_order(%{server: server, peer: peer}) do
    namespace = configure(peer, server)
    channel = channel(peer, namespace, peer.name(server, "sizes"))

    # Every third message over 4 KB (PostgreSQL takes up to 8,000 bytes).
    per_publisher_order!(channel, 3, 60, fn publisher, seq ->
      padding = String.duplicate("x", if(rem(seq, 3) == 0, do: 6_000, else: 8))
      "#{publisher}:#{seq}:" <> padding
    end)
  end

  # A publish waits for its reply in a `receive`: one that matched every
  # message already in the publisher's mailbox cost a reduction each, a
  # backlog's worth per publish.
  def scenario_publisher_backlog(%{server: server, peer: peer}) do
    namespace = configure(peer, server)
    channel = channel(peer, namespace, peer.name(server, "backlog"))
    backlog = 20_000

    task =
      Task.async(fn ->
        :ok = Yggdrasil.publish(channel, "the connection is up")
        for i <- 1..backlog, do: send(self(), {:noise, i})
        {:reductions, before} = Process.info(self(), :reductions)
        for _ <- 1..10, do: :ok = Yggdrasil.publish(channel, "past the backlog")
        {:reductions, later} = Process.info(self(), :reductions)
        {later - before, Process.info(self(), :message_queue_len)}
      end)

    {reductions, {:message_queue_len, left}} = Task.await(task, @wait)
    assert left == backlog
    assert reductions < backlog, "10 publishes took #{reductions} reductions"
  end

  # `subscribers` processes on `channel`, 4 concurrent publishers of
  # `per_publisher` messages each (`payload.(publisher, seq)`, starting
  # "publisher:seq:"): every subscriber gets each message exactly once, each
  # publisher's in order.
  defp per_publisher_order!(channel, subscribers, per_publisher, payload) do
    total = 4 * per_publisher
    parent = self()

    pids =
      for _ <- 1..subscribers do
        spawn_link(fn ->
          :ok = Yggdrasil.subscribe(channel)

          receive do
            {:Y_CONNECTED, _} -> send(parent, {:ready, self()})
          end

          send(parent, {:received, self(), collect(total, [])})
        end)
      end

    for pid <- pids, do: assert_receive({:ready, ^pid}, @wait)

    1..4
    |> Enum.map(fn publisher ->
      Task.async(fn ->
        for seq <- 1..per_publisher,
            do: :ok = Yggdrasil.publish(channel, payload.(publisher, seq))
      end)
    end)
    |> Task.await_many(120_000)

    for pid <- pids do
      assert_receive {:received, ^pid, messages}, 60_000
      assert length(messages) == total

      by_publisher =
        messages
        |> Enum.map(&String.split(&1, ":"))
        |> Enum.group_by(&hd/1, &(&1 |> Enum.at(1) |> String.to_integer()))

      assert by_publisher |> Map.keys() |> Enum.sort() == ["1", "2", "3", "4"]
      for {_, seqs} <- by_publisher, do: assert(seqs == Enum.to_list(1..per_publisher))
    end
  end

  # `n` events, then nothing more (exactly once).
  defp collect(0, acc) do
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

  @doc false
  def scenario_leaks(%{peer: peer} = ctx) do
    # A server of its own: its client list shows this namespace's connections only.
    server = start_server!(ctx)
    namespace = configure(peer, server, idle_timeout: 300)
    channels = for i <- 1..5, do: channel(peer, namespace, peer.name(server, "leak#{i}"))

    for channel <- channels do
      subscribe!(channel)
      assert :ok = Yggdrasil.publish(channel, "x")
      assert_receive {:Y_EVENT, _, "x"}, @wait
    end

    assert :ok =
             Yggdrasil.publish(channel(peer, namespace, peer.name(server, "publish_only")), "y")

    assert %{topics: 5, subscriptions: 5, monitored: 5} =
             Yggdrasil.Broker.stats(peer.broker(), namespace)

    assert peer.clients!(server) != []
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
        match?(
          %{connections: 0, tasks: 0, topics: 0, subscriptions: 0, monitored: 0, queued: 0},
          Yggdrasil.Broker.stats(peer.broker(), namespace)
        )
      end,
      "no connection, task or subscription in the client",
      @wait
    )

    eventually(fn -> peer.clients!(server) == [] end, "no client left on the server", @wait)
  end

  @doc false
  def scenario_behaviour(%{peer: peer} = ctx) do
    server = start_server!(ctx)
    namespace = configure(peer, server)
    channel = channel(peer, namespace, peer.name(server, "behaviour"))
    {:ok, pid} = Yggdrasil.start_link(__MODULE__.Watcher, {channel, self()})
    assert_receive {:watcher, :connect, ^channel}, @wait

    peer.publish!(server, channel.name, "before")
    expected = event_channel(peer, channel)
    assert_receive {:watcher, :event, ^expected, "before"}, @wait

    server = BrokerServer.restart!(server)
    assert_receive {:watcher, :disconnect, ^channel}, @wait
    assert_receive {:watcher, :connect, ^channel}, @wait

    peer.publish!(server, channel.name, "after")
    assert_receive {:watcher, :event, ^expected, "after"}, @wait
    Yggdrasil.stop(pid)
  end

  defmodule Watcher do
    @moduledoc false
    # A `use Yggdrasil` subscriber that reports every callback.
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
end
