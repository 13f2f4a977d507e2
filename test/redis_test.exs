defmodule Yggdrasil.RedisTest do
  # The :redis adapter against private redis-server instances, redis-cli on
  # the other side: the scenarios every broker passes (Yggdrasil.Test.BrokerCase)
  # and what is particular to Redis.
  use Yggdrasil.Test.BrokerCase, peer: Yggdrasil.Test.RedisCli

  alias Yggdrasil.Test.RedisCli

  @wait Yggdrasil.Test.BrokerCase.wait()

  describe "redis" do
    test "a pattern name receives every matching channel, with metadata.channel", %{
      server: server
    } do
      namespace = configure(RedisCli, server)
      prefix = RedisCli.name(server, "orders")
      channel = subscribe!(channel(RedisCli, namespace, prefix <> ".*"))

      RedisCli.publish!(server, prefix <> ".new", "one")
      RedisCli.publish!(server, prefix <> "-other", "not matching")
      RedisCli.publish!(server, prefix <> ".paid", "two")

      new = event_channel(RedisCli, channel, prefix <> ".new")
      paid = event_channel(RedisCli, channel, prefix <> ".paid")
      assert_receive {:Y_EVENT, ^new, "one"}, @wait
      assert_receive {:Y_EVENT, ^paid, "two"}, @wait
      refute_received {:Y_EVENT, _, "not matching"}

      # Our own publish on a matching channel name comes back the same way.
      assert :ok = Yggdrasil.publish(channel(RedisCli, namespace, prefix <> ".sent"), "three")
      sent = event_channel(RedisCli, channel, prefix <> ".sent")
      assert_receive {:Y_EVENT, ^sent, "three"}, @wait
    end

    test "the broker senders killed: a wide channel's events still reach every subscriber, in order",
         ctx do
      scenario_wide(ctx, kill_senders: true)
    end

    test "a sender killed with fan-outs in its mailbox: its subscribers are told of the gap",
         %{server: server} do
      namespace = configure(RedisCli, server)
      channel = channel(RedisCli, namespace, RedisCli.name(server, "lost"))
      subscribers = for _ <- 1..300, do: forwarder(channel)
      event = event_channel(RedisCli, channel)
      publish = fn range -> for i <- range, do: :ok = Yggdrasil.publish(channel, "#{i}") end
      gap = [{:Y_DISCONNECTED, channel}, {:Y_CONNECTED, channel}]

      publish.(1..5)
      first = for i <- 1..5, do: {:Y_EVENT, event, "#{i}"}
      for pid <- subscribers, do: assert(forwarded_until(pid, "5") == first)

      # Its fan-outs of 6..10 wait in its mailbox, and die with it.
      [sender | _] = Yggdrasil.Test.Helpers.broker_senders()
      :ok = :sys.suspend(sender)
      publish.(6..10)
      # The broker's reply comes before the delivery thread hands the event.
      Yggdrasil.Test.Helpers.eventually(
        fn -> Process.info(sender, :message_queue_len) == {:message_queue_len, 5} end,
        "five fan-outs waiting in the sender",
        @wait
      )

      # Told at once by the restarted sender, with no further event.
      kill_senders!([sender])
      all = for i <- 6..10, do: {:Y_EVENT, event, "#{i}"}
      done? = &(&1 in [{:Y_CONNECTED, channel}, List.last(all)])

      # The other sender's subscribers lose nothing and hear of nothing.
      seen =
        for pid <- subscribers do
          case forwarded_through(pid, done?) do
            ^all -> :all
            ^gap -> :told
            got -> flunk("#{inspect(pid)} got #{inspect(got)}")
          end
        end

      assert :told in seen and :all in seen, inspect(Enum.frequencies(seen))

      publish.(11..15)
      kept = for i <- 11..15, do: {:Y_EVENT, event, "#{i}"}
      for pid <- subscribers, do: assert(forwarded_until(pid, "15") == kept)
    end

    test "a payload of several MB (copied on a dirty scheduler)", %{server: server} do
      namespace = configure(RedisCli, server)
      channel = subscribe!(channel(RedisCli, namespace, RedisCli.name(server, "big")))
      payload = :crypto.strong_rand_bytes(3 * 1024 * 1024)
      assert :ok = Yggdrasil.publish(channel, payload)
      expected = event_channel(RedisCli, channel)
      assert_receive {:Y_EVENT, ^expected, ^payload}, @wait
    end

    test "the clients' registry restarting: subscribers come back on fresh clients", %{
      server: server
    } do
      namespace = configure(RedisCli, server)
      channel = subscribe!(channel(RedisCli, namespace, RedisCli.name(server, "registry")))
      %{client: old} = Yggdrasil.Broker.client(:redis, namespace) |> elem(1)

      # Its owners die with it, which closes their clients.
      Yggdrasil.Test.Helpers.kill(Process.whereis(Yggdrasil.Broker))
      assert_receive {:Y_DISCONNECTED, ^channel}, @wait
      assert_receive {:Y_CONNECTED, ^channel}, @wait
      assert {:ok, %{client: new}} = Yggdrasil.Broker.client(:redis, namespace)
      assert new != old

      RedisCli.publish!(server, channel.name, "after")
      expected = event_channel(RedisCli, channel)
      assert_receive {:Y_EVENT, ^expected, "after"}, @wait
      assert :ok = Yggdrasil.publish(channel, "ours")
      assert_receive {:Y_EVENT, ^expected, "ours"}, @wait
    end

    test "PUNSUBSCRIBE once the last subscriber of a pattern left" do
      # Its own server: PUBSUB NUMPAT counts every client's patterns.
      server = Yggdrasil.Test.BrokerServer.start!(:redis)
      namespace = configure(RedisCli, server)
      channel = channel(RedisCli, namespace, RedisCli.name(server, "punsub") <> ".*")
      subscribe!(channel)
      helper = forwarder(channel)
      numpat = fn -> RedisCli.cmd!(server, ["pubsub", "numpat"]) end
      assert numpat.() == "1"

      assert :ok = Yggdrasil.unsubscribe(channel)
      assert numpat.() == "1"
      Process.unlink(helper)
      Process.exit(helper, :kill)

      Yggdrasil.Test.Helpers.eventually(fn -> numpat.() == "0" end, "PUNSUBSCRIBE", @wait)
    end
  end

  # What `pid` forwarded, up to and including the event `last`.
  defp forwarded_until(pid, last), do: forwarded_through(pid, &match?({:Y_EVENT, _, ^last}, &1))

  # What `pid` forwarded, up to the first message `done?` accepts.
  defp forwarded_through(pid, done?, got \\ []) do
    assert_receive {:forwarded, ^pid, message}, @wait
    got = [message | got]
    if done?.(message), do: Enum.reverse(got), else: forwarded_through(pid, done?, got)
  end
end
