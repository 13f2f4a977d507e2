defmodule Yggdrasil.BrokerConfigTest do
  # Yggdrasil.Config.broker_config/2: the lookup order of section 10 of the
  # contract. Not async: it sets OS environment variables and the
  # application environment, which are global.
  use ExUnit.Case, async: false

  alias Yggdrasil.Config

  @namespace Yggdrasil.BrokerConfigTest.Ns
  @prefix "YGGDRASIL_BROKER_CONFIG_TEST_NS_"

  setup do
    on_exit(fn ->
      for {name, _} <- System.get_env(),
          String.starts_with?(name, ["YGGDRASIL_REDIS_", "YGGDRASIL_POSTGRES_"]) or
            String.starts_with?(name, ["YGGDRASIL_RABBITMQ_", @prefix]),
          do: System.delete_env(name)

      for key <- [:redis, :postgres, :rabbitmq, @namespace, Other.Ns],
          do: Application.delete_env(:yggdrasil, key)
    end)
  end

  describe "defaults" do
    test "every key of each broker, in the order of the contract" do
      common = [
        publish_timeout: 5000,
        backoff_max: 5000,
        idle_timeout: 30_000,
        url: nil,
        tls: false,
        tls_cacertfile: nil,
        tls_certfile: nil,
        tls_keyfile: nil,
        tls_verify: "verify_peer",
        tls_server_name: nil
      ]

      assert Config.broker_config(:redis) ==
               [
                 hostname: "localhost",
                 port: 6379,
                 password: nil,
                 database: 0,
                 username: nil
               ] ++ common

      assert Config.broker_config(:postgres) ==
               [
                 hostname: "localhost",
                 port: 5432,
                 username: "postgres",
                 password: "postgres",
                 database: "postgres",
                 sslmode: nil
               ] ++ common

      assert Config.broker_config(:rabbitmq) ==
               [
                 hostname: "localhost",
                 port: 5672,
                 username: "guest",
                 password: "guest",
                 virtual_host: "/",
                 heartbeat: 10
               ] ++ common
    end

    test "a namespace with nothing configured gets the defaults" do
      assert Config.broker_config(:rabbitmq, @namespace) == Config.broker_config(:rabbitmq)
    end
  end

  describe "lookup order, per key" do
    test "global config over the default" do
      Application.put_env(:yggdrasil, :postgres, port: 5433, database: "app")
      config = Config.broker_config(:postgres)
      assert config[:port] == 5433
      assert config[:database] == "app"
      assert config[:hostname] == "localhost"
    end

    test "unprefixed variable over the global config" do
      Application.put_env(:yggdrasil, :redis, port: 6380, hostname: "config-host")
      System.put_env("YGGDRASIL_REDIS_PORT", "6381")
      config = Config.broker_config(:redis)
      assert config[:port] == 6381
      assert config[:hostname] == "config-host"
    end

    test "namespaced config over the unprefixed variable, for that namespace only" do
      System.put_env("YGGDRASIL_REDIS_PORT", "6381")
      System.put_env("YGGDRASIL_REDIS_HOSTNAME", "env-host")
      Application.put_env(:yggdrasil, @namespace, redis: [port: 6382])

      assert Config.broker_config(:redis, @namespace)[:port] == 6382
      # Keys the namespace does not set come from the next sources.
      assert Config.broker_config(:redis, @namespace)[:hostname] == "env-host"
      assert Config.broker_config(:redis)[:port] == 6381
      assert Config.broker_config(:redis, Other.Ns)[:port] == 6381
    end

    test "prefixed variable over the namespaced config" do
      Application.put_env(:yggdrasil, @namespace, rabbitmq: [virtual_host: "config-vhost"])
      System.put_env(@prefix <> "YGGDRASIL_RABBITMQ_VIRTUAL_HOST", "env-vhost")
      System.put_env("YGGDRASIL_RABBITMQ_VIRTUAL_HOST", "unprefixed")

      assert Config.broker_config(:rabbitmq, @namespace)[:virtual_host] == "env-vhost"
      assert Config.broker_config(:rabbitmq)[:virtual_host] == "unprefixed"
    end

    test "prefixed variables are read only for their namespace" do
      System.put_env(@prefix <> "YGGDRASIL_POSTGRES_PORT", "6000")
      assert Config.broker_config(:postgres)[:port] == 5432
      assert Config.broker_config(:postgres, Other.Ns)[:port] == 5432
      assert Config.broker_config(:postgres, @namespace)[:port] == 6000
    end

    test "brokers do not see each other's settings" do
      Application.put_env(:yggdrasil, :redis, port: 7000)
      System.put_env("YGGDRASIL_REDIS_HOSTNAME", "redis-host")
      assert Config.broker_config(:postgres)[:port] == 5432
      assert Config.broker_config(:postgres)[:hostname] == "localhost"
    end

    test "a key configured as nil counts as not set" do
      Application.put_env(:yggdrasil, :rabbitmq, username: "app")
      Application.put_env(:yggdrasil, @namespace, rabbitmq: [username: nil, heartbeat: nil])
      config = Config.broker_config(:rabbitmq, @namespace)
      assert config[:username] == "app"
      assert config[:heartbeat] == 10
    end

    test "the common keys follow the same order" do
      Application.put_env(:yggdrasil, :redis, publish_timeout: 100)
      System.put_env("YGGDRASIL_REDIS_BACKOFF_MAX", "250")
      System.put_env(@prefix <> "YGGDRASIL_REDIS_IDLE_TIMEOUT", "1000")

      assert [publish_timeout: 100, backoff_max: 250, idle_timeout: 1000] =
               Config.broker_config(:redis, @namespace) |> Keyword.take(common_keys())
    end
  end

  describe "environment values" do
    test "integers are parsed, surrounding blanks ignored" do
      System.put_env("YGGDRASIL_REDIS_PORT", " 6390 ")
      System.put_env("YGGDRASIL_REDIS_DATABASE", "3")
      System.put_env("YGGDRASIL_RABBITMQ_HEARTBEAT", "0")
      assert Config.broker_config(:redis)[:port] == 6390
      assert Config.broker_config(:redis)[:database] == 3
      assert Config.broker_config(:rabbitmq)[:heartbeat] == 0
    end

    test "an empty variable makes an optional key nil, over the config" do
      Application.put_env(:yggdrasil, :redis, password: "secret", username: "app")
      System.put_env("YGGDRASIL_REDIS_PASSWORD", "")
      config = Config.broker_config(:redis)
      assert config[:password] == nil
      assert config[:username] == "app"
    end

    test "strings are kept as they are, an empty PostgreSQL password included" do
      System.put_env("YGGDRASIL_POSTGRES_PASSWORD", "")
      System.put_env("YGGDRASIL_POSTGRES_USERNAME", "some user")
      assert Config.broker_config(:postgres)[:password] == ""
      assert Config.broker_config(:postgres)[:username] == "some user"
    end

    test "a bad value raises ArgumentError naming the variable" do
      for {variable, value, expected} <- [
            {"YGGDRASIL_REDIS_PORT", "abc", "a port number"},
            {"YGGDRASIL_REDIS_PORT", "70000", "a port number"},
            {"YGGDRASIL_REDIS_PORT", "0", "a port number"},
            {"YGGDRASIL_REDIS_DATABASE", "-1", "a non-negative integer"},
            {"YGGDRASIL_REDIS_PUBLISH_TIMEOUT", "1.5", "a positive number of milliseconds"},
            {"YGGDRASIL_RABBITMQ_HOSTNAME", "", "a host name"}
          ] do
        System.put_env(variable, value)
        broker = if variable =~ "RABBITMQ", do: :rabbitmq, else: :redis

        error = assert_raise ArgumentError, fn -> Config.broker_config(broker) end
        assert error.message =~ "environment variable #{variable}: expected #{expected}"
        assert error.message =~ inspect(value)
        System.delete_env(variable)
      end
    end

    test "a bad prefixed variable is named with its prefix" do
      System.put_env(@prefix <> "YGGDRASIL_POSTGRES_PORT", "x")

      assert_raise ArgumentError,
                   ~r/environment variable #{@prefix}YGGDRASIL_POSTGRES_PORT/,
                   fn ->
                     Config.broker_config(:postgres, @namespace)
                   end
    end
  end

  describe "config values" do
    test "are checked like environment values; strings and charlists converted" do
      Application.put_env(:yggdrasil, :postgres, port: "5444", hostname: ~c"db.local")
      assert Config.broker_config(:postgres)[:port] == 5444
      assert Config.broker_config(:postgres)[:hostname] == "db.local"
    end

    test "a bad value raises ArgumentError naming the config entry" do
      Application.put_env(:yggdrasil, :redis, port: :six)

      assert_raise ArgumentError,
                   ~r/config :yggdrasil, redis: \[port: \.\.\.\]: expected a port number.*:six/,
                   fn -> Config.broker_config(:redis) end

      Application.put_env(:yggdrasil, @namespace, rabbitmq: [heartbeat: -1])

      assert_raise ArgumentError,
                   ~r/config :yggdrasil, #{inspect(@namespace)}, rabbitmq: \[heartbeat: \.\.\.\]/,
                   fn -> Config.broker_config(:rabbitmq, @namespace) end
    end
  end

  describe "config shapes" do
    test "a broker's config that is not a keyword list raises ArgumentError naming it" do
      Application.put_env(:yggdrasil, :redis, %{port: 6390})

      assert_raise ArgumentError,
                   "config :yggdrasil, redis: [...] must be a keyword list, got a map",
                   fn -> Config.broker_config(:redis) end

      Application.put_env(:yggdrasil, @namespace, postgres: "s3cret")
      error = assert_raise ArgumentError, fn -> Config.broker_config(:postgres, @namespace) end

      assert error.message ==
               "config :yggdrasil, #{inspect(@namespace)}, postgres: [...] must be a keyword list, got a binary"
    end

    test "a namespace's config that is not a keyword list: its type named, never its value" do
      for {config, type} <- [
            {"s3cret", "a binary"},
            {{:redis, [password: "s3cret"]}, "a tuple"},
            {[{:redis, [password: "s3cret"]}, "s3cret"], "a list that is not one"}
          ] do
        Application.put_env(:yggdrasil, @namespace, config)
        error = assert_raise ArgumentError, fn -> Config.broker_config(:redis, @namespace) end

        assert error.message ==
                 "config :yggdrasil, #{inspect(@namespace)}, [...] must be a keyword list, got #{type}"
      end
    end

    test "publishing with such a config: {:error, reason}, and the broker process lives on" do
      broker = Process.whereis(Yggdrasil.Broker)
      Application.put_env(:yggdrasil, @namespace, {:redis, [password: "s3cret"]})
      channel = [name: "shapes", adapter: :redis, namespace: @namespace]

      for _ <- 1..5 do
        assert {:error, reason} = Yggdrasil.publish(channel, "message")
        assert reason =~ "must be a keyword list, got a tuple"
        refute reason =~ "s3cret"
        assert {:error, ^reason} = Yggdrasil.subscribe(channel)
      end

      assert Process.whereis(Yggdrasil.Broker) == broker
    end
  end

  describe "redis url" do
    test "replaces the connection keys" do
      Application.put_env(:yggdrasil, :redis,
        hostname: "ignored",
        password: "ignored",
        url: "redis://app:s%40cret@cache.local:6390/2"
      )

      assert [
               hostname: "cache.local",
               port: 6390,
               password: "s@cret",
               database: 2,
               username: "app",
               url: "redis://app:s%40cret@cache.local:6390/2",
               tls: false
             ] =
               Config.broker_config(:redis)
               |> Keyword.take([:hostname, :port, :password, :database, :username, :url, :tls])

      System.put_env("YGGDRASIL_REDIS_URL", "rediss://cache.local")
      assert Config.broker_config(:redis)[:tls] == true
    end

    test "the TLS keys still apply: a redis:// or amqp:// url never turns TLS off" do
      Application.put_env(:yggdrasil, :redis, url: "redis://:pw@cache.local", tls: true)
      Application.put_env(:yggdrasil, :rabbitmq, url: "amqp://mq.local", tls: true)
      assert Config.broker_config(:redis)[:tls] == true
      assert Config.broker_config(:rabbitmq)[:tls] == true
      assert Config.broker_config(:rabbitmq)[:port] == 5672
    end

    test "what it leaves out takes the defaults, not the other keys" do
      Application.put_env(:yggdrasil, :redis, port: 7000, database: 5, username: "app")
      System.put_env("YGGDRASIL_REDIS_URL", "redis://:pw@10.0.0.1")
      config = Config.broker_config(:redis)

      assert Keyword.take(config, [:hostname, :port, :password, :database, :username]) ==
               [hostname: "10.0.0.1", port: 6379, password: "pw", database: 0, username: nil]
    end

    test "follows the lookup order like any key" do
      Application.put_env(:yggdrasil, :redis, url: "redis://global:6000")
      Application.put_env(:yggdrasil, @namespace, redis: [url: "redis://namespaced:6001/1"])

      assert Config.broker_config(:redis)[:hostname] == "global"
      assert Config.broker_config(:redis, @namespace)[:hostname] == "namespaced"
      assert Config.broker_config(:redis, @namespace)[:database] == 1

      # An empty variable clears it: the other keys count again.
      System.put_env(@prefix <> "YGGDRASIL_REDIS_URL", "")
      assert Config.broker_config(:redis, @namespace)[:url] == nil
      assert Config.broker_config(:redis, @namespace)[:hostname] == "localhost"
    end

    test "a url that is not redis(s)://host... raises ArgumentError naming the key, never the password" do
      for url <- ["http://host:6380", "host:6379", "redis://", "redis://:pa55@host/x"] do
        System.put_env("YGGDRASIL_REDIS_URL", url)
        error = assert_raise ArgumentError, fn -> Config.broker_config(:redis) end
        assert error.message =~ "environment variable YGGDRASIL_REDIS_URL: url: "
        assert error.message =~ "redis:// or rediss://" or error.message =~ "a database number"
        refute error.message =~ "pa55"
      end
    end
  end

  test "an unknown broker or a namespace that is not an atom raises ArgumentError" do
    assert_raise ArgumentError, ~r/unknown broker :kafka/, fn -> Config.broker_config(:kafka) end

    assert_raise ArgumentError, ~r/expected a broker/, fn ->
      Config.broker_config(:redis, "MyApp")
    end
  end

  test "env_prefix/1 underscores each part of the module name" do
    assert Config.env_prefix(MyApp.Namespace) == "MY_APP_NAMESPACE_"
    assert Config.env_prefix(Rabbit.One) == "RABBIT_ONE_"
    assert Config.env_prefix(MyAPI.V2Thing) == "MY_API_V2_THING_"
    assert Config.env_prefix(:plain) == "PLAIN_"
  end

  defp common_keys, do: [:publish_timeout, :backoff_max, :idle_timeout]
end
