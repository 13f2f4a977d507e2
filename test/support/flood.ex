defmodule Yggdrasil.Test.Flood do
  @moduledoc false
  # Subscribers that check, under a broker flood, the contract of
  # docs/guarantees.md "Brokers under load": numbered events arrive in
  # strictly increasing order, every gap in the numbers lies between a
  # `Y_DISCONNECTED` and the next `Y_CONNECTED`, no event arrives while
  # disconnected, and a marker published after the flood arrives (or, if
  # it does not, the recorder was told since `mark/1`). Each recorder
  # keeps counts and its first few violations, not the messages. The
  # floods themselves (`flood!/3`) run each broker's own tools.
  #
  #     recorders = Flood.recorders!(channel, 2_000, "marker")
  #     Flood.flood!(server, channel.name, 4)
  #     Flood.mark(recorders)
  #     ... publish "marker" ...
  #     %{got: got, latency_ms: ms} = Flood.await_marker(recorders, published_at, 10_000)
  #     %{violations: 0, not_connected: 0} = Flood.summary(recorders)

  import ExUnit.Assertions
  import Yggdrasil.Test.Helpers, only: [broker_senders: 0, rss: 0]

  alias Yggdrasil.Test.BrokerServer

  defstruct [
    :parent,
    :marker,
    ready: false,
    connected: false,
    got_marker: false,
    since_mark: nil,
    told: false,
    last: 0,
    events: 0,
    numbered: 0,
    disconnects: 0,
    violations: 0,
    examples: []
  ]

  @examples 3
  @wait 30_000
  # The longest RabbitMQ may take to read what the flood tools wrote.
  @drain_wait 120_000

  @doc """
  `n` processes subscribed to `channel` (linked to the caller), once each
  has its `Y_CONNECTED`. Payloads that are decimal integers are sequence
  numbers, `marker` is the marker, anything else is ignored.
  """
  def recorders!(channel, n, marker) do
    parent = self()

    pids =
      for _ <- 1..n do
        spawn_link(fn ->
          # As a subscriber expecting bursts should (docs/guarantees.md): the
          # memory bound is then on what we hold, not on how far the BEAM
          # grows each recipient's heap for a burst waiting in its mailbox
          # (that growth, the same for a bare send/2, is what `make
          # bench-brokers` reports beside it).
          Process.flag(:message_queue_data, :off_heap)
          :ok = Yggdrasil.subscribe(channel)
          loop(%__MODULE__{parent: parent, marker: marker})
        end)
      end

    for pid <- pids, do: assert_receive({:flood_ready, ^pid}, @wait)
    pids
  end

  defp loop(state) do
    receive do
      {:Y_EVENT, _channel, payload} ->
        loop(event(%{state | events: state.events + 1}, payload))

      {:Y_CONNECTED, _channel} ->
        unless state.ready, do: send(state.parent, {:flood_ready, self()})
        loop(%{state | connected: true, ready: true})

      {:Y_DISCONNECTED, _channel} ->
        if state.connected,
          do: loop(disconnected(state)),
          else: loop(violation(state, :disconnected_twice))

      :flood_mark ->
        loop(%{state | since_mark: 0})

      {:flood_report, from, ref} ->
        send(from, {ref, Map.drop(state, [:__struct__, :parent, :marker, :ready, :told])})
        loop(state)
    end
  end

  defp disconnected(%{since_mark: since} = state) do
    since = since && since + 1
    %{state | connected: false, told: true, disconnects: state.disconnects + 1, since_mark: since}
  end

  # amqp-publish -l sends each line with its newline.
  defp event(state, line) do
    payload = String.trim_trailing(line, "\n")
    state = if state.connected, do: state, else: violation(state, {:while_disconnected, payload})

    cond do
      payload == state.marker ->
        send(state.parent, {:flood_marker, self(), System.monotonic_time(:millisecond)})
        %{state | told: false, got_marker: true}

      match?({_, ""}, Integer.parse(payload)) ->
        {seq, ""} = Integer.parse(payload)
        numbered(state, seq)

      true ->
        state
    end
  end

  defp numbered(%{last: last} = state, seq) do
    state =
      cond do
        seq <= last -> violation(state, {:not_increasing, last, seq})
        seq > last + 1 and not state.told -> violation(state, {:gap_untold, last, seq})
        true -> state
      end

    %{state | last: max(seq, last), numbered: state.numbered + 1, told: false}
  end

  defp violation(state, what) do
    examples = if state.violations < @examples, do: [what | state.examples], else: state.examples
    %{state | violations: state.violations + 1, examples: examples}
  end

  @doc "Stops the recorders (unlinked first)."
  def stop(pids) do
    for pid <- pids do
      Process.unlink(pid)
      Process.exit(pid, :kill)
    end

    :ok
  end

  @doc "Tells the recorders the marker is about to be published: `summary/1` counts notices since."
  def mark(pids), do: Enum.each(pids, &send(&1, :flood_mark))

  @doc """
  Waits until every recorder got the marker, at most `timeout` ms; returns
  how many got it and the milliseconds from `published_at` to the last
  arrival (nil if none arrived).
  """
  def await_marker(pids, published_at, timeout) do
    arrivals = arrivals(MapSet.new(pids), published_at + timeout, [])
    %{got: length(arrivals), latency_ms: arrivals != [] && Enum.max(arrivals) - published_at}
  end

  defp arrivals(waiting, deadline, acc) do
    if MapSet.size(waiting) == 0 do
      acc
    else
      receive do
        {:flood_marker, pid, at} -> arrivals(MapSet.delete(waiting, pid), deadline, [at | acc])
      after
        max(deadline - System.monotonic_time(:millisecond), 0) -> acc
      end
    end
  end

  @doc """
  What the recorders saw, totalled: `:disconnected` (recorders told at
  least once), `:disconnects` (notices), `:marker_lost_untold` (recorders
  without the marker and without a notice since `mark/1`), `:not_connected` (recorders whose
  last notice is not `Y_CONNECTED`), `:violations` (recorders that saw
  one) with `:examples` (a few of them), `:events` (events delivered),
  `:numbered` (numbered events delivered) and `:highest` (the highest
  number delivered).
  """
  def summary(pids) do
    reports = Enum.map(pids, &report/1)
    violating = Enum.filter(reports, &(&1.violations > 0))

    %{
      disconnected: Enum.count(reports, &(&1.disconnects > 0)),
      disconnects: Enum.sum(Enum.map(reports, & &1.disconnects)),
      not_connected: Enum.count(reports, &(not &1.connected)),
      violations: length(violating),
      marker_lost_untold: Enum.count(reports, &(not &1.got_marker and &1.since_mark == 0)),
      examples: violating |> Enum.take(3) |> Enum.map(&Enum.reverse(&1.examples)),
      events: Enum.sum(Enum.map(reports, & &1.events)),
      numbered: Enum.sum(Enum.map(reports, & &1.numbered)),
      highest: reports |> Enum.map(& &1.last) |> Enum.max()
    }
  end

  defp report(pid) do
    ref = make_ref()
    send(pid, {:flood_report, self(), ref})
    assert_receive {^ref, report}, @wait
    report
  end

  @doc """
  Runs `fun` while sampling every 50 ms the VM's RSS, the memory of its
  processes (the subscribers' mailboxes among them) and the deepest broker
  sender mailbox; returns `{result, %{rss: peak, processes: peak, senders:
  peak}}`.
  """
  def with_peaks(fun) do
    sampler = spawn_link(fn -> sample(peaks(%{rss: 0, processes: 0, senders: 0})) end)
    result = fun.()
    ref = make_ref()
    send(sampler, {:peaks, self(), ref})
    assert_receive {^ref, peaks}, @wait
    {result, peaks}
  end

  @doc "The VM's RSS and its processes' memory now, bytes."
  def memory, do: %{rss: rss(), processes: :erlang.memory(:processes)}

  defp peaks(peaks) do
    now = Map.put(memory(), :senders, senders_waiting())
    Map.merge(peaks, now, fn _, a, b -> max(a, b) end)
  end

  # The most fan-outs waiting in one broker sender's mailbox.
  defp senders_waiting do
    for pid <- broker_senders(),
        is_pid(pid),
        {:message_queue_len, n} <- [Process.info(pid, :message_queue_len)],
        reduce: 0,
        do: (deepest -> max(deepest, n))
  end

  defp sample(peaks) do
    receive do
      {:peaks, from, ref} -> send(from, {ref, peaks(peaks)})
    after
      50 -> sample(peaks(peaks))
    end
  end

  @doc """
  Floods `name` on `server` for `seconds` with the broker's own tools and
  returns when the flood is over at the broker: redis-benchmark `PUBLISH`
  beside a `redis-cli --pipe` of numbered `PUBLISH`es; psql running
  `pg_notify` over `generate_series` (numbered), one statement of 5,000
  after another (both taken as over when the tools have exited); two
  `amqp-publish -l`, one of numbered lines, one of `yes` (over once
  RabbitMQ has read all they wrote, see `drained/3`). Returns the
  milliseconds from the tools' exit to the end of the flood at the broker
  (nil for Redis and PostgreSQL).
  """
  def flood!(%BrokerServer{kind: :redis, port: port}, name, seconds) do
    port = Integer.to_string(port)
    benchmark = ~w(-h 127.0.0.1 -p #{port} -c 4 -P 16 -n 1000000000 -q PUBLISH) ++ [name, "flood"]

    run_together(seconds, [
      {"redis-benchmark", benchmark},
      {"sh", ["-c", numbered_redis(1_000_000_000), "sh", name, port]}
    ])

    nil
  end

  def flood!(%BrokerServer{kind: :postgres} = server, name, seconds) do
    script = ~S"""
    name=$1; shift
    seq 0 1000000 | while read -r k; do
      echo "SELECT count(pg_notify('$name', i::text)) FROM generate_series($k * 5000 + 1, $k * 5000 + 5000) i;"
    done | psql -X -q -At "$@" >/dev/null
    """

    run_together(seconds, [{"sh", ["-c", script, "sh", name | BrokerServer.psql_args(server)]}])
    nil
  end

  def flood!(%BrokerServer{kind: :rabbitmq} = server, {exchange, key}, seconds) do
    script = ~S"""
    ex=$1 key=$2 lines=$3; shift 3
    $lines | amqp-publish -l -e "$ex" -r "$key" "$@"
    """

    args = BrokerServer.amqp_tools_args(server)
    before = amqp_tools_connections(server)

    run_together(
      seconds,
      for(
        lines <- ["seq 1 1000000000", "yes flood"],
        do: {"sh", ["-c", script, "sh", exchange, key, lines | args]}
      )
    )

    exited = System.monotonic_time(:millisecond)
    drained(server, before, exited + @drain_wait)
    System.monotonic_time(:millisecond) - exited
  end

  # RabbitMQ goes on publishing a flood for seconds after amqp-publish
  # exited (3 to 21 s in the flood test on the shared 2-core machine): what
  # the tools wrote waits in the kernel's buffers of their connections
  # (net.ipv4.tcp_rmem let a receive buffer grow to 32 MB there: hundreds of
  # thousands of small messages), which RabbitMQ reads at its own pace and
  # routes behind anything published meanwhile. It closes a connection once
  # it has read it to the end: the flood is over when none of the tools'
  # connections (made during the flood by rabbitmq-c, amqp-publish's
  # library) is left.
  defp drained(server, before, deadline) do
    left = amqp_tools_connections(server) -- before

    cond do
      left == [] ->
        :ok

      System.monotonic_time(:millisecond) > deadline ->
        flunk("RabbitMQ still reads the flood tools' connections #{inspect(left)}")

      true ->
        Process.sleep(200)
        drained(server, before, deadline)
    end
  end

  defp amqp_tools_connections(server) do
    server
    |> BrokerServer.rabbitmqctl!(
      ~w(list_connections -q --no-table-headers name client_properties)
    )
    |> String.split("\n", trim: true)
    |> Enum.filter(&String.contains?(&1, ~s("rabbitmq-c")))
    |> Enum.map(&(&1 |> String.split("\t") |> hd()))
  end

  @doc """
  Publishes the numbers 1 to `count` on `name`, pipelined by one
  `redis-cli --pipe`; returns when it has exited.
  """
  def publish_numbered!(%BrokerServer{kind: :redis, port: port}, name, count) do
    {out, status} =
      System.cmd("sh", ["-c", numbered_redis(count), "sh", name, Integer.to_string(port)],
        stderr_to_stdout: true
      )

    assert status == 0, "redis-cli --pipe failed: #{out}"
  end

  # A shell script publishing 1..count on $1 to the redis-server at port $2.
  defp numbered_redis(count),
    do:
      ~s(seq 1 #{count} | sed "s/^/PUBLISH $1 /" | redis-cli -h 127.0.0.1 -p "$2" --pipe >/dev/null)

  # Each command stopped by `timeout` after `seconds` (its whole process
  # group: pipelines included); each must have run until then.
  defp run_together(seconds, commands) do
    commands
    |> Enum.map(fn {cmd, args} ->
      Task.async(fn ->
        System.cmd("timeout", ["-s", "TERM", "-k", "2", "#{seconds}", cmd | args],
          stderr_to_stdout: true
        )
      end)
    end)
    |> Enum.each(fn task ->
      {out, status} = Task.await(task, (seconds + 30) * 1_000)
      assert status == 124, "a flood tool exited early (#{status}): #{out}"
    end)
  end
end
