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
end
