defmodule Yggdrasil.Test.RedisCli do
  @moduledoc false
  # redis-cli as the independent side of the :redis interop tests: it
  # publishes exact bytes (read from a file with `-x`, so NUL and newlines
  # survive) and subscribes, printing what it receives in its quoted form
  # (`--no-raw`), which is decoded back to the exact bytes here. Against a
  # TLS server it speaks TLS (BrokerServer.redis_cli_args/1).

  @behaviour Yggdrasil.Test.BrokerCase

  alias Yggdrasil.Test.BrokerServer

  defstruct [:port, :os_pid, buffer: ""]

  @wait 10_000

  @impl true
  def broker, do: :redis

  @impl true
  def name(_server, prefix), do: "#{prefix}.#{System.unique_integer([:positive])}"

  @impl true
  def metadata(name), do: %{channel: name}

  @impl true
  def payloads, do: Yggdrasil.Test.BrokerCase.byte_payloads()

  @impl true
  def bad_names, do: [42, :orders, {"a", "b"}, "", ~c"chars", %{}, nil]

  @doc "PUBLISH `payload` (any bytes) on `channel`; returns the receiver count."
  @impl true
  def publish!(%BrokerServer{} = server, channel, payload) do
    file = Path.join(System.tmp_dir!(), "ygg-redis-cli-#{System.unique_integer([:positive])}")
    File.write!(file, payload)

    try do
      {out, 0} =
        System.cmd("sh", [
          "-c",
          ~S(channel=$1 file=$2; shift 2; exec redis-cli "$@" -x publish "$channel" < "$file"),
          "sh",
          channel,
          file | BrokerServer.redis_cli_args(server)
        ])

      String.to_integer(String.trim(out))
    after
      File.rm(file)
    end
  end

  @doc "Runs a redis-cli command; its output, trimmed."
  def cmd!(%BrokerServer{} = server, args) do
    {out, 0} = System.cmd("redis-cli", BrokerServer.redis_cli_args(server) ++ args)
    String.trim(out)
  end

  @doc "The clients connected to the server, except the one asking."
  @impl true
  def clients!(server) do
    server
    |> cmd!(["client", "list"])
    |> String.split("\n", trim: true)
    |> Enum.reject(&(&1 =~ "cmd=client|list"))
  end

  @doc "A redis-cli SUBSCRIBE (or PSUBSCRIBE) on `channel`, once the server confirmed it."
  @impl true
  def subscribe!(%BrokerServer{} = server, channel, command \\ "subscribe") do
    port =
      Port.open({:spawn_executable, System.find_executable("redis-cli")}, [
        :binary,
        :exit_status,
        args: ["--no-raw" | BrokerServer.redis_cli_args(server)] ++ [command, channel]
      ])

    {:os_pid, os_pid} = Port.info(port, :os_pid)
    cli = %__MODULE__{port: port, os_pid: os_pid}
    # The confirmation: the subscription count, the third line of its reply.
    {_line, cli} = next_line!(cli, &(&1 =~ "(integer) 1"))
    cli
  end

  @doc "The next `n` payloads the subscriber received, decoded to exact bytes."
  @impl true
  def messages!(cli, n), do: messages!(cli, n, [])

  defp messages!(cli, 0, acc), do: {Enum.reverse(acc), cli}

  defp messages!(cli, n, acc) do
    # A message is `1) "message"`, `2) "channel"`, `3) "payload"`; a
    # pmessage has the pattern before the channel, so its payload is line 4.
    {kind, cli} = next_line!(cli, &(&1 =~ ~r/^1\) "p?message"$/))
    {lines, cli} = take_lines(cli, if(kind =~ "pmessage", do: 3, else: 2), [])
    messages!(cli, n - 1, [unquote_repr(List.last(lines)) | acc])
  end

  defp take_lines(cli, 0, acc), do: {Enum.reverse(acc), cli}

  defp take_lines(cli, k, acc) do
    {line, cli} = next_line!(cli, fn _ -> true end)
    take_lines(cli, k - 1, [line | acc])
  end

  @doc "Stops the subscriber (by its pid)."
  @impl true
  def stop(%__MODULE__{port: port, os_pid: os_pid}) do
    System.cmd("kill", ["-TERM", "#{os_pid}"], stderr_to_stdout: true)
    Port.close(port)
    :ok
  rescue
    ArgumentError -> :ok
  end

  # Reads lines until one satisfies `pred`.
  defp next_line!(cli, pred) do
    case String.split(cli.buffer, "\n", parts: 2) do
      [line, rest] ->
        cli = %{cli | buffer: rest}
        if pred.(line), do: {line, cli}, else: next_line!(cli, pred)

      [_partial] ->
        port = cli.port

        receive do
          {^port, {:data, data}} -> next_line!(%{cli | buffer: cli.buffer <> data}, pred)
          {^port, {:exit_status, status}} -> raise "redis-cli exited with #{status}"
        after
          @wait -> raise "redis-cli printed nothing expected within #{@wait} ms: #{cli.buffer}"
        end
    end
  end

  # redis-cli's quoted form (sdscatrepr): \n \r \t \a \b \" \\ and \xHH.
  @doc false
  def unquote_repr(line) do
    [_, quoted] = Regex.run(~r/^\d+\) "(.*)"$/s, line)
    unescape(quoted, <<>>)
  end

  defp unescape(<<>>, acc), do: acc

  defp unescape(<<"\\x", hex::binary-size(2), rest::binary>>, acc),
    do: unescape(rest, <<acc::binary, String.to_integer(hex, 16)>>)

  defp unescape(<<"\\n", rest::binary>>, acc), do: unescape(rest, <<acc::binary, ?\n>>)
  defp unescape(<<"\\r", rest::binary>>, acc), do: unescape(rest, <<acc::binary, ?\r>>)
  defp unescape(<<"\\t", rest::binary>>, acc), do: unescape(rest, <<acc::binary, ?\t>>)
  defp unescape(<<"\\a", rest::binary>>, acc), do: unescape(rest, <<acc::binary, 7>>)
  defp unescape(<<"\\b", rest::binary>>, acc), do: unescape(rest, <<acc::binary, 8>>)
  defp unescape(<<"\\", c, rest::binary>>, acc), do: unescape(rest, <<acc::binary, c>>)
  defp unescape(<<c, rest::binary>>, acc), do: unescape(rest, <<acc::binary, c>>)
end
