defmodule Yggdrasil.Test.Psql do
  @moduledoc false
  # psql as the independent side of the :postgres interop tests: NOTIFY with
  # the channel quoted as an identifier and the payload as a literal, and a
  # LISTEN session whose notifications are read back exactly. psql prints a
  # notification after the next command it runs, so reading polls with
  # numbered markers. Against a TLS server it connects with
  # sslmode=verify-full (BrokerServer.psql_args/1).
  @behaviour Yggdrasil.Test.BrokerCase

  alias Yggdrasil.Test.BrokerServer

  defstruct [:port, :os_pid, buffer: "", polls: 0]

  @wait 10_000

  @impl true
  def broker, do: :postgres

  @impl true
  def name(_server, prefix), do: "#{prefix}_#{System.unique_integer([:positive])}"

  @impl true
  def metadata(name), do: %{channel: name}

  @impl true
  def payloads, do: Yggdrasil.Test.BrokerCase.text_payloads()

  @impl true
  def bad_names do
    [42, :orders, {"a", "b"}, "", String.duplicate("a", 64), <<255, 1>>, <<"nul", 0>>, nil]
  end

  @doc "`\"name\"`: an SQL identifier, any characters."
  def identifier(name), do: ~s(") <> String.replace(name, ~s("), ~s("")) <> ~s(")

  @doc "`'text'`: an SQL string literal (standard_conforming_strings)."
  def literal(text), do: "'" <> String.replace(text, "'", "''") <> "'"

  @doc "Runs SQL in a psql of its own; its output."
  def sql!(server, sql) do
    {out, 0} =
      System.cmd("psql", ["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql | args(server)],
        stderr_to_stdout: true
      )

    out
  end

  @impl true
  def publish!(server, name, payload),
    do: sql!(server, "NOTIFY #{identifier(name)}, #{literal(payload)}")

  @impl true
  def clients!(server) do
    server
    |> sql!(
      "SELECT pid FROM pg_stat_activity " <>
        "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
    )
    |> String.split("\n", trim: true)
  end

  @doc "An interactive psql session (for LISTEN, or a transaction)."
  def session!(server) do
    port =
      Port.open({:spawn_executable, System.find_executable("psql")}, [
        :binary,
        :stderr_to_stdout,
        args: ["-X", "-q", "-At" | args(server)]
      ])

    {:os_pid, os_pid} = Port.info(port, :os_pid)
    %__MODULE__{port: port, os_pid: os_pid}
  end

  @doc "Runs `sql` in the session and waits until psql has done it."
  def run!(session, sql) do
    marker = "done_#{session.polls}"
    Port.command(session.port, sql <> "\nSELECT '#{marker}';\n")
    read_until!(%{session | polls: session.polls + 1}, marker <> "\n")
  end

  @impl true
  def subscribe!(server, name), do: server |> session!() |> run!("LISTEN #{identifier(name)};")

  @impl true
  def messages!(session, n), do: messages!(session, n, [], System.monotonic_time(:millisecond))

  # psql leaves out `with payload "..."` for an empty payload.
  @notification ~r/Asynchronous notification ".*?"(?: with payload "(.*?)")? received from server process with PID \d+\.\n/s

  defp messages!(session, 0, acc, _started), do: {Enum.reverse(acc), session}

  defp messages!(session, n, acc, started) do
    case Regex.run(@notification, session.buffer, return: :index) do
      [{start, length} | payload_at] ->
        payload =
          case payload_at do
            [{at, size}] when at >= 0 -> binary_part(session.buffer, at, size)
            _ -> ""
          end

        rest =
          binary_part(session.buffer, start + length, byte_size(session.buffer) - start - length)

        messages!(%{session | buffer: rest}, n - 1, [payload | acc], started)

      nil ->
        if System.monotonic_time(:millisecond) - started > @wait,
          do: raise("psql printed #{length(acc)} of the notifications: #{session.buffer}")

        Process.sleep(50)
        session |> run!("") |> messages!(n, acc, started)
    end
  end

  @impl true
  def stop(%__MODULE__{port: port, os_pid: os_pid}) do
    System.cmd("kill", ["-TERM", "#{os_pid}"], stderr_to_stdout: true)
    Port.close(port)
    :ok
  rescue
    ArgumentError -> :ok
  end

  defp read_until!(session, marker) do
    if String.contains?(session.buffer, marker) do
      session
    else
      port = session.port

      receive do
        {^port, {:data, data}} -> read_until!(%{session | buffer: session.buffer <> data}, marker)
      after
        @wait -> raise "psql did not print #{inspect(marker)}: #{session.buffer}"
      end
    end
  end

  defp args(server), do: BrokerServer.psql_args(server)
end
