defmodule Yggdrasil.Test.BrokerServerTest do
  # The private broker servers of test/support/broker_server.ex, checked with
  # each broker's own CLI client. Alone: `mix test --only broker_server`.
  use ExUnit.Case, async: true

  import Yggdrasil.Test.Helpers

  alias Yggdrasil.Test.BrokerServer

  @moduletag :brokers
  @moduletag :broker_server
  if System.get_env("YGG_SKIP_BROKERS") == "1", do: @moduletag(skip: "YGG_SKIP_BROKERS=1")
  @moduletag timeout: 120_000

  @wait 10_000

  describe "redis" do
    test "PUBLISH from redis-cli reaches a redis-cli SUBSCRIBE, across a restart" do
      server = BrokerServer.start!(:redis)
      assert round_trip_redis(server, "hello world") == "hello world"

      old_pid = server.os_pid
      server = BrokerServer.restart!(server)
      refute os_alive?(old_pid)
      assert os_alive?(server.os_pid)
      assert server.os_pid != old_pid
      assert round_trip_redis(server, "again") == "again"

      server = BrokerServer.kill!(server)
      refute listening?(server.port)
      server = BrokerServer.start_again!(server)
      assert {"PONG\n", 0} = System.cmd("redis-cli", ["-p", "#{server.port}", "PING"])

      :ok = BrokerServer.cleanup(server)
      refute os_alive?(server.os_pid)
      refute File.exists?(server.dir)
      refute listening?(server.port)
    end

    test "config/1 gives the keys that reach the server" do
      server = BrokerServer.start!(:redis)
      assert BrokerServer.config(server) == [hostname: "127.0.0.1", port: server.port]
    end
  end

  describe "postgres" do
    test "NOTIFY from psql reaches a psql LISTEN, across a restart" do
      server = BrokerServer.start!(:postgres)
      assert notify_round_trip(server, "Some Channel", "hello there") == "hello there"

      old_pid = server.os_pid
      server = BrokerServer.restart!(server)
      refute os_alive?(old_pid)
      assert notify_round_trip(server, "ch", "again") == "again"

      # A crash leaves lock files and, for a moment, backends behind.
      server = server |> BrokerServer.kill!() |> BrokerServer.start_again!()
      assert notify_round_trip(server, "ch", "after a crash") == "after a crash"
    end

    test "user postgres with password postgres logs in over TCP" do
      server = BrokerServer.start!(:postgres)
      config = BrokerServer.config(server)

      {out, 0} =
        System.cmd(
          "psql",
          ["-X", "-At", "-h", config[:hostname], "-p", "#{config[:port]}", "-U"] ++
            [config[:username], "-d", config[:database], "-c", "SELECT current_user"],
          env: [{"PGPASSWORD", config[:password]}]
        )

      assert out == "postgres\n"
    end
  end

  describe "rabbitmq" do
    test "amqp-publish to amqp-consume through the shared node" do
      server = BrokerServer.shared!(:rabbitmq)
      assert BrokerServer.shared!(:rabbitmq) == server
      queue = "broker-server-test-#{System.unique_integer([:positive])}"
      url = amqp_url(server, "%2F")

      {_, 0} = System.cmd("amqp-declare-queue", ["-u", url, "-q", queue])
      {_, 0} = System.cmd("amqp-publish", ["-u", url, "-r", queue, "-b", "hello rabbit"])
      assert consume_one(url, queue) == "hello rabbit"
    end

    test "a virtual host made with rabbitmqctl! carries messages" do
      server = BrokerServer.shared!(:rabbitmq)
      vhost = "broker-server-test-#{System.unique_integer([:positive])}"
      BrokerServer.rabbitmqctl!(server, ["add_vhost", vhost])

      BrokerServer.rabbitmqctl!(server, [
        "set_permissions",
        "-p",
        vhost,
        "guest",
        ".*",
        ".*",
        ".*"
      ])

      url = amqp_url(server, vhost)

      {_, 0} = System.cmd("amqp-declare-queue", ["-u", url, "-q", "q"])
      {_, 0} = System.cmd("amqp-publish", ["-u", url, "-r", "q", "-b", "in #{vhost}"])
      assert consume_one(url, "q") == "in #{vhost}"
      BrokerServer.rabbitmqctl!(server, ["delete_vhost", vhost])
    end
  end

  test "a server is stopped and its directory removed when the process that started it exits" do
    parent = self()

    {pid, ref} =
      spawn_monitor(fn ->
        send(parent, {:server, BrokerServer.start!(:redis)})
        exit(:simulated_test_failure)
      end)

    assert_receive {:server, server}, @wait
    assert_receive {:DOWN, ^ref, :process, ^pid, _}, @wait

    assert eventually(
             fn -> not os_alive?(server.os_pid) and not File.exists?(server.dir) end,
             "the server to stop",
             @wait
           )

    refute listening?(server.port)
  end

  test "start! raises with ctl.sh's reason when the server cannot start" do
    blocker = BrokerServer.start!(:redis)

    assert_raise RuntimeError, ~r/port #{blocker.port} is already in use/, fn ->
      BrokerServer.start!(:redis, port: blocker.port)
    end
  end

  ## Helpers

  defp round_trip_redis(server, payload) do
    channel = "ch-#{System.unique_integer([:positive])}"
    cli = open_cli("redis-cli", ["-p", "#{server.port}", "SUBSCRIBE", channel])

    try do
      # redis-cli prints the confirmation: subscribe, the channel, the count.
      read_until(cli, ~r/subscribe\n#{channel}\n1\n/)

      assert {"1\n", 0} =
               System.cmd("redis-cli", ["-p", "#{server.port}", "PUBLISH", channel, payload])

      [_, received] =
        Regex.run(~r/message\n#{channel}\n(.*)\n/, read_until(cli, ~r/message\n.*\n.*\n/))

      received
    after
      close_cli(cli)
    end
  end

  defp notify_round_trip(server, channel, payload) do
    listener = open_cli("psql", ["-X", "-q", "-At" | BrokerServer.psql_args(server)])

    try do
      Port.command(listener, ~s(LISTEN "#{channel}";\nSELECT 'listening';\n))
      read_until(listener, ~r/listening\n/)

      {_, 0} =
        System.cmd("psql", [
          "-X",
          "-q",
          "-c",
          "SELECT pg_notify('#{channel}', '#{payload}')" | BrokerServer.psql_args(server)
        ])

      # psql reports notifications after the next command it runs.
      Port.command(listener, "SELECT 'poll';\n")
      out = read_until(listener, ~r/Asynchronous notification .* received/)
      [_, received] = Regex.run(~r/notification "#{channel}" with payload "(.*)" received/, out)
      received
    after
      close_cli(listener)
    end
  end

  defp amqp_url(server, vhost), do: "amqp://guest:guest@127.0.0.1:#{server.port}/#{vhost}"

  defp consume_one(url, queue) do
    task =
      Task.async(fn -> System.cmd("amqp-consume", ["-u", url, "-q", queue, "-c", "1", "cat"]) end)

    {out, 0} = Task.await(task, @wait)
    out
  end

  defp open_cli(program, args) do
    Port.open({:spawn_executable, System.find_executable(program)}, [
      :binary,
      :stderr_to_stdout,
      args: args
    ])
  end

  # Closing a port only closes the program's stdin; a subscribed redis-cli
  # does not read it.
  defp close_cli(cli) do
    case Port.info(cli, :os_pid) do
      {:os_pid, os_pid} -> System.cmd("kill", ["#{os_pid}"])
      nil -> :ok
    end

    Port.close(cli)
  rescue
    ArgumentError -> :ok
  end

  defp read_until(port, pattern, acc \\ "") do
    receive do
      {^port, {:data, data}} ->
        acc = acc <> data
        if acc =~ pattern, do: acc, else: read_until(port, pattern, acc)
    after
      @wait -> flunk("#{inspect(pattern)} not seen; output so far: #{inspect(acc)}")
    end
  end

  defp os_alive?(os_pid) do
    case File.read("/proc/#{os_pid}/stat") do
      # A zombie (exited, not yet reaped by init) is gone.
      {:ok, stat} -> not (stat =~ ~r/^\d+ \(.*\) Z /)
      {:error, _} -> false
    end
  end

  defp listening?(port) do
    case :gen_tcp.connect(~c"127.0.0.1", port, [], 1_000) do
      {:ok, socket} ->
        :gen_tcp.close(socket)
        true

      {:error, _} ->
        false
    end
  end
end
