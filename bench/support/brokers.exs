# The `brokers` scenario: `Yggdrasil.publish` → a real Redis, PostgreSQL or
# RabbitMQ → subscribers, against each broker's pure-Rust floor
# (native/yggdrasil_brokers/examples/<broker>_floor.rs) on the same private
# server. Servers come from the tests' own Yggdrasil.Test.BrokerServer
# (test/brokers/ctl.sh underneath), loaded here because test/support is
# compiled only in MIX_ENV=test. Each broker's TLS server runs beside the
# plaintext one: its 1-subscriber rows are measured in the same interleaved
# loop (our side through a namespace holding its config, the floor with
# `--tls-ca`). Then each broker flooded by its own tools on one channel of
# 20k subscribers (the tests' Yggdrasil.Test.Flood). Loaded by
# support/harness.exs.

for file <- ~w(broker_server helpers flood),
    do: Code.require_file("../../test/support/#{file}.ex", __DIR__)

defmodule YggBench.Brokers do
  @moduledoc false

  alias Yggdrasil.Test.{BrokerServer, Flood}
  alias YggBench.{Comparators, Group, Harness, Stats}

  @root Path.expand("../..", __DIR__)
  @crowd 1_000
  # The namespace whose config points at the TLS server.
  @tls YggBench.Brokers.TLS
  # A healthy round takes seconds: a round this late has lost messages.
  @patience 30_000
  @specs [
    {"deliveries/s", :per_s, :higher, []},
    {"latency p50", :ns, :lower, []},
    {"latency p99", :ns, :lower, []},
    {"delivered", :count, :higher, []}
  ]
  # Issue 20: {header, subscribers, publishers, metric, ours, reference, bound}.
  @targets [
    {"client, 8 publishers ÷ floor (≥ 0.95)", 1, 8, "deliveries/s", :client, :floor,
     {:at_least, 0.95}},
    {"8 publishers ÷ floor (≥ 0.9)", 1, 8, "deliveries/s", :yggdrasil, :floor, {:at_least, 0.9}},
    {"1 publisher ÷ floor (≥ 0.95)", 1, 1, "deliveries/s", :yggdrasil, :floor, {:at_least, 0.95}},
    {"p50 ÷ floor's (≤ 1.2)", 1, 1, "latency p50", :yggdrasil, :floor, {:at_most, 1.2}},
    {"1k subscribers, 1 publisher ÷ :elixir (≥ 1.0)", @crowd, 1, "deliveries/s", :yggdrasil,
     :elixir, {:at_least, 1.0}},
    {"1k subscribers, 8 publishers ÷ :elixir (≥ 1.0)", @crowd, 8, "deliveries/s", :yggdrasil,
     :elixir, {:at_least, 1.0}}
  ]
  # Issue 19: TLS costs at most 15% of a publish. {comparator, publishers, metric, bound}.
  @tls_ratios for c <- [:yggdrasil, :floor],
                  p <- [1, 8],
                  {m, b} <- [
                    {"deliveries/s", {:at_least, 1 / 1.15}},
                    {"latency p50", {:at_most, 1.15}}
                  ],
                  do: {c, p, m, b}

  # docs/guarantees.md "Brokers under load": the namespace of the floods.
  @flood YggBench.Brokers.Flood
  @flood_header [
    "flood: 20k subscribers, 5 s",
    "RSS growth (≤ 256 MB)",
    "the same messages by `send/2`",
    "marker 1 s after (≤ 5 s)",
    "dropped",
    "shed",
    "sessions cut",
    "subscribers told",
    "missed untold"
  ]

  def run(cfg) do
    outcomes = for kind <- [:redis, :postgres, :rabbitmq], do: {kind, broker(kind, cfg)}
    floods = for kind <- [:redis, :postgres, :rabbitmq], do: {kind, flood(kind, cfg)}

    header = ["broker" | Enum.map(@targets, &elem(&1, 0))] ++ ["deliveries: no message lost"]
    rows = for {_, {:ok, _, {row, _}}} <- outcomes, do: row
    tls_rows = for {_, {:ok, _, {_, row}}} <- outcomes, do: row

    tls_header = [
      "TLS ÷ plaintext" | for({c, p, m, _} <- @tls_ratios, do: "#{c}, #{p} pub., #{m}")
    ]

    left_out =
      for {kind, {what, why}} <- outcomes ++ floods, what != :ok, do: "#{kind} #{what}: #{why}"

    %{
      records: List.flatten(for {_, {:ok, records, _}} <- outcomes, do: records),
      primary: "deliveries/s",
      ratio_refs: [:floor, :elixir],
      notes:
        [
          "One private server per broker; #{cfg.broker_reps} interleaved repetitions. " <>
            "**yggdrasil**: `Yggdrasil.publish/2` → broker → subscriber processes, each " <>
            "publisher waiting for `:ok`; **floor**: that loop in pure Rust, same client crate " <>
            "(`examples/<broker>_floor.rs`); **client**: it through `yggdrasil_brokers::Client` " <>
            "(our runtime, no BEAM); **redis_benchmark**: `PUBLISH` alone; **elixir**: the " <>
            ":elixir adapter's fan-out. #{cfg.broker_msgs} messages per run to 1 subscriber, " <>
            "#{cfg.broker_fan_msgs} to #{@crowd}; latency: publish → event (send time in the " <>
            "payload); `delivered`: events counted (one missing fails the run with the count).",
          IO.iodata_to_binary(Harness.table(header, rows)),
          "Over TLS (`… over TLS` rows): a second private server per broker, TLS only, the test " <>
            "CA trusted (`tls: true, tls_cacertfile:`); the floor with `--tls-ca`, rustls + " <>
            "ring as ours. Target (issue 19): TLS costs at most 15% of a publish, i.e. " <>
            "deliveries/s ≥ 0.87× and p50 ≤ 1.15× plaintext's; met/missed is judged for ours.",
          IO.iodata_to_binary(Harness.table(tls_header, tls_rows)),
          "Flood: the broker's own tools (redis-benchmark `PUBLISH` beside a numbered " <>
            "`redis-cli --pipe`; psql `pg_notify` over `generate_series`; two " <>
            "`amqp-publish -l`) for 5 s on one `:default` channel of 20k recording " <>
            "subscribers; RSS growth: the VM's peak over its RSS once they are subscribed; " <>
            "the same messages by `send/2`: as many sent by a bare loop to 20k new recorders " <>
            "in the same VM afterwards (processes' memory; the VM reuses what the flood " <>
            "freed, so RSS would read low); " <>
            "the marker: published with `Yggdrasil.publish/2` 1 s after the flood is over " <>
            "at the broker (the tools exited, and RabbitMQ read all they wrote); " <>
            "dropped, shed, sessions cut: `Yggdrasil.broker_info/0`'s `dropped`, `shed` and " <>
            "`cuts` (sessions cut, or their RabbitMQ backlog purged, for falling behind); " <>
            "missed untold: subscribers that saw a gap, a repeat or an event while " <>
            "disconnected, or lost the marker without a notice.",
          IO.iodata_to_binary(
            Harness.table(@flood_header, for({_, {:ok, row}} <- floods, do: row))
          )
        ] ++ left_out
    }
  end

  defp flood(kind, cfg) do
    {n, seconds} = if cfg.quick, do: {200, 1}, else: {20_000, 5}

    with {:ok, server} <- start_server(kind, false) do
      Application.put_env(:yggdrasil, @flood, [{kind, BrokerServer.config(server)}])

      try do
        {:ok, channel} = Yggdrasil.gen_channel([namespace: @flood] ++ channel(kind, "flood"))
        recorders = Flood.recorders!(channel, n, "marker")
        baseline = Flood.memory()

        {{marker, seen}, peak} =
          Flood.with_peaks(fn ->
            Flood.flood!(server, channel.name, seconds)
            Process.sleep(1_000)
            Flood.mark(recorders)
            published_at = System.monotonic_time(:millisecond)
            :ok = Yggdrasil.publish(channel, "marker")
            {Flood.await_marker(recorders, published_at, 10_000), Flood.summary(recorders)}
          end)

        Flood.stop(recorders)
        # Each gap notice is a message as large as an event.
        events = div(seen.events + 2 * seen.disconnects, n)
        floor = send_floor(channel, n, events, seconds)
        load = Map.fetch!(Yggdrasil.broker_info(), {kind, @flood})
        # Its client closes below: first the channel's adapter goes.
        Harness.wait_until(fn -> Yggdrasil.Subscriber.Generator.whereis(channel) == nil end)

        marker =
          if marker.got == n,
            do: "#{marker.latency_ms} ms",
            else: "#{n - marker.got} of #{n} without it after 10 s"

        {:ok,
         [
           "#{kind}",
           "+#{mb(peak.rss - baseline.rss)} MB (processes +#{mb(peak.processes - baseline.processes)})",
           "processes +#{mb(floor.processes)} MB, #{events} each",
           marker,
           "#{load.dropped}",
           "#{load.shed}",
           "#{load.cuts}",
           "#{seen.disconnected}",
           "#{seen.violations + seen.marker_lost_untold}"
         ]}
      rescue
        error -> {:flood_failed, Exception.message(error)}
      after
        close_client(kind, @flood)
        BrokerServer.cleanup(server)
      end
    end
  end

  # The BEAM alone delivering what the flood delivered: as many messages
  # (events and notices) to each of `n` new recorders, by a `send/2` loop
  # spread over the flood's `seconds`. What the recorders' heaps take for them
  # any pub/sub leaves at that size (docs/guarantees.md "Brokers under load").
  # Processes' memory is the figure: the VM reuses what the flood freed, so
  # RSS growth would read low.
  defp send_floor(channel, n, events, seconds) do
    {:ok, local} = Yggdrasil.gen_channel(name: "flood-floor-#{System.unique_integer()}")
    recorders = Flood.recorders!(local, n, "marker")
    baseline = Flood.memory()
    started = System.monotonic_time(:millisecond)

    {_, peak} =
      Flood.with_peaks(fn ->
        for seq <- 1..max(events, 1)//1 do
          message = {:Y_EVENT, channel, Integer.to_string(seq)}
          Enum.each(recorders, &send(&1, message))
          due = started + div(seq * seconds * 1000, max(events, 1))
          Process.sleep(max(due - System.monotonic_time(:millisecond), 0))
        end

        Flood.summary(recorders)
      end)

    Flood.stop(recorders)
    %{processes: peak.processes - baseline.processes}
  end

  defp mb(bytes), do: div(bytes, 1024 * 1024)

  defp broker(kind, cfg) do
    with {:ok, floor} <- build_floor(kind),
         {:ok, server} <- start_server(kind, false) do
      tls = with {:ok, tls} <- start_server(kind, true), do: tls, else: (_ -> nil)

      try do
        Application.put_env(:yggdrasil, kind, BrokerServer.config(server))
        if tls, do: Application.put_env(:yggdrasil, @tls, [{kind, BrokerServer.config(tls)}])
        measure(kind, {server, tls}, floor, cfg)
      rescue
        error -> {:failed, Exception.message(error)}
      after
        for namespace <- [nil | if(tls, do: [@tls], else: [])], do: close_client(kind, namespace)
        for s <- [server, tls], s, do: BrokerServer.cleanup(s)
      end
    end
  end

  defp measure(kind, {server, tls}, floor, cfg) do
    single = subscribers(channel(kind, "single"), 1, :timed)
    crowd = subscribers(channel(kind, "crowd"), @crowd, :count)
    elixir = subscribers(Comparators.target({:brokers, kind}, 0).channel, @crowd, :count)
    # The same channel in the namespace of the TLS server.
    secure = tls && subscribers([namespace: @tls] ++ channel(kind, "single"), 1, :timed)
    groups = Enum.filter([single, crowd, elixir, secure], & &1)
    for subscribers <- groups, do: ours(subscribers, 10, 1)
    floors = [:floor, :client] ++ if(kind == :redis, do: [:redis_benchmark], else: [])
    over_tls = if tls, do: [{:tls, :yggdrasil}, {:tls, :floor}], else: []

    records =
      for {n, subscribers, k, comps} <- [
            {1, single, cfg.broker_msgs, [:yggdrasil | floors] ++ over_tls},
            {@crowd, crowd, cfg.broker_fan_msgs, [:yggdrasil, :elixir]}
          ],
          publishers <- [1, 8] do
        per =
          Harness.interleave(cfg.broker_reps, comps, fn
            :yggdrasil, _ ->
              ours(subscribers, k, publishers)

            :elixir, _ ->
              ours(elixir, k, publishers)

            {:tls, :yggdrasil}, _ ->
              ours(secure, k, publishers)

            {:tls, c}, _ ->
              floor(c, floor, tls.port, k, publishers, BrokerServer.certs().cacertfile)

            c, _ ->
              floor(c, floor, server.port, k, publishers, nil)
          end)

        {secured, plain} = Enum.split_with(per, &match?({{:tls, _}, _}, &1))
        secured = Map.new(secured, fn {{:tls, c}, reps} -> {c, reps} end)

        Harness.records(:brokers, label(kind, n, publishers), Map.new(plain), @specs) ++
          Harness.records(:brokers, label(kind, n, publishers, " over TLS"), secured, @specs)
      end
      |> List.flatten()

    extras = Enum.map(groups, fn {group, _} -> Group.extras(group) end)
    # In reverse: each waits for the engine to be back to its count at start.
    Enum.each(Enum.reverse(groups), fn {group, _} -> Group.stop(group) end)
    {:ok, records, {target_row(kind, records, Enum.sum(extras)), tls_row(kind, records)}}
  end

  # TLS ÷ plaintext per comparator, publishers and metric; judged for ours.
  defp tls_row(kind, records) do
    cells =
      for {c, p, metric, {test, bound}} <- @tls_ratios do
        with [plain, secured] when plain not in [nil, 0] and secured != nil <-
               Enum.map(["", " over TLS"], &median(records, label(kind, 1, p, &1), c, metric)) do
          ratio = secured / plain
          met? = if test == :at_least, do: ratio >= bound, else: ratio <= bound
          Harness.fmt_ratio(ratio) <> if(c == :yggdrasil, do: " (#{verdict(met?)})", else: "")
        else
          _ -> "—"
        end
      end

    ["#{kind}" | cells]
  end

  defp median(records, kase, c, metric),
    do:
      Enum.find_value(records, fn r ->
        r.case == kase and r.comparator == c and r.metric == metric and r.median
      end)

  defp verdict(met?), do: if(met?, do: "met", else: "missed")

  defp target_row(kind, records, extras) do
    median = fn n, p, c, metric -> median(records, label(kind, n, p), c, metric) end

    cells =
      for {_, n, p, metric, who, ref, {test, bound}} <- @targets do
        with ours when ours != nil <- median.(n, p, who, metric),
             theirs when theirs not in [nil, 0] <- median.(n, p, ref, metric) do
          ratio = ours / theirs
          met? = if test == :at_least, do: ratio >= bound, else: ratio <= bound
          "#{Harness.fmt_ratio(ratio)} (#{verdict(met?)})"
        else
          _ -> "—"
        end
      end

    delivered =
      for r <- records, r.comparator == :yggdrasil, r.metric == "delivered", v <- r.values, do: v

    duplicates = if extras > 0, do: ", #{extras} duplicates", else: ""
    ["#{kind}" | cells] ++ ["#{Enum.sum(delivered)} counted, none missing" <> duplicates]
  end

  defp label(kind, n, p, over \\ ""),
    do: "#{kind}#{over}: #{count(n, "subscriber")}, #{count(p, "publisher")}"

  defp count(1, what), do: "1 #{what}"
  defp count(n, what) when rem(n, 1_000) == 0, do: "#{div(n, 1_000)}k #{what}s"
  defp count(n, what), do: "#{n} #{what}s"

  defp channel(:redis, id), do: [name: "ygg-bench-#{id}", adapter: :redis]
  defp channel(:postgres, id), do: [name: "ygg_bench_#{id}", adapter: :postgres]
  defp channel(:rabbitmq, id), do: [name: {"amq.topic", "ygg.bench.#{id}"}, adapter: :rabbitmq]

  defp subscribers(channel, n, mode) do
    {:ok, channel} = Yggdrasil.gen_channel(channel)
    {Group.start(List.duplicate(channel, n), mode, &connect/1), channel}
  end

  defp connect(channel) do
    :ok = Yggdrasil.subscribe(channel)

    receive do
      {:Y_CONNECTED, _} -> :ok
    after
      @patience -> raise "no :Y_CONNECTED for #{inspect(channel.name)}"
    end
  end

  # `publishers` processes share `k` publishes, each waiting for its reply.
  defp ours({group, channel}, k, publishers) do
    publish = fn ->
      for i <- 0..(publishers - 1) do
        n = div(k, publishers) + if(i < rem(k, publishers), do: 1, else: 0)

        Task.async(fn ->
          for _ <- 1..n//1, (r = Yggdrasil.publish(channel, Group.stamp())) != :ok, do: r
        end)
      end
      |> Task.await_many(:infinity)
      |> List.flatten()
    end

    {total, _, errors} =
      try do
        Group.round(group, k, publish, @patience)
      rescue
        error in RuntimeError ->
          reraise "#{Group.missing(group)} deliveries missing: #{Exception.message(error)}",
                  __STACKTRACE__
      end

    if errors != [], do: raise("#{length(errors)} publishes failed: #{inspect(hd(errors))}")
    p = Stats.percentiles(Group.latencies(group), [50, 99])

    %{
      "deliveries/s" => group.size * k * 1.0e9 / total,
      "latency p50" => p[50],
      "latency p99" => p[99],
      "delivered" => group.size * k
    }
  end

  defp floor(:redis_benchmark, _floor, port, k, publishers, nil) do
    # Redis 7.0's `-t` has no publish test: the command itself, 16-byte payload.
    args =
      ~w(-h 127.0.0.1 -p #{port} -n #{k} -c #{publishers} --csv PUBLISH ygg-rb 0123456789abcdef)

    [_test, rps | _] = cmd!("redis-benchmark", args) |> last_line() |> String.split(",")
    %{"deliveries/s" => number(String.trim(rps, "\""))}
  end

  # The floor prints one line of key=value pairs (see its doc comment).
  defp floor(via, floor, port, k, publishers, ca) do
    args = ~w(--port #{port} --publishers #{publishers} --messages #{k})
    args = if via == :client, do: args ++ ~w(--via client), else: args
    args = if ca, do: args ++ ["--tls-ca", ca], else: args

    out = cmd!(floor, args)
    fields = Regex.scan(~r/(\w+)=(\S+)/, last_line(out), capture: :all_but_first)
    fields = Map.new(fields, &List.to_tuple/1)
    if fields["deliveries_per_s"] == nil, do: raise("#{floor} printed no result line:\n#{out}")

    %{
      "deliveries/s" => number(fields["deliveries_per_s"]),
      "latency p50" => number(fields["p50_us"]) * 1_000,
      "latency p99" => number(fields["p99_us"]) * 1_000,
      "delivered" => String.to_integer(fields["messages"])
    }
  end

  defp cmd!(program, args) do
    case System.cmd(program, args, stderr_to_stdout: true) do
      {out, 0} -> out
      {out, status} -> raise "#{program} #{Enum.join(args, " ")} exited with #{status}:\n#{out}"
    end
  end

  defp last_line(text), do: text |> String.split("\n", trim: true) |> List.last() || ""

  defp number(text), do: text |> Float.parse() |> elem(0)

  defp build_floor(kind) do
    args = ~w(build --release --quiet -p yggdrasil_brokers --example #{kind}_floor)
    target = System.get_env("CARGO_TARGET_DIR") || Path.join(@root, "target")

    case System.cmd("cargo", args, cd: @root, stderr_to_stdout: true) do
      {_, 0} -> {:ok, Path.join([target, "release", "examples", "#{kind}_floor"])}
      {out, _} -> {:skipped, "`cargo #{Enum.join(args, " ")}`: #{last_line(out)}"}
    end
  end

  defp start_server(kind, tls) do
    {:ok, BrokerServer.start!(kind, tls: tls)}
  rescue
    error -> {:skipped, "no server: " <> last_line(Exception.message(error))}
  end

  # Closed before its server stops, so that it does not retry (and warn)
  # until its idle timeout.
  defp close_client(kind, namespace) do
    with {:ok, %{owner: owner}} <- Yggdrasil.Broker.client(kind, namespace),
         do: Yggdrasil.Broker.Owner.stop(owner)
  end
end
