# The eight scenarios of issue 4. Each takes the run's config and returns
# %{records: [...], primary: metric, notes: [...], extra: markdown | nil}.
# Loaded by support/harness.exs.

defmodule YggBench.Scenarios do
  @moduledoc false

  alias YggBench.Comparators
  alias YggBench.Group
  alias YggBench.Harness
  alias YggBench.Loops
  alias YggBench.Stats

  def list do
    [
      {:fanout, 1, "One channel, fan-out", &fanout/1},
      {:channels, 2, "Many channels, one subscriber each, publishing round-robin", &channels/1},
      {:payloads, 3, "Payloads", &payloads/1},
      {:round_trip, 4, "Round trip with one subscriber", &round_trip/1},
      {:subscribe, 5, "Subscribe + unsubscribe cycle", &subscribe/1},
      {:unsubscribe, 6, "Mass unsubscribe from one channel", &unsubscribe/1},
      {:memory, 7, "Memory per subscription", &memory/1},
      {:scheduler, 8, "Scheduler hold during the largest fan-out", &scheduler/1}
    ]
  end

  def label(n) when n >= 1_000_000 and rem(n, 1_000_000) == 0, do: "#{div(n, 1_000_000)}M"
  def label(n) when n >= 1_000 and rem(n, 1_000) == 0, do: "#{div(n, 1_000)}k"
  def label(n), do: Integer.to_string(n)

  # Round trips and subscribe cycles alternate comparators in blocks of this size.
  @block 100

  @fanout_specs [
    {"deliveries/s", :per_s, :higher, []},
    {"publish p50", :ns, :lower, []},
    {"publish p99", :ns, :lower, []}
  ]

  ###########################
  # 1. Fan-out

  def fanout(cfg) do
    comps = Comparators.all()

    records =
      Enum.flat_map(cfg.sizes, fn n ->
        target = Comparators.target(:fanout, n)
        group = start_group(List.duplicate(target, n), :count, comps)
        k = clamp(div(cfg.budget, n), cfg.min_k, cfg.max_k)
        kl = clamp(div(cfg.lat_budget, n), cfg.min_k, cfg.max_lat_k)
        per = measure_fanout(group, comps, target, cfg.small, k, kl, cfg.reps)
        finish(group)
        Harness.records(:fanout, label(n), per, @fanout_specs)
      end)

    %{
      records: records,
      primary: "deliveries/s",
      notes: [
        "One channel with N subscriber processes (subscribed through every comparator at once). " <>
          "A repetition publishes k = #{cfg.budget} ÷ N messages (#{cfg.min_k}..#{cfg.max_k}) of " <>
          "`#{inspect(cfg.small)}` in rounds of ≤ 10k (comparators alternate between rounds); " <>
          "a round ends when every subscriber has counted all of its messages. Then " <>
          "#{cfg.lat_budget} ÷ N individually timed publish calls (p50/p99 per repetition; " <>
          "with few calls at large N, p99 is the slowest call). #{cfg.reps} repetitions."
      ]
    }
  end

  # Warm-up, then `reps` interleaved repetitions of: one throughput round of
  # k messages, one round of kl individually timed publish calls.
  defp measure_fanout(group, comps, target, payload, k, kl, reps) do
    n = group.size
    keys = Map.new(comps, &{&1, Comparators.pub_key(&1, target, group.pids)})

    for c <- comps do
      key = Map.fetch!(keys, c)
      Group.round(group, 1, fn -> publish_checked(c, key, payload) end)
      warm = max(1, div(k, 10))
      Group.round(group, warm, fn -> Loops.repeat(c, key, payload, warm) end)
    end

    # Rounds of at most 1000..10_000 messages, comparators alternating, so
    # that all of them see the same mix of process placements on the
    # schedulers (which moves a single-subscriber fan-out by up to 3×).
    blocks = clamp(div(k, 1_000), 1, 10)
    kb = div(k, blocks)
    lat_blocks = clamp(div(kl, 1_000), 1, 10)
    klb = div(kl, lat_blocks)

    rounds =
      Harness.interleave_blocks(reps, blocks, comps, fn c, _rep, _block ->
        key = Map.fetch!(keys, c)
        {total, _, _} = Group.round(group, kb, fn -> Loops.repeat(c, key, payload, kb) end)
        [total]
      end)

    calls =
      Harness.interleave_blocks(reps, lat_blocks, comps, fn c, _rep, _block ->
        key = Map.fetch!(keys, c)
        {_, _, samples} = Group.round(group, klb, fn -> Loops.timed(c, key, payload, klb) end)
        samples
      end)

    Map.new(comps, fn c ->
      metrics =
        Enum.zip_with(rounds[c], calls[c], fn totals, samples ->
          p = Stats.percentiles(samples, [50, 99])

          %{
            "deliveries/s" => n * kb * length(totals) * 1.0e9 / Enum.sum(totals),
            "publish p50" => p[50],
            "publish p99" => p[99]
          }
        end)

      {c, metrics}
    end)
  end

  ###########################
  # 2. Many channels

  def channels(cfg) do
    comps = Comparators.all()
    n = cfg.channels
    passes = cfg.channel_passes
    targets = for i <- 0..(n - 1), do: Comparators.target({:channels, n}, i)
    group = start_group(targets, :count, comps)

    keys =
      Map.new(comps, fn c ->
        tuple =
          targets
          |> Enum.zip(group.pids)
          |> Enum.map(fn {target, pid} -> Comparators.pub_key(c, target, [pid]) end)
          |> List.to_tuple()

        {c, tuple}
      end)

    for c <- comps do
      key = Map.fetch!(keys, c)

      Group.round(group, 1, fn ->
        publish_checked(c, elem(key, 0), cfg.small)
        top_up(c, key, cfg.small)
      end)

      Group.round(group, 1, fn -> Loops.round_robin(c, key, cfg.small, 1) end)
    end

    per =
      Harness.interleave(cfg.channel_reps, comps, fn c, _rep ->
        key = Map.fetch!(keys, c)

        {total, _, _} =
          Group.round(group, passes, fn -> Loops.round_robin(c, key, cfg.small, passes) end)

        {_, _, samples} = Group.round(group, 1, fn -> Loops.timed_pass(c, key, cfg.small) end)
        p = Stats.percentiles(samples, [50, 99])

        %{
          "deliveries/s" => n * passes * 1.0e9 / total,
          "publish p50" => p[50],
          "publish p99" => p[99]
        }
      end)

    finish(group)

    %{
      records: Harness.records(:channels, "#{label(n)} channels", per, @fanout_specs),
      primary: "deliveries/s",
      notes: [
        "#{label(n)} channels, one subscriber process each. A round publishes once on every " <>
          "channel in turn, #{passes} passes, and ends when every subscriber has its " <>
          "#{passes} messages; a second round times every call of one pass. " <>
          "raw looks the pid up in a tuple. #{cfg.channel_reps} repetitions."
      ]
    }
  end

  defp top_up(c, keys, payload) do
    for i <- 1..(tuple_size(keys) - 1)//1, do: Comparators.publish(c, elem(keys, i), payload)
    :ok
  end

  ###########################
  # 3. Payloads

  def payloads(cfg) do
    comps = Comparators.all()
    n = cfg.payload_subs
    target = Comparators.target(:payloads, n)
    group = start_group(List.duplicate(target, n), :count, comps)
    binary = :binary.copy(<<171>>, 1024)
    map = nested_map()

    kinds = [
      {"small term (#{:erts_debug.flat_size(cfg.small)} words)", cfg.small},
      {"1 KB binary (refc, shared)", binary},
      {"nested map (#{:erts_debug.flat_size(map) * 8} B, copied)", map}
    ]

    k = clamp(div(cfg.payload_budget, n), cfg.min_k, cfg.max_k)
    kl = clamp(div(cfg.lat_budget, n), cfg.min_k, cfg.max_lat_k)

    records =
      Enum.flat_map(kinds, fn {kind, payload} ->
        per = measure_fanout(group, comps, target, payload, k, kl, cfg.reps)
        Harness.records(:payloads, kind, per, @fanout_specs)
      end)

    finish(group)

    %{
      records: records,
      primary: "deliveries/s",
      notes: [
        "Fan-out to #{label(n)} subscribers of one channel, #{k} messages per round, " <>
          "as in scenario 1. A binary over 64 bytes is reference-counted: only a " <>
          "handle is copied per delivery; the map is copied into every subscriber's heap. " <>
          "#{cfg.reps} repetitions."
      ]
    }
  end

  defp nested_map do
    %{
      id: 1_234_567,
      type: :order_updated,
      version: 3,
      user: %{id: 42, name: "Ada Lovelace", roles: [:admin, :billing]},
      items: for(i <- 1..5, do: %{sku: "SKU-000#{i}", qty: i, price: i * 2.5}),
      totals: %{net: 52.5, tax: 10.5, gross: 63.0, currency: :eur}
    }
  end

  ###########################
  # 4. Round trip

  def round_trip(cfg) do
    comps = Comparators.all()
    target = Comparators.target(:round_trip, 0)
    group = start_group([target], :ack, comps)
    keys = Map.new(comps, &{&1, Comparators.pub_key(&1, target, group.pids)})
    tag = group.tag

    for c <- comps do
      publish_checked(c, Map.fetch!(keys, c), cfg.small)
      receive(do: (^tag -> :ok))
      Loops.round_trips(c, Map.fetch!(keys, c), cfg.small, tag, 500)
    end

    per =
      Harness.interleave_blocks(cfg.reps, div(cfg.rt_iters, @block), comps, fn c, _rep, _block ->
        Loops.round_trips(c, Map.fetch!(keys, c), cfg.small, tag, @block)
      end)
      |> summarize(fn samples ->
        p = Stats.percentiles(samples, [50, 99, 99.9])
        %{"p50" => p[50], "p99" => p[99], "p999" => p[99.9]}
      end)

    finish(group)

    specs = [
      {"p50", :ns, :lower, []},
      {"p99", :ns, :lower, []},
      {"p999", :ns, :lower, []}
    ]

    %{
      records: Harness.records(:round_trip, "1 subscriber", per, specs),
      primary: "p50",
      notes: [
        "Publish, the subscriber receives the event and sends an ack, the publisher " <>
          "receives the ack. #{cfg.rt_iters} round trips per repetition, comparators " <>
          "alternating every #{@block} (a round trip costs ~1 µs when both processes share a " <>
          "scheduler and far more when the other scheduler must be woken, so fine " <>
          "interleaving gives every comparator the same mix). Percentiles of each " <>
          "repetition, then the median over #{cfg.reps} repetitions."
      ]
    }
  end

  ###########################
  # 5. Subscribe + unsubscribe cycle

  def subscribe(cfg) do
    comps = Comparators.all() -- [:raw]
    busy = Comparators.target(:busy, 0)
    group = start_group(List.duplicate(busy, cfg.busy_subs), :idle, comps)

    for c <- comps do
      Loops.cycles(c, for(i <- 1..200, do: Comparators.target({:warm, c}, i)))
      Loops.cycles(c, List.duplicate(busy, 200))
    end

    fresh =
      Harness.interleave_blocks(cfg.reps, div(cfg.cycle_iters, @block), comps, fn c, rep, block ->
        targets = for i <- 1..@block, do: Comparators.target({:fresh, c, rep, block}, i)
        Loops.cycles(c, targets)
      end)
      |> summarize(&cycle_metrics/1)

    crowded =
      Harness.interleave_blocks(cfg.reps, div(cfg.busy_cycles, @block), comps, fn c, _, _ ->
        Loops.cycles(c, List.duplicate(busy, @block))
      end)
      |> summarize(&cycle_metrics/1)

    finish(group)

    specs = [
      {"cycle p50", :ns, :lower, []},
      {"cycle p99", :ns, :lower, []}
    ]

    %{
      records:
        Harness.records(:subscribe, "fresh channel", fresh, specs) ++
          Harness.records(
            :subscribe,
            "channel with #{label(cfg.busy_subs)} subscribers",
            crowded,
            specs
          ),
      primary: "cycle p50",
      notes: [
        "One process subscribes and unsubscribes itself: #{cfg.cycle_iters} times on channels " <>
          "never used before, and #{cfg.busy_cycles} times on one channel that " <>
          "#{label(cfg.busy_subs)} other processes are subscribed to. yggdrasil's " <>
          "`{:Y_CONNECTED, _}`/`{:Y_DISCONNECTED, _}` are read outside the timed part. " <>
          "Comparators alternate every #{@block} cycles; #{cfg.reps} repetitions."
      ]
    }
  end

  defp cycle_metrics(samples) do
    p = Stats.percentiles(samples, [50, 99])
    %{"cycle p50" => p[50], "cycle p99" => p[99]}
  end

  # %{comparator => [samples of one rep]} -> %{comparator => [metrics]}
  defp summarize(per, fun), do: Map.new(per, fn {c, reps} -> {c, Enum.map(reps, fun)} end)

  ###########################
  # 6. Mass unsubscribe

  def unsubscribe(cfg) do
    comps = Comparators.all() -- [:raw]
    # 100k busy subscribers would otherwise delay the coordinator's timeouts
    # and polls by the time it takes to run each of them once.
    Process.flag(:priority, :high)

    records =
      for n <- cfg.mass, mode <- [:unsubscribe, :death] do
        mode_comps = if mode == :death, do: comps -- [:yggdrasil], else: comps

        {full, capped} =
          Enum.split_with(mode_comps, &(&1 in [:native, :yggdrasil] or n <= cfg.mass_full_limit))

        per =
          Harness.interleave(cfg.mass_reps, full, fn c, rep ->
            mass_once(c, n, mode, rep, 120_000)
          end)

        # 100k processes each unregistering from one Registry key keep both
        # schedulers inside long ETS scans for minutes (measured once: 56 s
        # and 163 s), starving everything else, the harness included: not run.
        per =
          if mode == :death,
            do:
              Enum.reduce(capped, per, fn c, acc ->
                Map.put(acc, c, [mass_once(c, n, mode, 1, cfg.mass_cap_ms)])
              end),
            else: per

        kase =
          case mode do
            :unsubscribe -> "#{label(n)} subscribers, each unsubscribing"
            :death -> "#{label(n)} subscribers, all killed at once"
          end

        for c <- Comparators.order(), maps = per[c], maps != nil do
          capped? = Enum.any?(maps, & &1.capped)
          times = Enum.map(maps, & &1.time)
          rates = Enum.map(maps, &(n * 1.0e9 / &1.time))

          [
            Harness.record(:unsubscribe, kase, c, "time", :ns, :lower, times, capped: capped?),
            Harness.record(
              :unsubscribe,
              kase,
              c,
              "subscriptions removed/s",
              :per_s,
              :higher,
              rates,
              capped: capped?
            )
          ]
        end
      end
      |> List.flatten()

    %{
      records: records,
      primary: "time",
      notes: [
        "N processes subscribe to one channel; then either each unsubscribes itself (the clock " <>
          "stops when the last one has returned from its unsubscribe) or all are killed with " <>
          "`Process.exit(pid, :kill)` (the clock stops when the channel/registry shows no " <>
          "subscription left, polled every millisecond). yggdrasil's unsubscribe also sends " <>
          "`{:Y_DISCONNECTED, _}`; death is the same engine path for native and yggdrasil. " <>
          "Registry and Phoenix.PubSub remove a duplicate-key entry by scanning the key's " <>
          "entries, so their cost grows with N²: above #{label(cfg.mass_full_limit)} they run " <>
          "once and are stopped after #{cfg.mass_cap_ms} ms (`> …` is a lower bound), and their " <>
          "\"each unsubscribing\" case is not run at all: 100k processes each unregistering from " <>
          "one key keep both schedulers in ETS scans for minutes and starve the VM, the harness " <>
          "included (once, on this machine under load: registry 56 s, phoenix_pubsub 163 s). " <>
          "native/yggdrasil: #{cfg.mass_reps} repetitions."
      ]
    }
  end

  defp mass_once(c, n, mode, rep, cap_ms) do
    target = Comparators.target({:mass, n, mode, rep, c}, 0)
    # Subscribers run at low priority: when Registry's quadratic cleanup
    # keeps 100k of them busy, its own processes (and the reset that ends
    # a capped run) still get a scheduler. Alone in the VM, they run as fast.
    group =
      Group.start(List.duplicate(target, n), :idle, fn target ->
        Process.flag(:priority, :low)
        Comparators.subscribe(c, target)
      end)

    subscribed = Comparators.count(c, target)
    if subscribed != n, do: raise("#{c}: #{subscribed} of #{n} subscriptions registered")

    {elapsed, capped?} =
      case mode do
        :unsubscribe -> leave_all(c, target, group, cap_ms)
        :death -> kill_all(c, target, group, cap_ms)
      end

    left = Comparators.count(c, target)
    Group.stop(group)

    if not capped? and left != 0,
      do: raise("#{c}: #{left} subscriptions left after mass #{mode}")

    %{time: elapsed, capped: capped?}
  end

  defp leave_all(c, target, group, cap_ms) do
    coordinator = self()
    %Group{counter: counter, tag: tag} = group
    :atomics.put(counter, 1, group.size)

    leave = fn ->
      Comparators.unsubscribe(c, target)
      Group.countdown(counter, 1, coordinator, {tag, :left})
    end

    t0 = Group.now()
    Group.run_each(group, leave)

    receive do
      {^tag, :left} -> {Group.now() - t0, false}
    after
      cap_ms -> {Group.now() - t0, true}
    end
  end

  defp kill_all(c, target, group, cap_ms) do
    t0 = Group.now()
    Enum.each(group.pids, &Process.exit(&1, :kill))
    deadline = t0 + cap_ms * 1_000_000
    poll_empty(c, target, t0, deadline)
  end

  defp poll_empty(c, target, t0, deadline) do
    now = Group.now()

    cond do
      Comparators.count(c, target) == 0 ->
        {Group.now() - t0, false}

      now > deadline ->
        {now - t0, true}

      true ->
        Process.sleep(1)
        poll_empty(c, target, t0, deadline)
    end
  end

  ###########################
  # 7. Memory

  def memory(cfg) do
    procs = cfg.mem_procs
    per = cfg.mem_channels_per_proc
    subs = procs * per
    channels = div(subs, 10)
    kase = "#{label(subs)} subscriptions"

    runs = for c <- [:native, :registry], do: {c, memory_run(c, procs, per, channels)}

    records =
      Enum.flat_map(runs, fn {c, m} ->
        bytes = fn metric, value, opts ->
          Harness.record(:memory, kase, c, metric, :bytes, :lower, [value], opts)
        end

        engine =
          if c == :native do
            [
              bytes.("engine bytes/subscription", m.engine_per_sub, []),
              bytes.("engine bytes left after unsubscribe", m.engine_left, zero_ok: true)
            ]
          else
            []
          end

        engine ++
          [
            bytes.(":erlang.memory bytes/subscription", m.erlang_per_sub, []),
            bytes.("RSS bytes/subscription", m.rss_per_sub, []),
            Harness.record(:memory, kase, c, "subscribe rate", :per_s, :higher, [m.sub_rate]),
            Harness.record(:memory, kase, c, "unsubscribe rate", :per_s, :higher, [m.unsub_rate]),
            bytes.(":erlang.memory left after unsubscribe", m.erlang_left, zero_ok: true),
            bytes.(":erlang.memory left after exit", m.erlang_left_exit, zero_ok: true)
          ]
      end)

    %{
      records: records,
      primary: "RSS bytes/subscription",
      notes: [
        "#{label(procs)} processes each subscribe to #{per} of #{label(channels)} channels " <>
          "(#{label(subs)} subscriptions, 10 subscribers per channel); registry is the same with " <>
          "`Registry.register/3` (Phoenix.PubSub stores subscriptions the same way). Baseline " <>
          "is taken after the processes exist and before they subscribe; every process " <>
          "garbage-collects before each reading. The engine's own accounting (`Yggdrasil.info/0` " <>
          "`memory_bytes`) covers its tables; channel keys live in NIF environments, which " <>
          "`:erlang.memory` sees; RSS sees everything. One run (memory figures are stable)."
      ],
      extra: memory_table(runs)
    }
  end

  defp memory_run(c, procs, per, channels) do
    before_spawn = snapshot()

    group =
      Group.start(Enum.to_list(0..(procs - 1)), :idle, fn i ->
        Process.put(:ygg_bench_index, i)
        :ok
      end)

    coordinator = self()
    %Group{counter: counter, tag: tag} = group
    gc_members(group)
    base = snapshot()

    each = fn action ->
      fn ->
        i = Process.get(:ygg_bench_index)

        for j <- 0..(per - 1) do
          target = Comparators.target(:memory, rem(i * per + j, channels))
          apply(Comparators, action, [c, target])
        end

        :erlang.garbage_collect()
        Group.countdown(counter, 1, coordinator, {tag, action})
      end
    end

    sub_ns = run_members(group, each.(:subscribe), :subscribe)
    full = snapshot()
    unsub_ns = run_members(group, each.(:unsubscribe), :unsubscribe)
    gc_members(group)
    emptied = snapshot()
    Group.stop(group)
    Harness.wait_until(fn -> Yggdrasil.info().subscriptions == 0 end, 60_000)
    gone = snapshot()
    subs = procs * per

    %{
      subs: subs,
      snapshots: [
        {"before the processes exist", before_spawn},
        {"baseline (processes alive, no subscription)", base},
        {"#{label(subs)} subscriptions", full},
        {"all unsubscribed", emptied},
        {"processes gone", gone}
      ],
      engine_per_sub: (full.engine.memory_bytes - base.engine.memory_bytes) / subs,
      engine_left: emptied.engine.memory_bytes - base.engine.memory_bytes,
      erlang_per_sub: (full.erlang[:total] - base.erlang[:total]) / subs,
      rss_per_sub: (full.rss - base.rss) / subs,
      erlang_left: emptied.erlang[:total] - base.erlang[:total],
      erlang_left_exit: gone.erlang[:total] - before_spawn.erlang[:total],
      sub_rate: subs * 1.0e9 / sub_ns,
      unsub_rate: subs * 1.0e9 / unsub_ns
    }
  end

  defp run_members(group, fun, what) do
    :atomics.put(group.counter, 1, group.size)
    t0 = Group.now()
    Group.run_each(group, fun)
    Group.await(group.tag, what, "#{group.size} processes to #{what}")
    Group.now() - t0
  end

  defp gc_members(group) do
    coordinator = self()
    %Group{counter: counter, tag: tag} = group

    run_members(
      group,
      fn ->
        :erlang.garbage_collect()
        Group.countdown(counter, 1, coordinator, {tag, :gc})
      end,
      :gc
    )
  end

  defp snapshot do
    stir_allocators()
    :erlang.garbage_collect()

    %{
      engine: Yggdrasil.info(),
      erlang: :erlang.memory(),
      rss: rss()
    }
  end

  # Memory freed on another scheduler than the one that allocated it is
  # handed back to the owner's allocator lazily, the next time that
  # scheduler allocates. Keep every scheduler busy allocating for a moment
  # so that :erlang.memory shows what is really still in use.
  defp stir_allocators do
    parent = self()
    count = System.schedulers_online() * 8

    for _ <- 1..count do
      spawn(fn ->
        Enum.each(1..20, fn _ -> Enum.to_list(1..1_000) |> :erlang.term_to_binary() end)
        send(parent, :stirred)
      end)
    end

    for _ <- 1..count, do: receive(do: (:stirred -> :ok))
    Process.sleep(20)
  end

  defp rss do
    with {:ok, text} <- File.read("/proc/self/status"),
         [_, kb] <- Regex.run(~r/VmRSS:\s+(\d+) kB/, text) do
      String.to_integer(kb) * 1024
    else
      _ -> 0
    end
  end

  defp memory_table(runs) do
    rows =
      for {c, m} <- runs, {what, s} <- m.snapshots do
        engine =
          if c == :native,
            do: [
              Harness.fmt(s.engine.memory_bytes, :bytes),
              "#{s.engine.channels} / #{s.engine.subscriptions}"
            ],
            else: ["—", "—"]

        ["#{c}", what] ++
          engine ++
          [
            Harness.fmt(s.erlang[:total], :bytes),
            Harness.fmt(s.erlang[:processes], :bytes),
            Harness.fmt(s.erlang[:ets], :bytes),
            Harness.fmt(s.erlang[:system], :bytes),
            Harness.fmt(s.rss, :bytes)
          ]
      end

    header = [
      "comparator",
      "moment",
      "engine memory_bytes",
      "engine channels / subscriptions",
      ":erlang.memory total",
      "processes",
      "ets",
      "system",
      "RSS"
    ]

    line = fn cells -> "| " <> Enum.join(cells, " | ") <> " |\n" end

    IO.iodata_to_binary([
      "Back to baseline:\n\n",
      line.(header),
      "|" <> Enum.map_join(header, "|", fn _ -> "---" end) <> "|\n",
      Enum.map(rows, line)
    ])
  end

  ###########################
  # 8. Scheduler hold

  def scheduler(cfg) do
    comps = Comparators.all()
    n = cfg.sched_subs
    k = cfg.sched_msgs
    target = Comparators.target(:scheduler, n)
    group = start_group(List.duplicate(target, n), :count, comps)
    keys = Map.new(comps, &{&1, Comparators.pub_key(&1, target, group.pids)})
    engine_key = Yggdrasil.Channel.key(target.channel)
    message = {:Y_EVENT, target.channel, cfg.small}

    for c <- comps, do: Group.round(group, 1, fn -> publish_checked(c, keys[c], cfg.small) end)

    {collector, previous} = start_monitor()

    per =
      try do
        Harness.interleave(cfg.sched_reps, comps ++ [:native_nif_timed], fn c, _rep ->
          take_events(collector)

          {total, _, nif_times} =
            Group.round(group, k, fn ->
              case c do
                :native_nif_timed ->
                  # The calls also time themselves inside the NIF (wall and
                  # thread CPU time): the outer time of a call that yielded
                  # includes the wait until the publisher is scheduled in
                  # again, which is time the scheduler spent on others.
                  _ = Yggdrasil.Native.call_stats(true)
                  times = timed_nif(engine_key, message, k, [])
                  {times, Yggdrasil.Native.call_stats(false)}

                _ ->
                  Loops.repeat(c, Map.fetch!(keys, c), cfg.small, k)
                  nil
              end
            end)

          events = take_events(collector)
          {mine, others} = Enum.split_with(events, fn {pid, _} -> pid == self() end)

          %{
            "deliveries/s" => n * k * 1.0e9 / total,
            "long_schedule events, publisher" => length(mine),
            "long_schedule events, others" => length(others),
            "longest long_schedule" =>
              events |> Enum.map(fn {_, ms} -> ms end) |> Enum.max(fn -> 0 end)
          }
          |> Map.merge(nif_metrics(nif_times, k))
        end)
      after
        restore_monitor(previous)
        Process.exit(collector, :kill)
      end

    finish(group)

    specs = [
      {"deliveries/s", :per_s, :higher, []},
      {"NIF call p50", :ns, :lower, []},
      {"NIF call p99", :ns, :lower, []},
      {"longest NIF call", :ns, :lower, []},
      {"NIF calls per publish", :count, :lower, []},
      {"NIF calls over 1 ms", :count, :lower, [zero_ok: true]},
      {"longest call inside, wall", :ns, :lower, []},
      {"longest call inside, CPU", :ns, :lower, []},
      {"calls over 1 ms inside, CPU", :count, :lower, [zero_ok: true]},
      {"long_schedule events, publisher", :count, :lower, [zero_ok: true]},
      {"long_schedule events, others", :count, :lower, [zero_ok: true]},
      {"longest long_schedule", :ms, :lower, [zero_ok: true]}
    ]

    %{
      records: Harness.records(:scheduler, "#{label(n)} subscribers", per, specs),
      primary: "deliveries/s",
      notes: [
        "Fan-out to #{label(n)} subscribers, #{k} messages per round, with " <>
          "`:erlang.system_monitor(pid, [{:long_schedule, 1}])` installed (an event whenever a " <>
          "process or port ran ≥ 1 ms without being scheduled out). native_nif_timed does what " <>
          "`Yggdrasil.Native.broadcast/2` does — `Native.publish/2`, then `Native.publish_more/2` " <>
          "while it answers `{:more, _}` — timing every NIF call from outside (which, for a call " <>
          "that yielded, includes waiting to be scheduled in again) and, through " <>
          "`Native.call_stats/1`, from inside the NIF (wall and thread CPU time). The \"max\" of the " <>
          "#{cfg.sched_reps} repetitions is in the min–max of the CSV."
      ]
    }
  end

  defp nif_metrics(nil, _k), do: %{}

  defp nif_metrics({times, {_calls, inside_wall_us, inside_cpu_us, _over_wall, over_cpu}}, k) do
    p = Stats.percentiles(times, [50, 99])

    %{
      "NIF call p50" => p[50],
      "NIF call p99" => p[99],
      "longest NIF call" => Enum.max(times),
      "NIF calls per publish" => length(times) / k,
      "NIF calls over 1 ms" => Enum.count(times, &(&1 > 1_000_000)),
      "longest call inside, wall" => inside_wall_us * 1_000,
      "longest call inside, CPU" => inside_cpu_us * 1_000,
      "calls over 1 ms inside, CPU" => over_cpu
    }
  end

  defp timed_nif(_key, _message, 0, acc), do: acc

  defp timed_nif(key, message, n, acc) do
    t0 = Group.now()
    result = Yggdrasil.Native.publish(key, message)
    t1 = Group.now()
    acc = continue_nif(result, message, [t1 - t0 | acc])
    timed_nif(key, message, n - 1, acc)
  end

  defp continue_nif(:ok, _message, acc), do: acc

  defp continue_nif({:more, rest}, message, acc) do
    t0 = Group.now()
    result = Yggdrasil.Native.publish_more(rest, message)
    t1 = Group.now()
    continue_nif(result, message, [t1 - t0 | acc])
  end

  defp start_monitor do
    collector = spawn(fn -> collect([]) end)
    previous = :erlang.system_monitor(collector, [{:long_schedule, 1}])
    {collector, previous}
  end

  defp restore_monitor(:undefined), do: :erlang.system_monitor(:undefined)
  defp restore_monitor({pid, options}), do: :erlang.system_monitor(pid, options)

  defp collect(events) do
    receive do
      {:monitor, who, :long_schedule, info} ->
        collect([{who, Keyword.get(info, :timeout, 0)} | events])

      {:take, from, ref} ->
        send(from, {ref, Enum.reverse(events)})
        collect([])
    end
  end

  defp take_events(collector) do
    # Events of the round just finished may still be on their way.
    Process.sleep(5)
    ref = make_ref()
    send(collector, {:take, self(), ref})

    receive do
      {^ref, events} -> events
    after
      10_000 -> raise "system_monitor collector did not answer"
    end
  end

  ###########################
  # Helpers

  defp start_group(args, mode, comps),
    do: Group.start(args, mode, &Comparators.subscribe_all(comps, &1))

  defp finish(group) do
    extras = Group.extras(group)
    Group.stop(group)
    if extras != 0, do: raise("subscribers received #{extras} events more than were published")
    :ok
  end

  defp publish_checked(c, key, payload) do
    case Comparators.publish(c, key, payload) do
      :ok -> :ok
      other -> raise "#{c} publish returned #{inspect(other)}"
    end
  end

  defp clamp(value, low, high), do: value |> max(low) |> min(high)
end
