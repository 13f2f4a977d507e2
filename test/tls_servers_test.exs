defmodule Yggdrasil.TlsServersTest do
  # The TLS modes of the private broker servers (test/brokers/ctl.sh,
  # certs.sh, Yggdrasil.Test.BrokerServer), proven with each broker's own
  # CLI clients alone: our adapters are tested against these servers
  # elsewhere (tls_adapter_test.exs, *_tls_test.exs). Bytes pass both ways
  # between two CLI clients over TLS; plaintext to the TLS port, another
  # CA's cert, a cert for another name and a missing client cert are refused.
  use ExUnit.Case, async: false

  alias Yggdrasil.Test.{AmqpTools, BrokerServer, Psql, RedisCli}

  @moduletag :brokers
  @moduletag timeout: 300_000
  if System.get_env("YGG_SKIP_BROKERS") == "1", do: @moduletag(skip: "YGG_SKIP_BROKERS=1")

  test "the certs: a CA, its server, client and wrong-name certs, another CA's server cert" do
    certs = BrokerServer.certs()
    assert BrokerServer.certs() == certs
    dir = certs.dir

    verify = fn ca, cert, extra ->
      System.cmd("openssl", ["verify", "-CAfile", ca | extra] ++ [Path.join(dir, cert)],
        stderr_to_stdout: true
      )
    end

    assert {_, 0} = verify.(certs.cacertfile, "server.pem", ["-verify_hostname", "localhost"])
    assert {_, 0} = verify.(certs.cacertfile, "server.pem", ["-verify_ip", "127.0.0.1"])
    assert {_, 0} = verify.(certs.cacertfile, "client.pem", ["-purpose", "sslclient"])

    assert {_, 0} =
             verify.(certs.cacertfile, "wrong-name.pem", ["-verify_hostname", "other.example"])

    assert {_, 2} = verify.(certs.cacertfile, "wrong-name.pem", ["-verify_hostname", "localhost"])
    assert {_, 2} = verify.(certs.cacertfile, "untrusted.pem", [])
    assert {_, 0} = verify.(certs.untrusted_cacertfile, "untrusted.pem", [])

    for file <- [certs.keyfile, certs.cakeyfile] do
      assert {:ok, %File.Stat{mode: mode}} = File.stat(file)
      assert Bitwise.band(mode, 0o077) == 0, "#{file} is readable by others"
    end
  end

  describe "redis" do
    @describetag :redis

    test "redis-cli to redis-cli over TLS, both ways; plaintext to the TLS port refused" do
      server = BrokerServer.start!(:redis, tls: true)
      # The only port is the TLS one.
      assert RedisCli.cmd!(server, ["config", "get", "port"]) == "port\n0"
      assert RedisCli.cmd!(server, ["config", "get", "tls-port"]) == "tls-port\n#{server.port}"
      both_ways(server, RedisCli)

      {out, _} =
        System.cmd("redis-cli", ["-h", "127.0.0.1", "-p", "#{server.port}", "ping"],
          stderr_to_stdout: true
        )

      refute out =~ "PONG"
    end

    test "another CA's cert is refused; client certs required: refused without, served with" do
      server = BrokerServer.start!(:redis, tls: [cert: :untrusted])
      assert {out, status} = redis_ping(server, [])
      assert status != 0 and out =~ "certificate verify failed"

      assert {"PONG\n", 0} =
               redis_ping(server, ["--cacert", BrokerServer.certs().untrusted_cacertfile])

      server = BrokerServer.restart!(server, tls: [client_cert: :required])
      assert {"PONG\n", 0} = redis_ping(server, [])
      assert {out, _} = redis_ping(server, [], _client_cert = false)
      refute out =~ "PONG"

      # Back to the trusted cert on the same port.
      port = server.port
      assert %{port: ^port} = server = BrokerServer.restart!(server, tls: true)
      assert {"PONG\n", 0} = redis_ping(server, [])
    end
  end

  describe "postgres" do
    @describetag :postgres

    test "psql to psql over TLS, both ways; plaintext to the TLS port refused" do
      server = BrokerServer.start!(:postgres, tls: true)
      both_ways(server, Psql)

      # Every client of the server so far came over TLS (pg_stat_ssl of this one).
      assert Psql.sql!(
               server,
               "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
             ) =~
               ~r/^t\|TLSv1\.[23]\n$/

      assert {out, status} = psql(server, "sslmode=disable")
      assert status != 0
      assert out =~ "no pg_hba.conf entry"
      assert out =~ "no encryption"
    end

    test "another CA's cert and a cert for another name are refused; client certs required" do
      server = BrokerServer.start!(:postgres, tls: [cert: :untrusted])
      assert {out, 2} = psql(server, "host=localhost sslmode=verify-full")
      assert out =~ "certificate verify failed"

      server = BrokerServer.restart!(server, tls: [cert: :wrong_name])
      assert {out, 2} = psql(server, "host=localhost sslmode=verify-full")
      assert out =~ ~s(does not match host name "localhost")
      # The chain is good: verify-ca, or verify-full with that name, pass.
      assert {"1\n", 0} = psql(server, "host=localhost sslmode=verify-ca")
      assert {"1\n", 0} = psql(server, "host=other.example sslmode=verify-full")

      server = BrokerServer.restart!(server, tls: [client_cert: :required])
      assert {out, 2} = psql(server, "host=localhost sslmode=verify-full")
      assert out =~ "connection requires a valid client certificate"
      %{certfile: certfile, keyfile: keyfile} = BrokerServer.certs()

      assert {"1\n", 0} =
               psql(
                 server,
                 "host=localhost sslmode=verify-full sslcert=#{certfile} sslkey=#{keyfile}"
               )

      assert {"1\n", 0} =
               System.cmd("psql", ["-X", "-At", "-c", "SELECT 1" | BrokerServer.psql_args(server)])
    end
  end

  describe "rabbitmq" do
    @describetag :rabbitmq

    test "amqp-publish to amqp-consume over TLS, both ways; plaintext to the TLS port refused" do
      server = BrokerServer.start!(:rabbitmq, tls: true)
      both_ways(server, AmqpTools)

      {out, status} =
        amqp_declare(server, ["-u", "amqp://guest:guest@localhost:#{server.port}/%2F"])

      assert status != 0, out
    end

    test "another CA's cert and a cert for another name are refused; client certs required" do
      server = BrokerServer.start!(:rabbitmq, tls: [cert: :untrusted])
      %{cacertfile: ca, certfile: certfile, keyfile: keyfile} = BrokerServer.certs()
      tls = ["-u", "amqps://guest:guest@localhost:#{server.port}/%2F", "--ssl", "--cacert", ca]
      assert {_, status} = amqp_declare(server, tls)
      assert status != 0

      assert {_, 0} =
               amqp_declare(
                 server,
                 tls ++ ["--cacert", BrokerServer.certs().untrusted_cacertfile]
               )

      server = BrokerServer.restart!(server, tls: [cert: :wrong_name])
      # amqp-tools checks the name too (localhost is not other.example).
      assert {_, status} = amqp_declare(server, tls)
      assert status != 0

      server = BrokerServer.restart!(server, tls: [client_cert: :required])
      assert {_, status} = amqp_declare(server, tls)
      assert status != 0
      args = tls ++ ["--cert", certfile, "--key", keyfile]
      assert {_, 0} = amqp_declare(server, args)
      # The peer's own arguments carry the client cert.
      assert {_, 0} = amqp_declare(server, BrokerServer.amqp_tools_args(server))
    end
  end

  test "config/1 and url_config/1 of a TLS server: the keys of spec section 10.1" do
    ca = BrokerServer.certs().cacertfile
    %{certfile: certfile, keyfile: keyfile} = BrokerServer.certs()
    redis = %BrokerServer{kind: :redis, port: 1234, tls: %{cert: :server, client_cert: nil}}

    assert BrokerServer.config(redis) ==
             [hostname: "127.0.0.1", port: 1234, tls: true, tls_cacertfile: ca]

    assert BrokerServer.url_config(redis) == [
             url: "rediss://127.0.0.1:1234/0",
             tls_cacertfile: ca
           ]

    postgres = %BrokerServer{
      kind: :postgres,
      port: 1234,
      tls: %{cert: :server, client_cert: :required}
    }

    assert BrokerServer.config(postgres) ==
             [
               hostname: "127.0.0.1",
               port: 1234,
               username: "postgres",
               password: "postgres",
               database: "postgres",
               tls: true,
               tls_cacertfile: ca,
               tls_certfile: certfile,
               tls_keyfile: keyfile
             ]

    assert [url: url, tls_certfile: ^certfile, tls_keyfile: ^keyfile] =
             BrokerServer.url_config(postgres)

    assert %URI{scheme: "postgres", host: "127.0.0.1", port: 1234, query: query} = URI.parse(url)
    assert URI.decode_query(query) == %{"sslmode" => "verify-full", "sslrootcert" => ca}

    rabbitmq = %BrokerServer{kind: :rabbitmq, port: 1234, tls: %{cert: :server, client_cert: nil}}

    assert BrokerServer.url_config(rabbitmq) ==
             [url: "amqps://guest:guest@127.0.0.1:1234/%2F", tls_cacertfile: ca]

    assert Keyword.take(BrokerServer.config(rabbitmq), [:tls, :tls_cacertfile]) ==
             [tls: true, tls_cacertfile: ca]
  end

  ## Helpers

  # Two independent CLI clients, each subscribed to a name of its own: every
  # payload goes from the first to the second, then from the second to the
  # first, over TLS.
  defp both_ways(server, peer) do
    a_name = peer.name(server, "tls_a")
    b_name = peer.name(server, "tls_b")
    a = peer.subscribe!(server, a_name)
    b = peer.subscribe!(server, b_name)

    try do
      {a, b} = pass(server, peer, a, b, b_name)
      {_b, _a} = pass(server, peer, b, a, a_name)
    after
      peer.stop(a)
      peer.stop(b)
    end
  end

  # `from` sends every payload on `to`'s name; `to` receives them, exactly.
  defp pass(server, peer, from, to, to_name) do
    payloads = peer.payloads()
    from = send_all(server, peer, from, to_name, payloads)
    assert {^payloads, to} = peer.messages!(to, length(payloads))
    {from, to}
  end

  # psql sends from the other LISTEN session itself; redis-cli (subscribed,
  # it cannot publish) and amqp-tools from a publishing process of their own.
  defp send_all(_server, Psql, session, name, payloads) do
    Enum.reduce(payloads, session, fn payload, session ->
      Psql.run!(session, "NOTIFY #{Psql.identifier(name)}, #{Psql.literal(payload)};")
    end)
  end

  defp send_all(server, peer, handle, name, payloads) do
    for payload <- payloads, do: peer.publish!(server, name, payload)
    handle
  end

  defp redis_ping(server, extra, client_cert \\ true) do
    args =
      if client_cert,
        do: BrokerServer.redis_cli_args(server),
        else: Enum.take(BrokerServer.redis_cli_args(server), 7)

    System.cmd("redis-cli", args ++ extra ++ ["ping"], stderr_to_stdout: true)
  end

  defp psql(server, conninfo) do
    System.cmd(
      "psql",
      [
        "-X",
        "-At",
        "-c",
        "SELECT 1",
        "-d",
        "hostaddr=127.0.0.1 port=#{server.port} user=postgres dbname=postgres " <>
          "sslrootcert=#{BrokerServer.certs().cacertfile} " <> conninfo
      ],
      stderr_to_stdout: true
    )
  end

  defp amqp_declare(_server, args) do
    queue = "tls-servers-#{System.unique_integer([:positive])}"
    System.cmd("amqp-declare-queue", args ++ ["-q", queue], stderr_to_stdout: true)
  end
end
