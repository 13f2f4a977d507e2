defmodule Yggdrasil.Test.BrokerServer do
  @moduledoc false
  # Private Redis, PostgreSQL and RabbitMQ servers for ExUnit, through
  # test/brokers/ctl.sh (loopback, a free port, data in a temp dir, stopped by
  # pid). One started in a test (or `setup_all`) is stopped when that test
  # (or module) ends, also when it fails: `on_exit` stops it and waits; a
  # guard port stops it as well when the process that started it exits or the
  # VM dies in any way (the guard sees its stdin close).
  #
  #     server = BrokerServer.start!(:redis)
  #     Application.put_env(:yggdrasil, :redis, BrokerServer.config(server))
  #     server = BrokerServer.restart!(server)   # same port, same data
  #
  # RabbitMQ takes ~5 s and ~140 MB to start: `shared!(:rabbitmq)` starts one
  # per `mix test` run, for tests that neither stop nor restart it.

  defstruct [:kind, :port, :os_pid, :dir, :guard]

  @type kind :: :redis | :postgres | :rabbitmq
  @type t :: %__MODULE__{
          kind: kind(),
          port: :inet.port_number(),
          os_pid: pos_integer() | nil,
          dir: Path.t(),
          guard: port()
        }

  @kinds [:redis, :postgres, :rabbitmq]
  @ctl Path.expand("../brokers/ctl.sh", __DIR__)

  @doc "Path of test/brokers/ctl.sh."
  def ctl, do: @ctl

  @doc """
  Starts a private server of `kind` and waits until it accepts clients.
  Raises with ctl.sh's explanation when it cannot start. Options: `:port`
  (default: a free one).
  """
  @spec start!(kind(), keyword()) :: t()
  def start!(kind, opts \\ []) when kind in @kinds do
    dir = Path.join(System.tmp_dir!(), "ygg-#{kind}-#{System.pid()}-#{unique()}")
    File.mkdir_p!(dir)
    server = %__MODULE__{kind: kind, dir: dir, guard: open_guard(dir)}

    try do
      ctl_start!(server, opts[:port])
    rescue
      error ->
        cleanup(server)
        reraise error, __STACKTRACE__
    else
      started ->
        stop_on_exit(started)
        started
    end
  end

  @doc """
  Stops the server (by pid, waiting for it to exit) and keeps its directory
  and port for `start_again!/1`.
  """
  @spec stop!(t()) :: t()
  def stop!(%__MODULE__{} = server) do
    ctl!(["stop", server.dir])
    %{server | os_pid: nil}
  end

  @doc "Kills the server process with SIGKILL (a crash), then cleans up the rest."
  @spec kill!(t()) :: t()
  def kill!(%__MODULE__{os_pid: os_pid} = server) when is_integer(os_pid) do
    {_, _} = System.cmd("kill", ["-KILL", Integer.to_string(os_pid)], stderr_to_stdout: true)
    stop!(server)
  end

  @doc "Starts a stopped server again on the same port, with the same data."
  @spec start_again!(t()) :: t()
  def start_again!(%__MODULE__{os_pid: nil} = server), do: ctl_start!(server, server.port)

  @doc "`stop!/1` then `start_again!/1`."
  @spec restart!(t()) :: t()
  def restart!(%__MODULE__{} = server), do: server |> stop!() |> start_again!()

  @doc "Stops the server and removes its directory. Safe to call twice."
  @spec cleanup(t()) :: :ok
  def cleanup(%__MODULE__{} = server) do
    {_, _} = System.cmd(@ctl, ["stop", server.dir], stderr_to_stdout: true)
    File.rm_rf(server.dir)
    close_guard(server.guard)
  end

  @doc """
  A server of `kind` started once per test run and stopped when the VM exits;
  tests must not stop or restart it. Isolate tests on it by names (a vhost,
  exchange, channel or database of their own).
  """
  @spec shared!(kind()) :: t()
  def shared!(kind) when kind in @kinds, do: __MODULE__.Shared.get!(kind)

  @doc "The `config :yggdrasil, <kind>: ...` keys that reach `server`."
  @spec config(t()) :: keyword()
  def config(%__MODULE__{kind: :redis, port: port}), do: [hostname: "127.0.0.1", port: port]

  def config(%__MODULE__{kind: :postgres, port: port}) do
    [
      hostname: "127.0.0.1",
      port: port,
      username: "postgres",
      password: "postgres",
      database: "postgres"
    ]
  end

  def config(%__MODULE__{kind: :rabbitmq, port: port}) do
    [
      hostname: "127.0.0.1",
      port: port,
      username: "guest",
      password: "guest",
      virtual_host: "/"
    ]
  end

  @doc "Runs `rabbitmqctl ARGS` against a RabbitMQ server (e.g. `add_vhost`); raises on failure."
  @spec rabbitmqctl!(t(), [String.t()]) :: String.t()
  def rabbitmqctl!(%__MODULE__{kind: :rabbitmq} = server, args),
    do: ctl!(["rabbitmqctl", server.dir | args])

  @doc "Arguments that point `psql` at a PostgreSQL server (trust auth, user `postgres`)."
  @spec psql_args(t()) :: [String.t()]
  def psql_args(%__MODULE__{kind: :postgres, port: port}),
    do: ["-h", "127.0.0.1", "-p", Integer.to_string(port), "-U", "postgres", "-d", "postgres"]

  ## Internals

  defp ctl_start!(server, port) do
    args = ["start", Atom.to_string(server.kind), server.dir] ++ List.wrap(port && "#{port}")

    [port, os_pid] =
      ctl!(args) |> String.split("\n", trim: true) |> List.last() |> String.split(" ")

    %{server | port: String.to_integer(port), os_pid: String.to_integer(os_pid)}
  end

  defp ctl!(args) do
    case System.cmd(@ctl, args, stderr_to_stdout: true) do
      {out, 0} -> out
      {out, status} -> raise "ctl.sh #{Enum.join(args, " ")} exited with #{status}:\n#{out}"
    end
  end

  # The guard is a shell that blocks reading its stdin: when the port closes
  # (the owner exited, `cleanup/1`, or the VM died) it stops what runs in
  # `dir` and removes `dir`.
  defp open_guard(dir) do
    script = ~S"""
    read -r _ignored
    "$1" stop "$2" >/dev/null 2>&1
    rm -rf "$2"
    """

    Port.open({:spawn_executable, "/bin/sh"}, [
      :binary,
      args: ["-c", script, "broker-guard", @ctl, dir]
    ])
  end

  defp close_guard(guard) do
    Port.close(guard)
    :ok
  rescue
    # Already closed, by its owner's exit.
    ArgumentError -> :ok
  end

  defp stop_on_exit(server) do
    ExUnit.Callbacks.on_exit({__MODULE__, server.dir}, fn -> cleanup(server) end)
  rescue
    # Not called from a test process: the guard alone stops the server.
    ArgumentError -> :ok
  end

  defp unique, do: System.unique_integer([:positive])

  defmodule Shared do
    @moduledoc false
    # Owns the shared servers (and so their guard ports) for the whole run,
    # unlinked from any test; stops them from `System.at_exit/1`.
    use GenServer

    alias Yggdrasil.Test.BrokerServer

    def get!(kind) do
      case GenServer.call(ensure_started(), {:get, kind}, :infinity) do
        {:ok, server} -> server
        {:error, error} -> raise error
      end
    end

    defp ensure_started do
      case GenServer.start(__MODULE__, nil, name: __MODULE__) do
        {:ok, pid} -> pid
        {:error, {:already_started, pid}} -> pid
      end
    end

    @impl true
    def init(nil) do
      System.at_exit(fn _status -> stop_all() end)
      {:ok, %{}}
    end

    @impl true
    def handle_call({:get, kind}, _from, servers) do
      case servers do
        %{^kind => server} ->
          {:reply, {:ok, server}, servers}

        _ ->
          try do
            BrokerServer.start!(kind)
          rescue
            error -> {:reply, {:error, error}, servers}
          else
            server -> {:reply, {:ok, server}, Map.put(servers, kind, server)}
          end
      end
    end

    def handle_call(:stop_all, _from, servers) do
      Enum.each(servers, fn {_kind, server} -> BrokerServer.cleanup(server) end)
      {:reply, :ok, %{}}
    end

    defp stop_all do
      case Process.whereis(__MODULE__) do
        nil -> :ok
        pid -> GenServer.call(pid, :stop_all, :infinity)
      end
    end
  end
end
