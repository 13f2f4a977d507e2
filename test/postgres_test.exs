defmodule Yggdrasil.PostgresTest do
  # The :postgres adapter against private PostgreSQL clusters, psql on the
  # other side: the scenarios every broker passes (Yggdrasil.Test.BrokerCase)
  # and what is particular to LISTEN/NOTIFY.
  use Yggdrasil.Test.BrokerCase, peer: Yggdrasil.Test.Psql

  alias Yggdrasil.Test.Psql

  @wait Yggdrasil.Test.BrokerCase.wait()

  describe "postgres" do
    test "names with upper case, spaces and quotes, both ways", %{server: server} do
      namespace = configure(Psql, server)

      for name <- [~s(Orders "Ünïcode" it's), "UPPER lower", "   "] do
        channel = subscribe!(channel(Psql, namespace, name))
        listener = Psql.subscribe!(server, name)

        try do
          Psql.publish!(server, name, "from psql")
          expected = event_channel(Psql, channel)
          assert_receive {:Y_EVENT, ^expected, "from psql"}, @wait

          assert :ok = Yggdrasil.publish(channel, "from us")
          assert_receive {:Y_EVENT, ^expected, "from us"}, @wait
          assert {["from psql", "from us"], _} = Psql.messages!(listener, 2)
        after
          Psql.stop(listener)
        end
      end
    end

    test "a 64-byte name and an 8000-byte payload are refused, 63 and 7999 pass", %{
      server: server
    } do
      namespace = configure(Psql, server)
      long = channel(Psql, namespace, String.duplicate("n", 64))
      assert {:error, reason} = Yggdrasil.subscribe(long)
      assert reason =~ "63"
      assert {:error, _} = Yggdrasil.publish(long, "x")

      channel = subscribe!(channel(Psql, namespace, String.duplicate("n", 63)))
      assert {:error, reason} = Yggdrasil.publish(channel, String.duplicate("p", 8000))
      assert reason =~ "8000"
      assert {:error, _} = Yggdrasil.publish(channel, <<"not UTF-8: ", 255>>)

      fits = String.duplicate("p", 7999)
      assert :ok = Yggdrasil.publish(channel, fits)
      assert_receive {:Y_EVENT, _, ^fits}, @wait
      refute_received {:Y_EVENT, _, _}
    end

    test "a NOTIFY in a transaction arrives after COMMIT, not at all after ROLLBACK", %{
      server: server
    } do
      namespace = configure(Psql, server)
      name = Psql.name(server, "tx")
      channel = subscribe!(channel(Psql, namespace, name))
      expected = event_channel(Psql, channel)
      session = Psql.session!(server)

      try do
        session = Psql.run!(session, "BEGIN; NOTIFY #{Psql.identifier(name)}, 'committed';")

        refute_receive {:Y_EVENT, _, _}, 1_000
        session = Psql.run!(session, "COMMIT;")
        assert_receive {:Y_EVENT, ^expected, "committed"}, @wait

        session =
          Psql.run!(session, "BEGIN; NOTIFY #{Psql.identifier(name)}, 'rolled back'; ROLLBACK;")

        # One sender's notifications arrive in order: once "after" is here,
        # the rolled-back one would have been too.
        Psql.run!(session, "NOTIFY #{Psql.identifier(name)}, 'after';")
        assert_receive {:Y_EVENT, ^expected, "after"}, @wait
        refute_received {:Y_EVENT, _, "rolled back"}
      after
        Psql.stop(session)
      end
    end
  end
end
