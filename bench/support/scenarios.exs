# The scenarios. Each takes the run's config and returns
# %{records: [...], primary: metric, notes: [...]}. Loaded by
# support/harness.exs.

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
      {:round_trip, 2, "Round trip with one subscriber", &round_trip/1},
      {:subscribe, 3, "Subscribe + unsubscribe cycle", &subscribe/1},
      {:unsubscribe, 4, "Mass unsubscribe from one channel", &unsubscribe/1},
      {:memory, 5, "Memory per subscription", &memory/1},
      {:scheduler, 6, "Scheduler hold during the largest fan-out", &scheduler/1},
      {:brokers, 7, "Brokers: end to end through real servers", &YggBench.Brokers.run/1}
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
  # 2. Round trip

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
  # 3. Subscribe + unsubscribe cycle

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
  # 4. Mass unsubscribe

  def unsubscribe(cfg) do
    # 100k busy subscribers would otherwise delay the coordinator's timeouts
    # and polls by the time it takes to run each of them once.
    Process.flag(:priority, :high)

    records =
      for n <- cfg.mass, mode <- [:unsubscribe, :death] do
        comps =
          for c <- Comparators.all() -- [:raw],
              c in [:native, :yggdrasil] or n <= cfg.mass_full_limit,
              mode == :unsubscribe or c != :yggdrasil,
              do: c

        per =
          Harness.interleave(cfg.mass_reps, comps, fn c, rep -> mass_once(c, n, mode, rep) end)

        kase =
          if mode == :unsubscribe,
            do: "#{label(n)} subscribers, each unsubscribing",
            else: "#{label(n)} subscribers, all killed at once"

        Harness.records(:unsubscribe, kase, per, [
          {"time", :ns, :lower, []},
          {"subscriptions removed/s", :per_s, :higher, []}
        ])
      end

    %{
      records: List.flatten(records),
      primary: "time",
      notes: [
        "N processes subscribe to one channel; then either each unsubscribes itself (the clock " <>
          "stops when the last one has returned from its unsubscribe) or all are killed with " <>
          "`Process.exit(pid, :kill)` (the clock stops when no subscription is left, polled " <>
          "every millisecond). yggdrasil's unsubscribe also sends `{:Y_DISCONNECTED, _}`; death " <>
          "is the same engine path for native and yggdrasil. Registry and Phoenix.PubSub remove " <>
          "a duplicate-key entry by scanning the key's entries, so their cost grows with N²: " <>
          "they run up to #{label(cfg.mass_full_limit)} subscribers only (100k processes each " <>
          "unregistering from one key kept both schedulers in ETS scans for minutes, starving " <>
          "the VM: registry 56 s, phoenix_pubsub 163 s, measured once). #{cfg.mass_reps} repetitions."
      ]
    }
  end

  defp mass_once(c, n, mode, rep) do
    target = Comparators.target({:mass, n, mode, rep, c}, 0)
    group = Group.start(List.duplicate(target, n), :idle, &Comparators.subscribe(c, &1))
    subscribed = Comparators.count(c, target)
    if subscribed != n, do: raise("#{c}: #{subscribed} of #{n} subscriptions registered")
    t0 = Group.now()

    case mode do
      :unsubscribe ->
        coordinator = self()
        %Group{counter: counter, tag: tag} = group
        :atomics.put(counter, 1, group.size)

        Group.run_each(group, fn ->
          Comparators.unsubscribe(c, target)
          Group.countdown(counter, 1, coordinator, {tag, :left})
        end)

        Group.await(tag, :left, "#{n} processes to unsubscribe")

      :death ->
        Enum.each(group.pids, &Process.exit(&1, :kill))
        Harness.wait_until(fn -> Comparators.count(c, target) == 0 end)
    end

    elapsed = Group.now() - t0
    Group.stop(group)
    %{"time" => elapsed, "subscriptions removed/s" => n * 1.0e9 / elapsed}
  end

  ###########################
  # 5. Memory

  def memory(cfg) do
    procs = cfg.mem_procs
    per = cfg.mem_channels_per_proc
    subs = procs * per
    kase = "#{label(subs)} subscriptions"

    records =
      for c <- [:native, :registry],
          {metric, value} <- memory_run(c, procs, per, div(subs, 10)),
          do:
            Harness.record(:memory, kase, c, metric, :bytes, :lower, [value],
              zero_ok: noisy?(metric)
            )

    %{
      records: records,
      primary: "RSS bytes/subscription",
      notes: [
        "#{label(procs)} processes each subscribe to #{per} of #{label(div(subs, 10))} channels " <>
          "(10 subscribers per channel); registry does the same with `Registry.register/3` " <>
          "(Phoenix.PubSub stores subscriptions the same way). The baseline is taken with the " <>
          "processes alive and not subscribed; every process garbage-collects before each " <>
          "reading. The engine's own accounting (`Yggdrasil.info/0` `memory_bytes`) covers its " <>
          "tables; channel keys live in NIF environments, which `:erlang.memory` sees; RSS sees " <>
          "everything. One run (memory figures are stable)."
      ]
    }
  end

  # What is left after unsubscribing may be 0, and RSS moves by whole
  # allocator carriers: at --quick's size it can even shrink.
  defp noisy?(metric), do: metric =~ "left" or metric =~ "RSS"

  defp memory_run(c, procs, per, channels) do
    group =
      Group.start(Enum.to_list(0..(procs - 1)), :idle, fn i ->
        Process.put(:ygg_bench_index, i)
        :ok
      end)

    on_members = fn action ->
      coordinator = self()
      %Group{counter: counter, tag: tag} = group
      :atomics.put(counter, 1, group.size)

      Group.run_each(group, fn ->
        i = Process.get(:ygg_bench_index)

        for j <- 0..(per - 1),
            action != :gc,
            do:
              apply(Comparators, action, [
                c,
                Comparators.target(:memory, rem(i * per + j, channels))
              ])

        :erlang.garbage_collect()
        Group.countdown(counter, 1, coordinator, {tag, action})
      end)

      Group.await(tag, action, "#{group.size} processes to #{action}")
      snapshot()
    end

    base = on_members.(:gc)
    full = on_members.(:subscribe)
    emptied = on_members.(:unsubscribe)
    Group.stop(group)
    subs = procs * per

    engine =
      if c == :native,
        do: [
          {"engine bytes/subscription", (full.engine - base.engine) / subs},
          {"engine bytes left after unsubscribe", emptied.engine - base.engine}
        ],
        else: []

    engine ++
      [
        {":erlang.memory bytes/subscription", (full.erlang - base.erlang) / subs},
        {"RSS bytes/subscription", (full.rss - base.rss) / subs},
        {":erlang.memory left after unsubscribe", emptied.erlang - base.erlang}
      ]
  end

  defp snapshot do
    stir_allocators()
    :erlang.garbage_collect()
    %{engine: Yggdrasil.info().memory_bytes, erlang: :erlang.memory(:total), rss: rss()}
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

  ###########################
  # 6. Scheduler hold

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
                  :ok = Yggdrasil.Native.reset_counters()
                  times = timed_nif(engine_key, message, k, [])
                  {times, Yggdrasil.Native.info()}

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
          "`Yggdrasil.Engine.broadcast/2` does (`publish/2`, then `fanout_more/2` while the NIF " <>
          "answers `{:more, _}`), timing every NIF call from outside (for a call that yielded, this " <>
          "includes waiting to be scheduled in again) and from inside the NIF (wall and thread CPU " <>
          "time, `Yggdrasil.info/0`). The max of #{cfg.sched_reps} repetitions is in the CSV's max."
      ]
    }
  end

  defp nif_metrics(nil, _k), do: %{}

  defp nif_metrics({times, inside}, k) do
    p = Stats.percentiles(times, [50, 99])

    %{
      "NIF call p50" => p[50],
      "NIF call p99" => p[99],
      "longest NIF call" => Enum.max(times),
      "NIF calls per publish" => length(times) / k,
      "NIF calls over 1 ms" => Enum.count(times, &(&1 > 1_000_000)),
      "longest call inside, wall" => inside.fanout_max_wall_us * 1_000,
      "longest call inside, CPU" => inside.fanout_max_cpu_us * 1_000,
      "calls over 1 ms inside, CPU" => inside.fanout_over_1ms_cpu
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
    result = Yggdrasil.Native.fanout_more(rest, message)
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
