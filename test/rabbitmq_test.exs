defmodule Yggdrasil.RabbitMQTest do
  # The :rabbitmq adapter against private RabbitMQ nodes, amqp-tools on the
  # other side: the scenarios every broker passes (Yggdrasil.Test.BrokerCase)
  # and what is particular to AMQP.
  use Yggdrasil.Test.BrokerCase, peer: Yggdrasil.Test.AmqpTools

  import ExUnit.CaptureLog

  alias Yggdrasil.Test.AmqpTools

  @wait Yggdrasil.Test.BrokerCase.wait()

  describe "rabbitmq" do
    test "topic patterns: * matches one word, # any number; metadata.routing_key", %{
      server: server
    } do
      namespace = configure(AmqpTools, server)
      {exchange, prefix} = AmqpTools.name(server, "orders")
      one = subscribe!(channel(AmqpTools, namespace, {exchange, prefix <> ".*"}))
      any = subscribe!(channel(AmqpTools, namespace, {exchange, prefix <> ".#"}))

      AmqpTools.publish!(server, {exchange, prefix <> ".new"}, "new")
      AmqpTools.publish!(server, {exchange, prefix <> ".eu.paid"}, "paid")

      new = {exchange, prefix <> ".new"}
      paid = {exchange, prefix <> ".eu.paid"}
      expected_one = event_channel(AmqpTools, one, new)
      expected_any_new = event_channel(AmqpTools, any, new)
      expected_any_paid = event_channel(AmqpTools, any, paid)
      assert_receive {:Y_EVENT, ^expected_one, "new"}, @wait
      assert_receive {:Y_EVENT, ^expected_any_new, "new"}, @wait
      assert_receive {:Y_EVENT, ^expected_any_paid, "paid"}, @wait

      one_name = one.name
      refute_receive {:Y_EVENT, %{name: ^one_name}, "paid"}, 500
    end

    test "properties both ways: headers and content type in, message_id and headers out", %{
      server: server
    } do
      namespace = configure(AmqpTools, server)
      name = AmqpTools.name(server, "props")
      channel = subscribe!(channel(AmqpTools, namespace, name))
      consumer = AmqpTools.subscribe!(server, name)

      try do
        AmqpTools.publish!(server, name, "with headers", [
          "-H",
          "origin: amqp-publish",
          "-C",
          "text/plain"
        ])

        assert_receive {:Y_EVENT, %{metadata: metadata}, "with headers"}, @wait
        assert metadata.routing_key == elem(name, 1)
        assert metadata.headers == %{"origin" => "amqp-publish"}

        assert :ok =
                 Yggdrasil.publish(channel, "with properties",
                   message_id: "m-1",
                   content_type: "text/plain",
                   persistent: true,
                   headers: %{"count" => 3, "ratio" => 0.5, "ok" => true, tag: "x"}
                 )

        assert_receive {:Y_EVENT, %{metadata: metadata}, "with properties"}, @wait
        assert metadata.message_id == "m-1"

        assert metadata.headers == %{
                 "count" => 3,
                 "ratio" => 0.5,
                 "ok" => true,
                 "tag" => "x"
               }

        # amqp-consume shows bodies only.
        assert {["with headers", "with properties"], _} = AmqpTools.messages!(consumer, 2)

        assert {:error, reason} = Yggdrasil.publish(channel, "x", no_such_property: 1)
        assert reason =~ "no_such_property"
        assert {:error, _} = Yggdrasil.publish(channel, "x", headers: %{"k" => self()})
        # Refused before they are read whole: an improper list, and one far too long.
        assert {:error, improper} = Yggdrasil.publish(channel, "x", headers: %{"k" => [1 | 2]})
        assert improper =~ "improper list"
        long = Enum.to_list(1..1_000_000)
        assert {:error, too_many} = Yggdrasil.publish(channel, "x", headers: %{"k" => long})
        assert too_many =~ "more than 4096 items"
      after
        AmqpTools.stop(consumer)
      end
    end

    test "a missing exchange: subscribe :ok, a warning, retried until it exists; others unaffected",
         %{server: server} do
      namespace = configure(AmqpTools, server)
      missing = "missing.#{System.unique_integer([:positive])}"
      waiting = channel(AmqpTools, namespace, {missing, "key"})

      log =
        capture_log(fn ->
          assert :ok = Yggdrasil.subscribe(waiting)
          refute_receive {:Y_CONNECTED, _}, 1_500
        end)

      assert log =~ "NOT_FOUND"
      assert log =~ missing

      # The connection and the other channels keep working meanwhile.
      working = subscribe!(channel(AmqpTools, namespace, AmqpTools.name(server, "working")))
      AmqpTools.publish!(server, working.name, "still here")
      assert_receive {:Y_EVENT, %{name: name}, "still here"}, @wait
      assert name == working.name

      AmqpTools.declare_exchange!(server, missing)
      assert_receive {:Y_CONNECTED, ^waiting}, @wait
      AmqpTools.publish!(server, {missing, "key"}, "arrived")
      expected = event_channel(AmqpTools, waiting)
      assert_receive {:Y_EVENT, ^expected, "arrived"}, @wait
    end

    test "a virtual host per namespace", %{server: server} do
      vhost = AmqpTools.add_vhost!(server, "ygg-#{System.unique_integer([:positive])}")
      in_vhost = configure(AmqpTools, server, virtual_host: vhost)
      in_root = configure(AmqpTools, server)
      name = AmqpTools.name(server, "vhost")
      channel_vhost = subscribe!(channel(AmqpTools, in_vhost, name))
      channel_root = subscribe!(channel(AmqpTools, in_root, name))

      AmqpTools.publish!(server, name, "in the vhost", [], vhost)
      expected = event_channel(AmqpTools, channel_vhost)
      assert_receive {:Y_EVENT, ^expected, "in the vhost"}, @wait

      AmqpTools.publish!(server, name, "in /")
      expected = event_channel(AmqpTools, channel_root)
      assert_receive {:Y_EVENT, ^expected, "in /"}, @wait

      refute_received {:Y_EVENT, %{namespace: ^in_root}, "in the vhost"}
      refute_received {:Y_EVENT, %{namespace: ^in_vhost}, "in /"}
    end
  end
end
