defmodule Yggdrasil.Test.AmqpTools do
  @moduledoc false
  # amqp-tools (and rabbitmqctl) as the independent side of the :rabbitmq
  # interop tests. amqp-publish reads the body from a file on stdin (so any
  # bytes survive); amqp-consume binds its own queue and runs a script per
  # message that writes the body to a numbered file. Channel names are
  # {"amq.topic", routing_key}: that exchange exists in every virtual host.
  # Against a TLS server they speak TLS, verifying the server's cert and name
  # (BrokerServer.amqp_tools_args/2).
  @behaviour Yggdrasil.Test.BrokerCase

  alias Yggdrasil.Test.BrokerServer

  defstruct [:port, :os_pid, :dir]

  @wait 15_000
  @exchange "amq.topic"

  @impl true
  def broker, do: :rabbitmq

  @impl true
  def name(_server, prefix), do: {@exchange, "#{prefix}.#{System.unique_integer([:positive])}"}

  @impl true
  def metadata({_exchange, routing_key}),
    do: %{routing_key: routing_key, message_id: nil, headers: nil}

  @impl true
  def payloads, do: Yggdrasil.Test.BrokerCase.byte_payloads()

  @impl true
  def bad_names do
    [
      42,
      "just a binary",
      {"", "key"},
      {@exchange},
      {:amq, "key"},
      {@exchange, 42},
      {String.duplicate("e", 256), "key"},
      {@exchange, <<255>>},
      nil
    ]
  end

  @doc "The AMQP URL of `vhost` on the server (amqps:// on a TLS server)."
  def url(%BrokerServer{} = server, vhost \\ "/") do
    ["-u", url | _] = BrokerServer.amqp_tools_args(server, vhost)
    url
  end

  @impl true
  def publish!(server, name, payload), do: publish!(server, name, payload, [])

  @doc "amqp-publish with extra arguments (`-H 'key: value'`, `-C type`, `--vhost`...)."
  def publish!(server, {exchange, routing_key}, payload, extra, vhost \\ "/") do
    file = tmp_path("body")
    File.write!(file, payload)

    try do
      {_, 0} =
        System.cmd(
          "sh",
          [
            "-c",
            ~S(ex=$1 key=$2 file=$3; shift 3; exec amqp-publish -e "$ex" -r "$key" "$@" < "$file"),
            "sh",
            exchange,
            routing_key,
            file | BrokerServer.amqp_tools_args(server, vhost) ++ extra
          ],
          stderr_to_stdout: true
        )
    after
      File.rm(file)
    end
  end

  @impl true
  def subscribe!(server, name), do: subscribe!(server, name, "/")

  @doc "amqp-consume on `name` in `vhost`, once RabbitMQ shows its binding."
  def subscribe!(server, {exchange, routing_key}, vhost) do
    dir = tmp_path("consume")
    File.mkdir_p!(Path.join(dir, "messages"))
    script = Path.join(dir, "save.sh")

    File.write!(script, """
    #!/bin/sh
    n=$(ls "#{dir}/messages" | wc -l)
    cat > "#{dir}/messages/$(printf %06d "$n").tmp"
    mv "#{dir}/messages/$(printf %06d "$n").tmp" "#{dir}/messages/$(printf %06d "$n")"
    """)

    File.chmod!(script, 0o755)

    port =
      Port.open({:spawn_executable, System.find_executable("amqp-consume")}, [
        :binary,
        :stderr_to_stdout,
        args:
          BrokerServer.amqp_tools_args(server, vhost) ++
            ["-e", exchange, "-r", routing_key, "-x", script]
      ])

    {:os_pid, os_pid} = Port.info(port, :os_pid)
    handle = %__MODULE__{port: port, os_pid: os_pid, dir: dir}
    wait_for_binding!(server, vhost, exchange, routing_key, deadline())
    handle
  end

  @impl true
  def messages!(handle, n), do: messages!(handle, n, deadline())

  defp messages!(handle, n, deadline) do
    files =
      Path.join(handle.dir, "messages")
      |> File.ls!()
      |> Enum.reject(&String.ends_with?(&1, ".tmp"))
      |> Enum.sort()

    cond do
      length(files) >= n ->
        bodies =
          files |> Enum.take(n) |> Enum.map(&File.read!(Path.join([handle.dir, "messages", &1])))

        {bodies, handle}

      System.monotonic_time(:millisecond) > deadline ->
        raise "amqp-consume received #{length(files)} of #{n} messages"

      true ->
        Process.sleep(50)
        messages!(handle, n, deadline)
    end
  end

  @impl true
  def stop(%__MODULE__{port: port, os_pid: os_pid, dir: dir}) do
    System.cmd("kill", ["-TERM", "#{os_pid}"], stderr_to_stdout: true)
    File.rm_rf(dir)

    try do
      Port.close(port)
    rescue
      ArgumentError -> :ok
    end

    :ok
  end

  @impl true
  def clients!(server) do
    server
    |> BrokerServer.rabbitmqctl!(["list_connections", "-q", "--no-table-headers", "name"])
    |> String.split("\n", trim: true)
  end

  @doc "Creates `vhost` with full permissions for guest; deleted when the test ends."
  def add_vhost!(server, vhost) do
    BrokerServer.rabbitmqctl!(server, ["add_vhost", vhost])
    BrokerServer.rabbitmqctl!(server, ["set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"])

    ExUnit.Callbacks.on_exit(fn ->
      System.cmd(BrokerServer.ctl(), ["rabbitmqctl", server.dir, "delete_vhost", vhost],
        stderr_to_stdout: true
      )
    end)

    vhost
  end

  @doc "Declares a topic exchange in vhost \"/\" (amqp-tools cannot)."
  def declare_exchange!(server, name) do
    BrokerServer.rabbitmqctl!(server, [
      "eval",
      ~s|rabbit_exchange:declare(rabbit_misc:r(<<"/">>, exchange, <<"#{name}">>), topic, false, false, false, [], <<"yggdrasil-test">>).|
    ])
  end

  defp wait_for_binding!(server, vhost, exchange, routing_key, deadline) do
    bindings =
      BrokerServer.rabbitmqctl!(server, [
        "list_bindings",
        "-p",
        vhost,
        "-q",
        "--no-table-headers",
        "source_name",
        "routing_key"
      ])

    cond do
      bindings =~ "#{exchange}\t#{routing_key}\n" ->
        :ok

      System.monotonic_time(:millisecond) > deadline ->
        raise "amqp-consume's binding of #{routing_key} did not show up: #{bindings}"

      true ->
        Process.sleep(100)
        wait_for_binding!(server, vhost, exchange, routing_key, deadline)
    end
  end

  defp deadline, do: System.monotonic_time(:millisecond) + @wait

  defp tmp_path(what),
    do: Path.join(System.tmp_dir!(), "ygg-amqp-#{what}-#{System.unique_integer([:positive])}")
end
