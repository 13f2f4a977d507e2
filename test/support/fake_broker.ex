defmodule Yggdrasil.Test.FakeBroker do
  @moduledoc false
  # A TCP server in the test itself that speaks just enough Redis (RESP),
  # PostgreSQL or AMQP 0-9-1 to complete a client's handshake and
  # subscription, and then, on its first connection only, misbehaves: the
  # test's `act` function gets the socket once the subscription was
  # confirmed (or, with `on: :accept`, before any handshake). Every later
  # connection behaves, so the adapter can be seen reconnecting.
  #
  # The test process gets `{:fake, n, :subscribed}` and `{:fake, n, :closed}`
  # for each connection `n` (1, 2, ...).

  import Bitwise

  @type kind :: :redis | :postgres | :rabbitmq

  @doc """
  Starts listening on 127.0.0.1 (a free port) and returns the port.

  Options: `act: fun(socket) -> :continue | :silent` (what connection 1
  does; `:silent` reads and answers nothing more), `on: :subscribed |
  :accept` (when), `tune: {channel_max, frame_max, heartbeat}` (AMQP,
  connection 1's Tune; later ones get RabbitMQ's defaults).
  """
  def start!(kind, opts) do
    parent = self()

    {:ok, listen} =
      :gen_tcp.listen(0, [:binary, active: false, ip: {127, 0, 0, 1}, reuseaddr: true])

    {:ok, port} = :inet.port(listen)
    acceptor = spawn_link(fn -> accept(listen, kind, Map.new(opts), parent, 1) end)
    :ok = :gen_tcp.controlling_process(listen, acceptor)
    ExUnit.Callbacks.on_exit(fn -> Process.exit(acceptor, :kill) end)
    port
  end

  defp accept(listen, kind, opts, parent, n) do
    {:ok, socket} = :gen_tcp.accept(listen)
    pid = spawn(fn -> handle(kind, opts, parent, n) end)
    :ok = :gen_tcp.controlling_process(socket, pid)
    send(pid, {:socket, socket})
    accept(listen, kind, opts, parent, n + 1)
  end

  defp handle(kind, opts, parent, n) do
    socket = receive(do: ({:socket, socket} -> socket))
    first? = n == 1
    state = %{kind: kind, n: n, parent: parent, opts: if(first?, do: opts, else: %{})}

    if first? and opts[:on] == :accept do
      after_act(opts.act.(socket), socket, state)
    else
      if kind == :rabbitmq, do: {:ok, <<"AMQP", 0, 0, 9, 1>>} = :gen_tcp.recv(socket, 8)
      if kind == :rabbitmq, do: send_amqp(socket, 0, 10, 10, start_args())
      if kind == :postgres, do: startup(socket)
      serve(socket, state, <<>>)
    end
  end

  defp after_act(:silent, socket, state), do: silent(socket, state)
  defp after_act(:continue, socket, state), do: serve(socket, state, <<>>)

  defp silent(socket, state) do
    case :gen_tcp.recv(socket, 0) do
      {:ok, _} -> silent(socket, state)
      {:error, _} -> send(state.parent, {:fake, state.n, :closed})
    end
  end

  defp serve(socket, state, buffer) do
    case parse(state.kind, buffer) do
      {:ok, request, rest} ->
        case answer(state.kind, request, socket, state) do
          :subscribed ->
            send(state.parent, {:fake, state.n, :subscribed})

            case state.opts do
              %{act: act} -> after_act(act.(socket), socket, %{state | opts: %{}})
              _ -> serve(socket, state, rest)
            end

          :close ->
            :gen_tcp.close(socket)
            send(state.parent, {:fake, state.n, :closed})

          _ ->
            serve(socket, state, rest)
        end

      :more ->
        case :gen_tcp.recv(socket, 0) do
          {:ok, data} -> serve(socket, state, buffer <> data)
          {:error, _} -> send(state.parent, {:fake, state.n, :closed})
        end
    end
  end

  ## Redis: commands are arrays of bulk strings.

  defp parse(:redis, buffer) do
    with {:ok, count, rest} <- line(buffer, ?*), {:ok, args, rest} <- bulks(rest, count, []) do
      {:ok, args, rest}
    end
  end

  defp parse(:postgres, <<tag, length::32, rest::binary>>) when byte_size(rest) >= length - 4 do
    <<body::binary-size(length - 4), rest::binary>> = rest
    {:ok, {tag, body}, rest}
  end

  defp parse(:postgres, _), do: :more

  defp parse(:rabbitmq, <<type, channel::16, size::32, rest::binary>>)
       when byte_size(rest) > size do
    <<payload::binary-size(size), 0xCE, rest::binary>> = rest
    {:ok, {type, channel, payload}, rest}
  end

  defp parse(:rabbitmq, _), do: :more

  defp line(buffer, prefix) do
    case :binary.split(buffer, "\r\n") do
      [<<^prefix, n::binary>>, rest] -> {:ok, String.to_integer(n), rest}
      _ -> :more
    end
  end

  defp bulks(rest, 0, acc), do: {:ok, Enum.reverse(acc), rest}

  defp bulks(buffer, k, acc) do
    with {:ok, length, rest} <- line(buffer, ?$),
         <<arg::binary-size(length), "\r\n", rest::binary>> <- rest do
      bulks(rest, k - 1, [arg | acc])
    else
      _ -> :more
    end
  end

  defp answer(:redis, [command | args], socket, _state) do
    case String.upcase(command) do
      "PING" -> send_resp(socket, ["pong", ""])
      "PSUBSCRIBE" -> send_resp(socket, ["psubscribe", hd(args), 1])
      "PUNSUBSCRIBE" -> send_resp(socket, ["punsubscribe", hd(args), 0])
      _ -> :gen_tcp.send(socket, "+OK\r\n")
    end

    if String.upcase(command) == "PSUBSCRIBE", do: :subscribed, else: :ok
  end

  ## PostgreSQL: trust authentication, simple queries.

  defp answer(:postgres, {?Q, query}, socket, _state) do
    {reply, result} =
      case query do
        <<0>> -> {pg(?I, <<>>), :ok}
        "LISTEN " <> _ -> {pg(?C, "LISTEN\0"), :subscribed}
        "UNLISTEN " <> _ -> {pg(?C, "UNLISTEN\0"), :ok}
        _ -> {pg(?C, "SELECT 1\0"), :ok}
      end

    :gen_tcp.send(socket, [reply, pg(?Z, "I")])
    result
  end

  defp answer(:postgres, {?X, _}, _socket, _state), do: :close
  defp answer(:postgres, _, _socket, _state), do: :ok

  ## AMQP 0-9-1: what lapin asks for a consuming session.

  defp answer(:rabbitmq, {1, channel, <<class::16, method::16, args::binary>>}, socket, state) do
    case {class, method} do
      # Start-Ok: tune.
      {10, 11} ->
        {channel_max, frame_max, heartbeat} = state.opts[:tune] || {2047, 131_072, 0}
        send_amqp(socket, 0, 10, 30, <<channel_max::16, frame_max::32, heartbeat::16>>)

      {10, 31} ->
        :ok

      {10, 40} ->
        send_amqp(socket, 0, 10, 41, shortstr(""))

      {10, 50} ->
        send_amqp(socket, 0, 10, 51, <<>>)
        :close

      {20, 10} ->
        send_amqp(socket, channel, 20, 11, longstr(""))

      {20, 40} ->
        send_amqp(socket, channel, 20, 41, <<>>)

      {60, 10} ->
        send_amqp(socket, channel, 60, 11, <<>>)

      {50, 10} ->
        <<_::16, length, queue::binary-size(length), _::binary>> = args
        send_amqp(socket, channel, 50, 11, shortstr(queue) <> <<0::32, 0::32>>)

      {50, 20} ->
        send_amqp(socket, channel, 50, 21, <<>>)

      {50, 40} ->
        send_amqp(socket, channel, 50, 41, <<0::32>>)

      {85, 10} ->
        send_amqp(socket, channel, 85, 11, <<>>)

      {60, 20} ->
        <<_::16, q, _::binary-size(q), t, tag::binary-size(t), _::binary>> = args
        send_amqp(socket, channel, 60, 21, shortstr(tag))
        Process.put(:amqp_consumer, {channel, tag})
        :subscribed

      _ ->
        :ok
    end
  end

  defp answer(:rabbitmq, _heartbeat_or_content, _socket, _state), do: :ok

  defp startup(socket) do
    {:ok, <<length::32>>} = :gen_tcp.recv(socket, 4)
    {:ok, _parameters} = :gen_tcp.recv(socket, length - 4)

    :gen_tcp.send(socket, [
      pg(?R, <<0::32>>),
      pg(?S, "server_version\0" <> "16.0\0"),
      pg(?K, <<4242::32, 1::32>>),
      pg(?Z, "I")
    ])
  end

  ## Encoders, for the tests' misbehaviours too.

  @doc "A RESP reply: a list is an array, an integer an integer, a binary a bulk string."
  def resp(list) when is_list(list), do: ["*#{length(list)}\r\n" | Enum.map(list, &resp/1)]
  def resp(n) when is_integer(n), do: ":#{n}\r\n"
  def resp(bytes) when is_binary(bytes), do: "$#{byte_size(bytes)}\r\n#{bytes}\r\n"

  defp send_resp(socket, reply), do: :gen_tcp.send(socket, resp(reply))

  @doc "A PostgreSQL backend message."
  def pg(tag, body), do: <<tag, byte_size(body) + 4::32, body::binary>>

  @doc "An AMQP frame."
  def amqp_frame(type, channel, payload),
    do: <<type, channel::16, byte_size(payload)::32, payload::binary, 0xCE>>

  @doc "An AMQP method frame."
  def amqp_method(channel, class, method, args),
    do: amqp_frame(1, channel, <<class::16, method::16, args::binary>>)

  defp send_amqp(socket, channel, class, method, args),
    do: :gen_tcp.send(socket, amqp_method(channel, class, method, args))

  def shortstr(s), do: <<byte_size(s), s::binary>>
  def longstr(s), do: <<byte_size(s)::32, s::binary>>

  @doc "A field table of `{key, encoded value}` pairs (value = type byte + bytes)."
  def table(entries),
    do: longstr(Enum.map_join(entries, fn {key, value} -> shortstr(key) <> value end))

  @doc "A field table value nested `depth` tables deep."
  def nested_table(0), do: "F" <> table([])
  def nested_table(depth), do: "F" <> table([{"", nested_table(depth - 1)}])

  @doc "The consumer (channel, tag) this connection's handler confirmed."
  def amqp_consumer, do: Process.get(:amqp_consumer)

  @doc "A Basic.Deliver to the current consumer and its content header (`headers` a table)."
  def amqp_delivery(body_size, headers \\ nil) do
    {channel, tag} = amqp_consumer()
    deliver = shortstr(tag) <> <<1::64, 0>> <> shortstr("x") <> shortstr("k")

    {flags, properties} = if headers, do: {1 <<< 13, headers}, else: {0, <<>>}

    [
      amqp_method(channel, 60, 60, deliver),
      amqp_frame(2, channel, <<60::16, 0::16, body_size::64, flags::16, properties::binary>>)
    ]
  end

  defp start_args do
    properties = table([{"product", "S" <> longstr("fake")}])
    <<0, 9>> <> properties <> longstr("PLAIN AMQPLAIN") <> longstr("en_US")
  end

  ## What the VM holds.

  @doc "How many of the VM's OS threads are called `name`."
  def threads(name) do
    Path.wildcard("/proc/self/task/*/comm")
    |> Enum.count(fn comm -> File.read(comm) == {:ok, name <> "\n"} end)
  end
end
