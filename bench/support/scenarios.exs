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
      {:brokers, 7, "Brokers: end to end through real servers", &YggBench.Brokers.run/1}
    ]
  end

  def label(n) when n >= 1_000_000 and rem(n, 1_000_000) == 0, do: "#{div(n, 1_000_000)}M"
  def label(n) when n >= 1_000 and rem(n, 1_000) == 0, do: "#{div(n, 1_000)}k"
  def label(n), do: Integer.to_string(n)

  # Round trips and subscribe cycles alternate comparators in blocks of this size.
  @block 100

  @fanout_specs [{"deliveries/s", :per_s, :higher, []}]

  ###########################
  # 1. Fan-out

  def fanout(cfg) do
    comps = Comparators.all()

    records =
      Enum.flat_map(cfg.sizes, fn n ->
        target = Comparators.target(:fanout, n)
        group = start_group(List.duplicate(target, n), :count, comps)
        k = clamp(div(cfg.budget, n), cfg.min_k, cfg.max_k)
        per = measure_fanout(group, comps, target, cfg.small, k, cfg.reps)
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
          "a round ends when every subscriber has counted all of its messages. " <>
          "#{cfg.reps} repetitions."
      ]
    }
  end

  # Warm-up, then `reps` interleaved repetitions of one throughput round of
  # k messages.
  defp measure_fanout(group, comps, target, payload, k, reps) do
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

    rounds =
      Harness.interleave_blocks(reps, blocks, comps, fn c, _rep, _block ->
        key = Map.fetch!(keys, c)
        {total, _, _} = Group.round(group, kb, fn -> Loops.repeat(c, key, payload, kb) end)
        [total]
      end)

    summarize(rounds, fn totals ->
      %{"deliveries/s" => n * kb * length(totals) * 1.0e9 / Enum.sum(totals)}
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
        p = Stats.percentiles(samples, [50, 99])
        %{"p50" => p[50], "p99" => p[99]}
      end)

    finish(group)

    specs = [{"p50", :ns, :lower, []}, {"p99", :ns, :lower, []}]

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

    for c <- comps do
      Loops.cycles(c, for(i <- 1..200, do: Comparators.target({:warm, c}, i)))
    end

    fresh =
      Harness.interleave_blocks(cfg.reps, div(cfg.cycle_iters, @block), comps, fn c, rep, block ->
        targets = for i <- 1..@block, do: Comparators.target({:fresh, c, rep, block}, i)
        Loops.cycles(c, targets)
      end)
      |> summarize(&cycle_metrics/1)

    specs = [
      {"cycle p50", :ns, :lower, []},
      {"cycle p99", :ns, :lower, []}
    ]

    %{
      records: Harness.records(:subscribe, "fresh channel", fresh, specs),
      primary: "cycle p50",
      notes: [
        "One process subscribes and unsubscribes itself #{cfg.cycle_iters} times, on channels " <>
          "never used before. yggdrasil's " <>
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
    # Thousands of busy subscribers would otherwise delay the coordinator's
    # timeouts and polls by the time it takes to run each of them once.
    Process.flag(:priority, :high)
    n = cfg.mass
    comps = Comparators.all() -- [:raw]
    per = Harness.interleave(cfg.mass_reps, comps, fn c, rep -> mass_once(c, n, rep) end)

    %{
      records:
        Harness.records(:unsubscribe, "#{label(n)} subscribers, each unsubscribing", per, [
          {"time", :ns, :lower, []}
        ]),
      primary: "time",
      notes: [
        "N processes subscribe to one channel, then each unsubscribes itself; the clock " <>
          "stops when the last one has returned from its unsubscribe. yggdrasil's unsubscribe " <>
          "also sends `{:Y_DISCONNECTED, _}`. #{cfg.mass_reps} repetitions."
      ]
    }
  end

  defp mass_once(c, n, rep) do
    target = Comparators.target({:mass, n, rep, c}, 0)
    group = Group.start(List.duplicate(target, n), :idle, &Comparators.subscribe(c, &1))
    subscribed = Comparators.count(c, target)
    if subscribed != n, do: raise("#{c}: #{subscribed} of #{n} subscriptions registered")
    t0 = Group.now()
    coordinator = self()
    %Group{counter: counter, tag: tag} = group
    :atomics.put(counter, 1, group.size)

    Group.run_each(group, fn ->
      Comparators.unsubscribe(c, target)
      Group.countdown(counter, 1, coordinator, {tag, :left})
    end)

    Group.await(tag, :left, "#{n} processes to unsubscribe")
    elapsed = Group.now() - t0
    Group.stop(group)
    %{"time" => elapsed}
  end

  ###########################
  # 5. Memory

  def memory(cfg) do
    procs = cfg.mem_procs
    per = cfg.mem_channels_per_proc
    subs = procs * per
    kase = "#{label(subs)} subscriptions"

    records =
      for {metric, value} <- memory_run(procs, per, div(subs, 10)),
          do:
            Harness.record(:memory, kase, :native, metric, :bytes, :lower, [value],
              zero_ok: metric =~ "left"
            )

    %{
      records: records,
      primary: "engine bytes/subscription",
      notes: [
        "#{label(procs)} processes each subscribe to #{per} of #{label(div(subs, 10))} channels " <>
          "(10 subscribers per channel), then unsubscribe; the engine's own accounting " <>
          "(`Yggdrasil.info/0` `memory_bytes`: its tables, not the channel keys, which live in " <>
          "NIF environments) against a baseline taken with the processes alive and not " <>
          "subscribed. One run (memory figures are stable)."
      ]
    }
  end

  defp memory_run(procs, per, channels) do
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

        for j <- 0..(per - 1), action != :gc do
          target = Comparators.target(:memory, rem(i * per + j, channels))
          apply(Comparators, action, [:native, target])
        end

        :erlang.garbage_collect()
        Group.countdown(counter, 1, coordinator, {tag, action})
      end)

      Group.await(tag, action, "#{group.size} processes to #{action}")
      Yggdrasil.info().memory_bytes
    end

    base = on_members.(:gc)
    full = on_members.(:subscribe)
    emptied = on_members.(:unsubscribe)
    Group.stop(group)

    [
      {"engine bytes/subscription", (full - base) / (procs * per)},
      {"engine bytes left after unsubscribe", emptied - base}
    ]
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
