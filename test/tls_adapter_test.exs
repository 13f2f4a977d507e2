# The acceptance tests of spec section 10.1 (URLs and TLS) for our :redis,
# :postgres and :rabbitmq adapters, against private TLS servers
# (Yggdrasil.Test.BrokerServer, test/brokers/ctl.sh) with each broker's own
# CLI on the other side over TLS. One module per broker, the same tests in
# each, written against the spec's config keys: `url`, `tls`,
# `tls_cacertfile`, `tls_certfile`, `tls_keyfile`, `tls_verify`,
# `tls_server_name`.
#
# Tagged :tls_adapter (`mix test --only tls_adapter` runs every TLS test).
for peer <- [Yggdrasil.Test.RedisCli, Yggdrasil.Test.Psql, Yggdrasil.Test.AmqpTools] do
  defmodule Module.concat(Yggdrasil.TLSAdapterTest, Macro.camelize("#{peer.broker()}")) do
    use ExUnit.Case, async: false

    import ExUnit.CaptureLog
    import Yggdrasil.Test.BrokerCase

    alias Yggdrasil.Test.BrokerServer

    @peer peer
    @broker peer.broker()
    @wait Yggdrasil.Test.BrokerCase.wait()
    # How long a connection that must not come up is given to come up anyway.
    @refused 3_000
    @secret "s3cr3t-pa55"
    @url_form %{
                redis: "rediss://",
                postgres: "postgres://...?sslmode=verify-full&sslrootcert=...",
                rabbitmq: "amqps://"
              }[peer.broker()]

    @moduletag :brokers
    @moduletag :tls_adapter
    @moduletag @broker
    @moduletag :capture_log
    @moduletag timeout: 300_000

    setup_all do
      %{server: BrokerServer.start!(@broker, tls: true), peer: @peer}
    end

    describe "connecting over TLS" do
      test "tls: true and tls_cacertfile: events both ways with the CLI over TLS", %{
        server: server
      } do
        config = BrokerServer.config(server)
        assert config[:tls] == true
        assert config[:tls_cacertfile] == BrokerServer.certs().cacertfile
        namespace = configure(@peer, server)
        round_trip!(server, namespace)
      end

      test "the URL form, #{@url_form}: it overrides hostname and port", %{server: server} do
        namespace = namespace()
        # Wrong hostname and port: the URL's win.
        settings =
          [hostname: "nowhere.invalid", port: free_port(), backoff_max: 300] ++
            BrokerServer.url_config(server)

        put_settings(@peer, namespace, settings)
        round_trip!(server, namespace)
      end

      if peer.broker() == :postgres do
        test "postgresql:// and sslmode=verify-ca also reach it", %{server: server} do
          [url: url] = BrokerServer.url_config(server)

          url =
            url
            |> String.replace("postgres://", "postgresql://")
            |> String.replace("sslmode=verify-full", "sslmode=verify-ca")

          namespace = namespace()
          put_settings(@peer, namespace, url: url, backoff_max: 300)
          round_trip!(server, namespace)
        end

        test "sslmode=require: encrypted without verifying, even another CA's cert" do
          server = BrokerServer.start!(@broker, tls: [cert: :untrusted])
          url = "postgres://postgres:postgres@127.0.0.1:#{server.port}/postgres?sslmode=require"
          namespace = namespace()
          put_settings(@peer, namespace, url: url, backoff_max: 300)
          channel = subscribe!(channel(@peer, namespace, @peer.name(server, "require")))
          assert :ok = Yggdrasil.publish(channel, "encrypted, not verified")
          assert_receive {:Y_EVENT, _, "encrypted, not verified"}, @wait
        end
      end
    end

    describe "the server's certificate" do
      test "another CA's cert: :ok, no :Y_CONNECTED, a TLS warning per attempt; the trusted cert back on the port: connected by itself" do
        server = BrokerServer.start!(@broker, tls: [cert: :untrusted])
        namespace = configure(@peer, server, publish_timeout: 500)
        channel = channel(@peer, namespace, @peer.name(server, "untrusted"))

        log = refused!(channel)
        assert log =~ ~r/certificate|unknown ca|UnknownIssuer|verif/i
        assert warnings(log, namespace) >= 2

        server = BrokerServer.restart!(server, tls: true)
        assert_receive {:Y_CONNECTED, ^channel}, @wait
        @peer.publish!(server, channel.name, "after the fix")
        expected = event_channel(@peer, channel)
        assert_receive {:Y_EVENT, ^expected, "after the fix"}, @wait
        assert :ok = Yggdrasil.publish(channel, "published after the fix")
        assert_receive {:Y_EVENT, _, "published after the fix"}, @wait
      end

      test "a cert for another name: refused under verify_peer; connects with tls_server_name or tls_verify: :verify_none" do
        server = BrokerServer.start!(@broker, tls: [cert: :wrong_name])

        # The CA is trusted, the name (127.0.0.1) is not the cert's.
        refused = configure(@peer, server, publish_timeout: 500)
        channel = channel(@peer, refused, @peer.name(server, "wrong_name"))
        log = refused!(channel)
        assert log =~ ~r/certificate|NotValidForName|host ?name|verif/i

        # The name the cert has, sent as SNI and checked.
        named = configure(@peer, server, tls_server_name: "other.example")
        channel = subscribe!(channel(@peer, named, @peer.name(server, "server_name")))
        assert :ok = Yggdrasil.publish(channel, "to other.example")
        assert_receive {:Y_EVENT, _, "to other.example"}, @wait

        # Not verified: a warning once per connection, not per channel.
        unverified = configure(@peer, server, tls_verify: :verify_none)

        log =
          capture_log(fn ->
            channel = subscribe!(channel(@peer, unverified, @peer.name(server, "verify_none")))
            # The publishing side connects too.
            assert :ok = Yggdrasil.publish(channel, "unverified")
            assert_receive {:Y_EVENT, _, "unverified"}, @wait
          end)

        assert log =~ ~r/verify_none|not (been )?(verified|authenticated)/i
        first = warnings(log, unverified)
        assert first >= 1

        log =
          capture_log(fn ->
            for _ <- 1..3,
                do: subscribe!(channel(@peer, unverified, @peer.name(server, "verify_none")))
          end)

        assert warnings(log, unverified) == 0
      end

      test "client certificate required: connects with tls_certfile/tls_keyfile, refused without" do
        server = BrokerServer.start!(@broker, tls: [client_cert: :required])
        config = BrokerServer.config(server)
        assert config[:tls_certfile] == BrokerServer.certs().certfile
        assert config[:tls_keyfile] == BrokerServer.certs().keyfile
        round_trip!(server, configure(@peer, server))

        without = namespace()

        put_settings(
          @peer,
          without,
          Keyword.drop(config, [:tls_certfile, :tls_keyfile]) ++
            [backoff_max: 300, publish_timeout: 500]
        )

        log = refused!(channel(@peer, without, @peer.name(server, "no_client_cert")))
        assert warnings(log, without) >= 1
      end
    end

    describe "TLS and plaintext mixed up: an unreachable broker" do
      test "TLS against a plaintext port: a warning per attempt, no crash" do
        plain = plain_server()

        namespace =
          configure(@peer, plain,
            tls: true,
            tls_cacertfile: BrokerServer.certs().cacertfile,
            publish_timeout: 500
          )

        broker_pid = Process.whereis(Yggdrasil.Broker)
        channel = channel(@peer, namespace, @peer.name(plain, "tls_to_plain"))

        log = refused!(channel)
        # A plaintext server may take its time to give up on a ClientHello.
        log = log <> more_warnings(log, namespace, 2)
        assert warnings(log, namespace) >= 2
        assert Process.whereis(Yggdrasil.Broker) == broker_pid
        assert is_pid(Yggdrasil.Subscriber.Generator.whereis(channel))
      end

      test "plaintext against the TLS port: a warning per attempt, no crash", %{server: server} do
        namespace = namespace()

        put_settings(
          @peer,
          namespace,
          BrokerServer.config(%{server | tls: nil}) ++ [backoff_max: 300, publish_timeout: 500]
        )

        broker_pid = Process.whereis(Yggdrasil.Broker)
        channel = channel(@peer, namespace, @peer.name(server, "plain_to_tls"))

        log = refused!(channel)
        assert warnings(log, namespace) >= 2
        assert Process.whereis(Yggdrasil.Broker) == broker_pid
        assert is_pid(Yggdrasil.Subscriber.Generator.whereis(channel))
      end
    end

    describe "values that cannot work: {:error, reason} naming the key, nothing started" do
      bad_values =
        [
          {"a malformed url", "url"},
          {"an unknown scheme", "url"},
          {"an unknown URL param", "bogus_param"},
          {"a missing tls_cacertfile", "tls_cacertfile"},
          {"a tls_cacertfile without a certificate", "tls_cacertfile"},
          {"a missing tls_certfile", "tls_certfile"},
          {"a tls_certfile without a certificate", "tls_certfile"},
          {"a missing tls_keyfile", "tls_keyfile"},
          {"a tls_keyfile without a key", "tls_keyfile"},
          {"tls_verify: :bogus", "tls_verify"}
        ] ++ if(peer.broker() == :postgres, do: [{"an unknown sslmode", "sslmode"}], else: [])

      for {what, key} <- bad_values do
        test "#{what}", %{server: server} do
          bad_setting!(server, bad_value(server, unquote(what)), unquote(key))
        end
      end
    end

    describe "passwords never show" do
      test "not in logs, error reasons, or the state of the broker processes", ctx do
        {server, right, wrong} = secret_setup(ctx.server)
        owners_before = owners()

        # The right password: connected; the URL form with it in its userinfo too.
        with_password = configure(@peer, server, right ++ [publish_timeout: 500])
        in_url = namespace()
        put_settings(@peer, in_url, secret_url_config(server, right) ++ [backoff_max: 300])
        # A wrong one (that contains the right one): warnings per attempt.
        refused = configure(@peer, server, wrong ++ [publish_timeout: 500])

        {{channels, reason}, log} =
          with_log(fn ->
            connected =
              for namespace <- [with_password, in_url] do
                channel = subscribe!(channel(@peer, namespace, @peer.name(server, "secret")))
                assert :ok = Yggdrasil.publish(channel, "with the secret")
                assert_receive {:Y_EVENT, _, "with the secret"}, @wait
                channel
              end

            channel = channel(@peer, refused, @peer.name(server, "wrong_secret"))
            assert :ok = Yggdrasil.subscribe(channel)
            assert {:error, reason} = Yggdrasil.publish(channel, "refused")
            refute_receive {:Y_CONNECTED, ^channel}, @refused
            {[channel | connected], reason}
          end)

        assert warnings(log, refused) >= 1
        refute log =~ @secret

        refute inspect(reason) =~ @secret

        new_owners = owners() -- owners_before
        assert new_owners != []
        adapters = Enum.map(channels, &Yggdrasil.Subscriber.Generator.whereis/1)
        assert Enum.all?(adapters, &is_pid/1)

        for pid <- [Process.whereis(Yggdrasil.Broker) | new_owners ++ adapters] do
          refute inspect(:sys.get_state(pid), limit: :infinity, printable_limit: :infinity) =~
                   @secret,
                 "#{inspect(pid)}'s state shows the password"
        end

        for namespace <- [with_password, in_url, refused] do
          entry = Yggdrasil.Broker.client(@broker, namespace)
          refute inspect(entry, limit: :infinity, printable_limit: :infinity) =~ @secret
        end

        # A bad value next to a password: its error does not show it either.
        bad = namespace()
        put_settings(@peer, bad, right ++ [tls_verify: :bogus])
        assert {:error, reason} = Yggdrasil.subscribe(channel(@peer, bad, "x"))
        refute inspect(reason) =~ @secret
      end
    end

    ## Helpers

    # Our subscription sees the CLI's event and the CLI ours, over TLS.
    defp round_trip!(server, namespace) do
      name = @peer.name(server, "tls")
      channel = subscribe!(channel(@peer, namespace, name))
      handle = @peer.subscribe!(server, name)

      try do
        @peer.publish!(server, name, "from the CLI")
        expected = event_channel(@peer, channel)
        assert_receive {:Y_EVENT, ^expected, "from the CLI"}, @wait

        assert :ok = Yggdrasil.publish(channel, "from us")
        assert_receive {:Y_EVENT, ^expected, "from us"}, @wait
        assert {["from the CLI", "from us"], _} = @peer.messages!(handle, 2)
      after
        @peer.stop(handle)
      end
    end

    # Subscribing gives :ok but never :Y_CONNECTED, publishing an error after
    # publish_timeout; the log of all that.
    defp refused!(channel) do
      capture_log(fn ->
        assert :ok = Yggdrasil.subscribe(channel)
        assert {:error, reason} = Yggdrasil.publish(channel, "nobody hears this")
        assert is_binary(reason)
        refute_receive {:Y_CONNECTED, ^channel}, @refused
      end)
    end

    # What is logged until `log` and it hold `n` warnings of `namespace`, for
    # at most the handshake timeout twice (attempts that fail slowly).
    defp more_warnings(log, namespace, n, waited \\ 0) do
      if warnings(log, namespace) >= n or waited >= 25_000 do
        ""
      else
        more = capture_log(fn -> Process.sleep(500) end)
        more <> more_warnings(log <> more, namespace, n, waited + 500)
      end
    end

    # Warnings of the client of `namespace` in `log` (Yggdrasil.Broker.Owner
    # names the broker and the namespace in each; Ns12 is not Ns123).
    defp warnings(log, namespace) do
      log
      |> String.split("\n")
      |> Enum.count(&(&1 =~ "[warning]" and &1 =~ ~r/#{Regex.escape(inspect(namespace))}\b/))
    end

    # The settings that make each bad value, over the server's good ones.
    defp bad_value(server, what) do
      %{cacertfile: ca, cakeyfile: ca_key, certfile: cert, keyfile: key} = BrokerServer.certs()

      case what do
        "a malformed url" ->
          [url: malformed_url()]

        "an unknown scheme" ->
          [url: "http://127.0.0.1:#{server.port}/"]

        "an unknown URL param" ->
          [url: url_with_param(server, "bogus_param=1")]

        "an unknown sslmode" ->
          [url: url_with_param(server, "sslmode=bogus")]

        "a missing tls_cacertfile" ->
          [tls_cacertfile: "/nonexistent/ygg-ca.pem"]

        "a tls_cacertfile without a certificate" ->
          [tls_cacertfile: ca_key]

        "a missing tls_certfile" ->
          [tls_certfile: "/nonexistent/ygg-client.pem", tls_keyfile: key]

        "a tls_certfile without a certificate" ->
          [tls_certfile: key, tls_keyfile: key]

        "a missing tls_keyfile" ->
          [tls_certfile: cert, tls_keyfile: "/nonexistent/ygg.key"]

        "a tls_keyfile without a key" ->
          [tls_certfile: cert, tls_keyfile: ca]

        "tls_verify: :bogus" ->
          [tls_verify: :bogus]
      end
    end

    defp bad_setting!(server, bad, key) do
      namespace = namespace()
      put_settings(@peer, namespace, Keyword.merge(BrokerServer.config(server), bad))
      channel = channel(@peer, namespace, @peer.name(server, "bad_tls_setting"))
      owners_before = owners()

      assert {:error, reason} = Yggdrasil.subscribe(channel)
      assert reason =~ key
      assert {:error, ^reason} = Yggdrasil.publish(channel, "x")
      assert Yggdrasil.subscriber_count(channel) == 0
      assert Yggdrasil.Subscriber.Generator.status(channel) == nil
      # No client: none open for the namespace, no new owner process.
      assert Yggdrasil.Broker.stats(@broker, namespace) == nil
      # (Other tests' idle clients may close meanwhile: only new ones count.)
      assert owners() -- owners_before == []
      refute_received {:Y_CONNECTED, _}
    end

    # The owner processes of the open broker clients (linked to Yggdrasil.Broker).
    defp owners do
      {:links, links} = Process.info(Process.whereis(Yggdrasil.Broker), :links)
      links |> Enum.filter(&is_pid/1) |> Enum.sort()
    end

    defp malformed_url do
      case @broker do
        :redis -> "rediss://127.0.0.1:notaport/0"
        :postgres -> "postgres://postgres@[::1/postgres?sslmode=verify-full"
        :rabbitmq -> "amqps://guest:guest@127.0.0.1:99999999/%2F"
      end
    end

    defp url_with_param(server, param) do
      url = BrokerServer.url(server)
      separator = if String.contains?(url, "?"), do: "&", else: "?"
      url <> separator <> param
    end

    # A plaintext server of this broker (RabbitMQ: the shared one, it boots slowly).
    defp plain_server do
      case @broker do
        :rabbitmq -> BrokerServer.shared!(:rabbitmq)
        broker -> BrokerServer.start!(broker)
      end
    end

    # A TLS server where @secret is a password that works, the settings
    # with it and with a wrong one that contains it. RabbitMQ: a user on the
    # module's server (it boots slowly); the others: a server of their own.
    defp secret_setup(module_server) do
      case @broker do
        :redis ->
          server = BrokerServer.start!(:redis, tls: true)
          "OK" = Yggdrasil.Test.RedisCli.cmd!(server, ["config", "set", "requirepass", @secret])
          {server, [password: @secret], [password: "wrong-" <> @secret]}

        :postgres ->
          server = BrokerServer.start!(:postgres, tls: true, pg_auth: "scram-sha-256")
          # Over the unix socket, which trusts.
          {_, 0} =
            System.cmd("psql", [
              "-X",
              "-q",
              "-h",
              Path.join(server.dir, "postgres"),
              "-p",
              "#{server.port}",
              "-U",
              "postgres",
              "-c",
              "ALTER ROLE postgres PASSWORD '#{@secret}'"
            ])

          {server, [password: @secret], [password: "wrong-" <> @secret]}

        :rabbitmq ->
          server = module_server
          user = "ygg-secret-#{System.unique_integer([:positive])}"
          BrokerServer.rabbitmqctl!(server, ["add_user", user, @secret])

          BrokerServer.rabbitmqctl!(server, ["set_permissions", "-p", "/", user, ".*", ".*", ".*"])

          {server, [username: user, password: @secret],
           [username: user, password: "wrong-" <> @secret]}
      end
    end

    # url_config/1 with the user and @secret in the URL's userinfo.
    defp secret_url_config(server, right) do
      [url: url] ++ rest = BrokerServer.url_config(server)
      user = right[:username] || if(@broker == :postgres, do: "postgres", else: "")
      uri = URI.parse(url)
      [url: URI.to_string(%{uri | userinfo: user <> ":" <> @secret})] ++ rest
    end
  end
end
