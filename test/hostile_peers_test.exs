defmodule Yggdrasil.HostilePeersTest do
  # Fake servers (Yggdrasil.Test.FakeBroker) that complete a valid handshake
  # and subscription and then misbehave: huge declared sizes, negotiated
  # values at their extremes, deep nesting, garbage, silence. The VM must
  # stay up with its memory in bounds, nothing of the garbage may come out
  # as an event, and the adapter must reconnect (to the same fake server,
  # which behaves on every later connection), with warnings logged.
  use ExUnit.Case, async: false

  import Bitwise
  import Yggdrasil.Test.BrokerCase, only: [configure: 3, channel: 3, subscribe!: 1]
  import Yggdrasil.Test.Helpers, only: [eventually: 3, rss: 0]

  alias Yggdrasil.Test.{AmqpTools, FakeBroker, Psql, RedisCli}

  @moduletag :brokers
  @moduletag timeout: 120_000

  # Keepalive pings (redis, postgres) or heartbeats (AMQP) notice silence
  # within ~10 s; reconnecting takes a backoff of at most 300 ms after.
  @wait 30_000
  @max_growth 100 * 1024 * 1024

  # Subscribes through a fake `peer` server whose first connection runs
  # `act` once subscribed; checks the outcome every test shares.
  defp survive(peer, act, opts \\ []) do
    port = FakeBroker.start!(peer.broker(), [act: act] ++ Keyword.take(opts, [:tune, :on]))
    namespace = configure(peer, port, opts[:settings] || [])
    channel = channel(peer, namespace, peer.name(nil, "hostile"))
    rss = rss()

    log =
      ExUnit.CaptureLog.capture_log(fn ->
        if opts[:on] == :accept do
          # Misbehaving before the handshake: never connected, so no
          # disconnect; the attempt is given up, and its socket closed.
          assert :ok = Yggdrasil.subscribe(channel)
          assert_receive {:fake, 1, :closed}, @wait
        else
          subscribe!(channel)
          assert_receive {:fake, 1, :subscribed}, @wait
          assert_receive {:Y_DISCONNECTED, ^channel}, @wait
        end

        assert_receive {:Y_CONNECTED, ^channel}, @wait
        assert_receive {:fake, 2, :subscribed}, @wait
      end)

    refute_received {:Y_EVENT, _, _}
    assert rss() - rss < @max_growth
    assert log =~ ~r/(lost the|cannot connect to) #{peer.broker()}/
    assert :ok = Yggdrasil.unsubscribe(channel)
    log
  end

  defp send_then(bytes, next \\ :continue) do
    fn socket ->
      :ok = :gen_tcp.send(socket, bytes)
      next
    end
  end

  defp silence, do: fn _socket -> :silent end

  describe "redis" do
    @describetag :redis

    test "a bulk string declared 2^40 bytes long" do
      pmessage = [
        "*4\r\n",
        FakeBroker.resp("pmessage"),
        FakeBroker.resp("p"),
        FakeBroker.resp("c")
      ]

      survive(RedisCli, send_then([pmessage, "$#{1 <<< 40}\r\nsome bytes"]))
    end

    test "an array declared 2^40 elements long" do
      survive(RedisCli, send_then("*#{1 <<< 40}\r\n"))
    end

    test "arrays nested a million deep" do
      survive(RedisCli, send_then(String.duplicate("*1\r\n", 1_000_000)))
    end

    test "lengths beyond 64 bits and below zero" do
      survive(RedisCli, send_then("$-9223372036854775808\r\n*99999999999999999999999999\r\n"))
    end

    test "garbage" do
      survive(RedisCli, send_then(<<0, 255, "not RESP at all\r\n", 7, 13, 10>>))
    end

    test "a message for a pattern never subscribed, then garbage" do
      stray = FakeBroker.resp(["pmessage", "never.*", "never.1", "stray"])
      survive(RedisCli, send_then([stray, "%%%\r\n"]))
    end

    test "silence after the subscription" do
      survive(RedisCli, silence())
    end

    test "silence before the handshake" do
      survive(RedisCli, silence(), on: :accept)
    end
  end

  describe "postgres" do
    @describetag :postgres

    test "a message length of 2^31-1" do
      survive(Psql, send_then(<<?A, 0x7FFFFFFF::32>>))
    end

    test "a data row length of 2^32-1" do
      survive(Psql, send_then(<<?D, 0xFFFFFFFF::32>>))
    end

    test "a message length below its own header" do
      survive(Psql, send_then(<<?A, 0::32>>))
    end

    test "garbage" do
      survive(Psql, send_then(:crypto.strong_rand_bytes(64)))
    end

    test "silence after the subscription" do
      survive(Psql, silence())
    end

    test "silence before the handshake" do
      survive(Psql, silence(), on: :accept)
    end
  end

  describe "rabbitmq" do
    @describetag :rabbitmq

    # A frame declared larger than any frame_max we accept.
    @oversized <<1, 0, 1, 0xFFFFFFF0::32>>

    for {what, tune} <- [
          {"frame_max 0 (no limit)", {2047, 0, 0}},
          {"frame_max 2^32-1", {2047, 0xFFFFFFFF, 0}},
          {"channel_max 0 (no limit)", {0, 131_072, 0}},
          {"heartbeat 65535", {2047, 131_072, 65535}}
        ] do
      test "Tune with #{what}, then a frame beyond it" do
        survive(AmqpTools, send_then(@oversized), tune: unquote(Macro.escape(tune)))
      end
    end

    test "Tune with heartbeat 0, then silence (our heartbeat stays)" do
      survive(AmqpTools, silence(), tune: {2047, 131_072, 0}, settings: [heartbeat: 2])
    end

    test "Tune with heartbeat 0 and ours 0, then silence (our keepalive round trip notices)" do
      survive(AmqpTools, silence(), tune: {2047, 131_072, 0}, settings: [heartbeat: 0])
    end

    test "headers of a delivery nested 20,000 tables deep (within frame_max)" do
      act = fn socket ->
        headers = FakeBroker.table([{"h", FakeBroker.nested_table(20_000)}])
        :ok = :gen_tcp.send(socket, FakeBroker.amqp_delivery(1, headers))
        :continue
      end

      survive(AmqpTools, act)
    end

    test "a delivery declaring a body of 2^40 bytes" do
      act = fn socket ->
        :ok = :gen_tcp.send(socket, FakeBroker.amqp_delivery(1 <<< 40))
        :ok = :gen_tcp.send(socket, FakeBroker.amqp_frame(3, 1, :binary.copy("x", 100_000)))
        :continue
      end

      survive(AmqpTools, act)
    end

    test "garbage" do
      survive(AmqpTools, send_then(<<"garbage", 0, 0, 0, 0, 0, 0, 0, 0, 0xCE>>))
    end

    test "silence before the handshake ends the attempt's socket and thread" do
      threads = FakeBroker.threads("lapin-io-loop")
      survive(AmqpTools, silence(), on: :accept)
      # The given-up attempt's I/O thread ended; the live connection keeps one.
      eventually(
        fn -> FakeBroker.threads("lapin-io-loop") <= threads + 1 end,
        "lapin threads",
        10_000
      )
    end
  end
end
