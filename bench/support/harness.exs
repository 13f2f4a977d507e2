# Shared machinery of the benchmark suite: comparators, subscriber process
# groups, timing loops, statistics, and the markdown report.
# Loaded by bench/run.exs and bench/cluster.exs. OTP/Elixir only.

defmodule YggBench.Stats do
  @moduledoc false

  @doc "Several nearest-rank percentiles of one list of samples: %{p => value}."
  def percentiles(values, ps) do
    sorted = values |> Enum.sort() |> List.to_tuple()
    n = tuple_size(sorted)

    Map.new(ps, fn p ->
      rank = (p / 100 * n) |> Float.ceil() |> trunc() |> max(1) |> min(n)
      {p, if(n == 0, do: nil, else: elem(sorted, rank - 1))}
    end)
  end

  def median(values), do: percentiles(values, [50])[50]
end

defmodule YggBench.Comparators do
  @moduledoc false
  # Every comparator delivers `{:Y_EVENT, channel_struct, payload}`:
  #   raw            - `for pid <- pids, do: send(pid, msg)`, the floor
  #   registry       - Elixir Registry, keys: :duplicate, one partition per
  #                    scheduler, Registry.dispatch/3
  #   phoenix_pubsub - Phoenix.PubSub.broadcast/3 (compiled at run time from
  #                    PHOENIX_PUBSUB_PATH; skipped without it)
  #   native         - Yggdrasil.Backend.Default.publish/3 (the engine)
  #   yggdrasil      - Yggdrasil.publish/2 (the whole API, :default transformer)

  @compile {:no_warn_undefined, [Phoenix.PubSub, Phoenix.PubSub.Supervisor]}

  alias Yggdrasil.Backend.Default, as: Backend
  alias Yggdrasil.Channel

  @registry YggBench.Registry
  @pubsub YggBench.PubSub
  @order [:raw, :registry, :phoenix_pubsub, :native, :yggdrasil]

  def order, do: @order

  @doc "The comparators available in this run, in report order."
  def all, do: Enum.filter(@order, &available?/1)

  def available?(:phoenix_pubsub), do: phoenix() != nil
  def available?(_), do: true

  def phoenix, do: :persistent_term.get({__MODULE__, :phoenix}, nil)

  # Loading Phoenix.PubSub: never a dependency. Its `lib/**/*.ex` is
  # compiled into a temporary directory on the code path (nothing is written
  # to the checkout), which other nodes can load too (bench/cluster.exs).
  # `{:ok, version}` or `{:skipped, why}`.
  def load_phoenix do
    with path when path not in [nil, ""] <- System.get_env("PHOENIX_PUBSUB_PATH"),
         path = Path.expand(path),
         [_ | _] = files <- Path.wildcard(Path.join(path, "lib/**/*.ex")) do
      dir = Path.join(System.tmp_dir!(), "ygg_bench_phoenix_#{System.pid()}")
      File.mkdir_p!(dir)

      case Kernel.ParallelCompiler.compile_to_path(files, dir) do
        {:ok, _, _} ->
          Code.prepend_path(dir)

          version =
            YggBench.Harness.read_match(Path.join(path, "mix.exs"), ~r/@version "([^"]+)"/)

          :persistent_term.put({__MODULE__, :phoenix}, %{path: path, version: version, dir: dir})
          {:ok, version}

        {:error, errors, _} ->
          {:skipped, "compiling #{path} failed: #{inspect(errors)}"}
      end
    else
      [] -> {:skipped, "no lib/**/*.ex under PHOENIX_PUBSUB_PATH"}
      _ -> {:skipped, "PHOENIX_PUBSUB_PATH is not set"}
    end
  end

  ###########################
  # Registry and PubSub instances
  #
  # A holder process (trapping exits) owns them. `reset_infra/0` kills every
  # process of both trees at once, which drops their ETS tables: tearing
  # down 100k registrations on one key through Registry's own cleanup is
  # quadratic and would take minutes.

  def start_infra do
    parent = self()
    pid = spawn(fn -> infra_init(parent) end)

    receive do
      {:infra, ^pid, :ready} -> :persistent_term.put({__MODULE__, :infra}, pid)
      {:infra, ^pid, {:error, reason}} -> raise "could not start Registry/PubSub: #{reason}"
    after
      30_000 -> raise "Registry/PubSub did not start"
    end
  end

  def reset_infra do
    pid = :persistent_term.get({__MODULE__, :infra})
    ref = make_ref()
    send(pid, {:reset, self(), ref})

    receive do
      {^ref, :done} -> :ok
    after
      60_000 -> raise "Registry/PubSub reset timed out"
    end
  end

  defp infra_init(parent) do
    Process.flag(:trap_exit, true)
    # Resets must not wait behind a run queue full of subscribers.
    Process.flag(:priority, :high)

    if phoenix() != nil and Process.whereis(Phoenix.PubSub) == nil do
      # What Phoenix.PubSub.Application starts.
      {:ok, _} = :pg.start_link(Phoenix.PubSub)
    end

    case start_services() do
      {:ok, pids} ->
        send(parent, {:infra, self(), :ready})
        infra_loop(pids)

      {:error, reason} ->
        send(parent, {:infra, self(), {:error, reason}})
    end
  end

  defp start_services do
    {:ok, registry} =
      Registry.start_link(
        keys: :duplicate,
        partitions: System.schedulers_online(),
        name: @registry
      )

    pubsub =
      if phoenix() do
        {:ok, pid} = Phoenix.PubSub.Supervisor.start_link(name: @pubsub)
        [pid]
      else
        []
      end

    {:ok, Enum.flat_map([registry | pubsub], &tree/1)}
  rescue
    error -> {:error, Exception.message(error)}
  end

  defp tree(supervisor) do
    children =
      for {_, pid, type, _} <- Supervisor.which_children(supervisor), is_pid(pid) do
        if type == :supervisor, do: tree(pid), else: [pid]
      end

    [supervisor | List.flatten(children)]
  end

  defp infra_loop(pids) do
    receive do
      {:reset, from, ref} ->
        refs = Enum.map(pids, &Process.monitor/1)
        Enum.each(pids, &Process.exit(&1, :kill))
        Enum.each(refs, fn ref -> receive(do: ({:DOWN, ^ref, _, _, _} -> :ok)) end)
        flush_exits()
        {:ok, pids} = start_services()
        send(from, {ref, :done})
        infra_loop(pids)

      {:EXIT, _, _} ->
        infra_loop(pids)
    end
  end

  defp flush_exits do
    receive do
      {:EXIT, _, _} -> flush_exits()
    after
      0 -> :ok
    end
  end

  ###########################
  # Channels, subscriptions, publishing

  @doc "A channel (as `Yggdrasil.gen_channel/1` completes it) and a topic."
  def target(scope, index) do
    channel = %Channel{
      name: {:ygg_bench, scope, index},
      adapter: :elixir,
      transformer: :default,
      backend: :default
    }

    topic =
      "ygg_bench:" <>
        Integer.to_string(:erlang.phash2(scope, 4_294_967_296)) <> ":" <> Integer.to_string(index)

    %{channel: channel, topic: topic}
  end

  @doc "Subscribes the calling process with every mechanism `comps` need."
  def subscribe_all(comps, target) do
    comps
    |> Enum.map(&mechanism/1)
    |> Enum.uniq()
    |> Enum.each(&subscribe(&1, target))
  end

  # native and yggdrasil share the engine's subscription.
  defp mechanism(:native), do: :yggdrasil
  defp mechanism(other), do: other

  def subscribe(:raw, _target), do: :ok

  def subscribe(:registry, %{channel: channel}) do
    {:ok, _} = Registry.register(@registry, channel, nil)
    :ok
  end

  def subscribe(:phoenix_pubsub, %{topic: topic}),
    do: :ok = Phoenix.PubSub.subscribe(@pubsub, topic)

  def subscribe(:native, %{channel: channel}), do: :ok = Backend.subscribe(channel)
  def subscribe(:yggdrasil, %{channel: channel}), do: :ok = Yggdrasil.subscribe(channel)

  def unsubscribe(:registry, %{channel: channel}),
    do: :ok = Registry.unregister(@registry, channel)

  def unsubscribe(:phoenix_pubsub, %{topic: topic}),
    do: :ok = Phoenix.PubSub.unsubscribe(@pubsub, topic)

  def unsubscribe(:native, %{channel: channel}), do: :ok = Backend.unsubscribe(channel)
  def unsubscribe(:yggdrasil, %{channel: channel}), do: :ok = Yggdrasil.unsubscribe(channel)

  @doc """
  Subscriptions left on the target (registry and phoenix_pubsub: in the
  whole instance, so only one group may use them at a time).
  """
  def count(:registry, _target), do: Registry.count(@registry)
  def count(:phoenix_pubsub, _target), do: Registry.count(@pubsub)

  def count(engine, %{channel: channel}) when engine in [:native, :yggdrasil],
    do: Yggdrasil.subscriber_count(channel)

  @doc "What `publish/3` takes for this comparator (prepared outside timing)."
  def pub_key(:raw, %{channel: channel}, pids), do: {pids, channel}
  def pub_key(:registry, %{channel: channel}, _pids), do: channel
  def pub_key(:phoenix_pubsub, %{channel: channel, topic: topic}, _pids), do: {topic, channel}
  def pub_key(_engine, %{channel: channel}, _pids), do: channel

  def publish(:raw, {pids, channel}, payload) do
    message = {:Y_EVENT, channel, payload}
    for pid <- pids, do: send(pid, message)
    :ok
  end

  def publish(:registry, channel, payload) do
    message = {:Y_EVENT, channel, payload}

    Registry.dispatch(@registry, channel, fn entries ->
      for {pid, _} <- entries, do: send(pid, message)
    end)
  end

  def publish(:phoenix_pubsub, {topic, channel}, payload),
    do: Phoenix.PubSub.broadcast(@pubsub, topic, {:Y_EVENT, channel, payload})

  def publish(:native, channel, payload), do: Backend.publish(channel, payload, nil)
  def publish(:yggdrasil, channel, payload), do: Yggdrasil.publish(channel, payload)
end

defmodule YggBench.Group do
  @moduledoc false
  # A set of subscriber processes. Each runs `setup.(arg)` (its
  # subscriptions) and then, per mode:
  #   :count - counts events; when its count reaches the round's threshold
  #            it counts down an atomic, and the last one tells the
  #            coordinator, so a round ends when every subscriber has every
  #            message;
  #   :ack   - answers every event with the group's tag (round trips);
  #   :timed - counts like :count, and keeps the latency of every event
  #            whose payload is a `stamp/0` (read with `latencies/1`);
  #   :idle  - ignores events.
  # All of them run `{tag, :run, fun}` requests (`fun.(count)` for an arity-1
  # fun: the events received so far) and exit when the coordinator does.
  #
  # Atomics slots: 1 remaining in this round, 2 cumulative threshold,
  # 3 ready countdown, 4 unexpected extra events.

  defstruct [:pids, :counter, :tag, :size, :engine_before]

  @timeout 120_000

  # Monotonic time can be negative: stamps are offset to stay 16 hex digits.
  @stamp_offset Bitwise.bsl(1, 62)
  @latencies :ygg_bench_latencies

  def now, do: :erlang.monotonic_time(:nanosecond)

  def start(args, mode, setup) when is_list(args) and mode in [:count, :timed, :ack, :idle] do
    coordinator = self()
    tag = make_ref()
    size = length(args)
    counter = :atomics.new(4, signed: true)
    :atomics.put(counter, 3, size)
    engine_before = Yggdrasil.info().subscribers

    pids =
      Enum.map(args, fn arg ->
        spawn(fn -> init(arg, setup, mode, counter, coordinator, tag) end)
      end)

    await(tag, :ready, "#{size} subscribers to get ready")

    %__MODULE__{
      pids: pids,
      counter: counter,
      tag: tag,
      size: size,
      engine_before: engine_before
    }
  end

  defp init(arg, setup, mode, counter, coordinator, tag) do
    Process.monitor(coordinator)
    :ok = setup.(arg)
    countdown(counter, 3, coordinator, {tag, :ready})
    loop(mode, counter, coordinator, tag, 0)
  end

  @doc "Decrements `slot`; the process that brings it to zero sends `message`."
  def countdown(counter, slot, coordinator, message) do
    if :atomics.sub_get(counter, slot, 1) == 0, do: send(coordinator, message)
    :ok
  end

  defp loop(mode, counter, coordinator, tag, count) do
    receive do
      {:Y_EVENT, _, payload} ->
        count = event(mode, counter, coordinator, tag, count, payload)
        loop(mode, counter, coordinator, tag, count)

      {^tag, :run, fun} ->
        if is_function(fun, 1), do: fun.(count), else: fun.()
        loop(mode, counter, coordinator, tag, count)

      {:DOWN, _, :process, ^coordinator, _} ->
        :ok

      _other ->
        loop(mode, counter, coordinator, tag, count)
    end
  end

  defp event(:timed, counter, coordinator, tag, count, payload) do
    Process.put(@latencies, [now() - unstamp(payload) | Process.get(@latencies, [])])
    event(:count, counter, coordinator, tag, count, payload)
  end

  defp event(:count, counter, coordinator, tag, count, _payload) do
    count = count + 1
    threshold = :atomics.get(counter, 2)

    cond do
      count == threshold -> countdown(counter, 1, coordinator, {tag, :done})
      count > threshold -> :atomics.add(counter, 4, 1)
      true -> :ok
    end

    count
  end

  defp event(:ack, _counter, coordinator, tag, count, _payload) do
    send(coordinator, tag)
    count + 1
  end

  defp event(:idle, _counter, _coordinator, _tag, count, _payload), do: count + 1

  @doc "A payload carrying its send time as text (every broker carries text)."
  def stamp, do: (now() + @stamp_offset) |> Integer.to_string(16) |> String.pad_leading(16, "0")

  defp unstamp(<<hex::binary-16, _::binary>>), do: String.to_integer(hex, 16) - @stamp_offset

  @doc "`fun.(count)` run in every member (count: its events so far); the results."
  def gather(%__MODULE__{tag: tag} = group, fun) do
    coordinator = self()
    run_each(group, fn count -> send(coordinator, {tag, :gathered, fun.(count)}) end)
    Enum.map(group.pids, fn _ -> receive(do: ({^tag, :gathered, value} -> value)) end)
  end

  @doc "The latencies (ns) a :timed group's members kept since the last call."
  def latencies(group),
    do: group |> gather(fn _ -> Process.put(@latencies, []) || [] end) |> Enum.concat()

  @doc "Events the members are still waiting for in this round (after a timeout)."
  def missing(%__MODULE__{counter: counter} = group) do
    expected = :atomics.get(counter, 2)
    group.size * expected - Enum.sum(gather(group, &min(&1, expected)))
  end

  @doc """
  Runs `publish` (which must send `per_subscriber` events to every member)
  and waits until every member has them all. Returns
  `{ns_until_all_received, ns_in_publish, publish_result}`.
  """
  def round(%__MODULE__{} = group, per_subscriber, publish, timeout \\ @timeout) do
    :atomics.put(group.counter, 1, group.size)
    :atomics.add(group.counter, 2, per_subscriber)
    t0 = now()
    result = publish.()
    t1 = now()
    await(group.tag, :done, "every subscriber to receive #{per_subscriber} messages", timeout)
    t2 = now()
    {t2 - t0, t1 - t0, result}
  end

  @doc "Events received beyond what was published (must stay 0)."
  def extras(%__MODULE__{counter: counter}), do: :atomics.get(counter, 4)

  @doc "Asks every member to run `fun` (in its own process)."
  def run_each(%__MODULE__{pids: pids, tag: tag}, fun),
    do: Enum.each(pids, &send(&1, {tag, :run, fun}))

  def await(tag, what, description, timeout \\ @timeout) do
    receive do
      {^tag, ^what} -> :ok
    after
      timeout -> raise "timed out after #{div(timeout, 1000)} s waiting for #{description}"
    end
  end

  @doc """
  Kills the members (Registry/PubSub instances are reset first, so their
  cleanup costs nothing) and waits until the engine has dropped them.
  """
  def stop(%__MODULE__{pids: pids, engine_before: before}) do
    YggBench.Comparators.reset_infra()
    Enum.each(pids, &Process.exit(&1, :kill))
    YggBench.Harness.wait_until(fn -> not Enum.any?(pids, &Process.alive?/1) end)
    YggBench.Harness.wait_until(fn -> Yggdrasil.info().subscribers <= before end)
  end
end

defmodule YggBench.Loops do
  @moduledoc false
  # Publishing loops. Every comparator goes through the same
  # `Comparators.publish/3` dispatch, so their loop overhead is identical.

  alias YggBench.Comparators, as: C

  def now, do: :erlang.monotonic_time(:nanosecond)

  def repeat(_c, _key, _payload, 0), do: :ok

  def repeat(c, key, payload, n) do
    C.publish(c, key, payload)
    repeat(c, key, payload, n - 1)
  end

  @doc "Publish, wait for the subscriber's ack; durations (ns)."
  def round_trips(c, key, payload, tag, n), do: round_trips(c, key, payload, tag, n, [])

  defp round_trips(_c, _key, _payload, _tag, 0, acc), do: acc

  defp round_trips(c, key, payload, tag, n, acc) do
    t0 = now()
    C.publish(c, key, payload)

    receive do
      ^tag -> :ok
    after
      10_000 -> raise "no ack from the round-trip subscriber (#{c})"
    end

    t1 = now()
    round_trips(c, key, payload, tag, n - 1, [t1 - t0 | acc])
  end

  @doc "Subscribe + unsubscribe of the calling process on each target; durations."
  def cycles(c, targets), do: cycles(c, targets, [])

  defp cycles(_c, [], acc), do: acc

  defp cycles(c, [target | rest], acc) do
    t0 = now()
    C.subscribe(c, target)
    C.unsubscribe(c, target)
    t1 = now()
    drain(c)
    cycles(c, rest, [t1 - t0 | acc])
  end

  # Yggdrasil.subscribe/unsubscribe notify the caller; read them outside
  # the timed part so the mailbox stays empty.
  defp drain(:yggdrasil) do
    receive(do: ({:Y_CONNECTED, _} -> :ok))
    receive(do: ({:Y_DISCONNECTED, _} -> :ok))
  end

  defp drain(_c), do: :ok
end

defmodule YggBench.Harness do
  @moduledoc false

  alias YggBench.Comparators
  alias YggBench.Stats

  @results_dir Path.expand("../results", __DIR__)

  def config(true = _quick?) do
    %{
      quick: true,
      reps: 2,
      sizes: [1, 100, 10_000],
      budget: 30_000,
      max_k: 10_000,
      rt_iters: 2_000,
      cycle_iters: 2_000,
      mass: 10_000,
      mass_reps: 1,
      mem_procs: 1_000,
      broker_msgs: 400,
      broker_fan_msgs: 20,
      broker_reps: 1
    }
    |> Map.merge(common())
  end

  def config(false) do
    %{
      quick: false,
      reps: 5,
      sizes: [1, 10, 100, 1_000, 10_000, 100_000],
      budget: 200_000,
      max_k: 50_000,
      rt_iters: 20_000,
      cycle_iters: 20_000,
      mass: 10_000,
      mass_reps: 3,
      mem_procs: 10_000,
      broker_msgs: 4_000,
      broker_fan_msgs: 400,
      broker_reps: 3
    }
    |> Map.merge(common())
  end

  defp common do
    %{
      min_k: 4,
      small: {:chat, 42, :hello},
      mem_channels_per_proc: 100
    }
  end

  def main(argv) do
    {opts, _, invalid} =
      OptionParser.parse(argv, strict: [quick: :boolean, only: :string, out: :string])

    if invalid != [], do: raise(ArgumentError, "unknown options: #{inspect(invalid)}")
    quick? = Keyword.get(opts, :quick, false)
    cfg = config(quick?)
    full? = not quick? and opts[:only] == nil
    phoenix = Comparators.load_phoenix()
    Comparators.start_infra()
    machine = machine(phoenix)
    IO.puts(machine_lines(machine) <> "\n")
    started = System.monotonic_time(:millisecond)

    results =
      for {id, number, title, fun} <- select(YggBench.Scenarios.list(), opts[:only]) do
        IO.write("[#{number}] #{title} ... ")
        t0 = System.monotonic_time(:millisecond)
        result = isolated(fn -> fun.(cfg) end)
        settle()
        seconds = (System.monotonic_time(:millisecond) - t0) / 1000
        IO.puts("#{elem(result, 0)} (#{:erlang.float_to_binary(seconds, decimals: 1)} s)")

        case result do
          {:ok, r} -> Map.merge(%{id: id, number: number, title: title, notes: []}, r)
          {:error, why} -> %{id: id, number: number, title: title, error: why, records: []}
        end
      end

    machine =
      Map.put(machine, :duration_s, (System.monotonic_time(:millisecond) - started) / 1000)

    dir = opts[:out] || if(full?, do: @results_dir, else: System.tmp_dir!())

    base = if full?, do: "latest", else: if(quick?, do: "ygg-bench-quick", else: "ygg-bench")

    File.mkdir_p!(dir)
    markdown = render(machine, results, cfg)
    path = Path.join(dir, base <> ".md")
    File.write!(path, markdown)
    IO.puts("\n" <> markdown <> "Written: #{path}")

    case sanity(results) do
      [] ->
        IO.puts(
          "Sanity: every round completed with every message received; all numbers non-zero."
        )

      problems ->
        IO.puts(:stderr, "Sanity check FAILED:\n  " <> Enum.join(problems, "\n  "))
        System.halt(1)
    end
  end

  defp select(scenarios, nil), do: scenarios

  defp select(scenarios, only) do
    wanted = only |> String.split(",", trim: true) |> Enum.map(&String.trim/1)
    chosen = Enum.filter(scenarios, fn {id, n, _, _} -> "#{id}" in wanted or "#{n}" in wanted end)
    if chosen == [], do: raise(ArgumentError, "unknown scenarios: #{only}")
    chosen
  end

  @doc "Runs `fun` in a fresh process (clean heap and mailbox): `{:ok, _}` or `{:error, text}`."
  def isolated(fun) do
    {pid, ref} =
      spawn_monitor(fn ->
        result =
          try do
            {:ok, fun.()}
          catch
            kind, reason -> {:error, Exception.format(kind, reason, __STACKTRACE__)}
          end

        exit({:bench_result, result})
      end)

    receive do
      {:DOWN, ^ref, :process, ^pid, {:bench_result, result}} -> result
      {:DOWN, ^ref, :process, ^pid, reason} -> {:error, inspect(reason)}
    end
  end

  @doc "Leaves nothing subscribed behind."
  def settle do
    Comparators.reset_infra()
    wait_until(fn -> Yggdrasil.info().subscriptions == 0 end)
    :erlang.garbage_collect()
  end

  def wait_until(check, timeout_ms \\ 60_000),
    do: wait_until(check, timeout_ms, System.monotonic_time(:millisecond) + timeout_ms)

  defp wait_until(check, timeout_ms, deadline) do
    cond do
      check.() -> :ok
      System.monotonic_time(:millisecond) > deadline -> raise "condition not reached in time"
      true -> Process.sleep(1) && wait_until(check, timeout_ms, deadline)
    end
  end

  @doc """
  Runs `fun.(comparator, rep, block)` for every rep, and within a rep for
  `blocks` blocks that rotate over the comparators (the order changes
  every block, so that all see the same mix of process placements).
  `fun` returns a list of samples. Returns %{comparator => [samples of one rep]}.
  """
  def interleave_blocks(reps, blocks, comps, fun) do
    Enum.reduce(1..reps, %{}, fn rep, acc ->
      :erlang.garbage_collect()

      1..max(blocks, 1)
      |> Enum.reduce(%{}, fn block, samples ->
        comps
        |> rotate(rep + block)
        |> Enum.reduce(samples, fn c, samples ->
          new = fun.(c, rep, block)
          Map.update(samples, c, new, &(new ++ &1))
        end)
      end)
      |> Enum.reduce(acc, fn {c, list}, acc -> Map.update(acc, c, [list], &[list | &1]) end)
    end)
  end

  @doc "`interleave_blocks/4` with one block and `fun.(c, rep)` returning one metrics map."
  def interleave(reps, comps, fun) do
    reps
    |> interleave_blocks(1, comps, fn c, rep, _ ->
      :erlang.garbage_collect()
      [fun.(c, rep)]
    end)
    |> Map.new(fn {c, reps} -> {c, Enum.concat(reps)} end)
  end

  defp rotate([], _), do: []

  defp rotate(list, n),
    do: Enum.split(list, rem(n, length(list))) |> then(fn {a, b} -> b ++ a end)

  @doc """
  Records of one case: `per` is %{comparator => [metrics map per rep]},
  `specs` [{metric, unit, :higher | :lower, opts}].
  """
  def records(scenario, kase, per, specs) do
    for c <- Comparators.order() ++ (Map.keys(per) -- Comparators.order()),
        maps = per[c],
        maps != nil,
        {metric, unit, better, opts} <- specs,
        values = Enum.map(maps, &Map.get(&1, metric)),
        not Enum.any?(values, &is_nil/1),
        do: record(scenario, kase, c, metric, unit, better, values, opts)
  end

  def record(scenario, kase, comp, metric, unit, better, values, opts \\ []) do
    %{
      scenario: scenario,
      case: kase,
      comparator: comp,
      metric: metric,
      unit: unit,
      better: better,
      values: values,
      median: Stats.median(values),
      min: Enum.min(values),
      max: Enum.max(values),
      zero_ok: Keyword.get(opts, :zero_ok, false)
    }
  end

  ###########################
  # Machine

  def machine(phoenix) do
    commit =
      case System.cmd("git", ["rev-parse", "--short", "HEAD"], stderr_to_stdout: true) do
        {sha, 0} ->
          {changes, _} = System.cmd("git", ["status", "--porcelain", "--", "lib", "native"])
          String.trim(sha) <> if(changes == "", do: "", else: " (+ uncommitted changes)")

        _ ->
          "?"
      end

    %{
      date: DateTime.utc_now() |> DateTime.truncate(:second) |> DateTime.to_iso8601(),
      cpu: read_match("/proc/cpuinfo", ~r/model name\s*:\s*(.+)/),
      schedulers: System.schedulers_online(),
      otp: System.otp_release(),
      elixir: System.version(),
      commit: System.get_env("YGG_BENCH_COMMIT") || commit,
      phoenix: phoenix,
      load: read_match("/proc/loadavg", ~r/^(\S+ \S+ \S+)/)
    }
  end

  @doc "The first capture of `regex` in the file at `path`, or \"?\"."
  def read_match(path, regex) do
    with {:ok, text} <- File.read(path),
         [_, found] <- Regex.run(regex, text),
         do: String.trim(found),
         else: (_ -> "?")
  end

  def machine_lines(m) do
    phoenix =
      case m.phoenix do
        {:ok, version} ->
          "Phoenix.PubSub #{version}, compiled at run time from PHOENIX_PUBSUB_PATH"

        {:skipped, why} ->
          "phoenix_pubsub skipped: #{why}"
      end

    """
    - Date: #{m.date} (UTC); commit #{m.commit}
    - #{m.schedulers} schedulers online (#{m.cpu}), OTP #{m.otp}, Elixir #{m.elixir}, MIX_ENV=#{Mix.env()}
    - Load average at start: #{m.load} (anything else running moves the numbers); #{phoenix}\
    """
  end

  ###########################
  # Report

  @ratio_refs [:raw, :registry, :phoenix_pubsub]

  def render(machine, results, cfg) do
    mode = if cfg.quick, do: " (--quick: harness check only, numbers not meaningful)", else: ""

    IO.iodata_to_binary([
      "# Yggdrasil native: benchmark results#{mode}\n\n",
      "Produced by `make bench#{if cfg.quick, do: "-quick"}` in #{round(machine.duration_s)} s.\n\n",
      machine_lines(machine),
      """


      Comparators, all delivering `{:Y_EVENT, channel_struct, payload}`: **raw** `for pid <- pids,
      do: send(pid, msg)` (the floor); **registry** `Registry` (`keys: :duplicate`, one partition per
      scheduler) + `Registry.dispatch/3`; **phoenix_pubsub** `Phoenix.PubSub.broadcast/3`; **native**
      `Yggdrasil.Backend.Default.publish/3` (the engine alone); **yggdrasil** `Yggdrasil.publish/2`.
      They run interleaved in one VM; cells show the median over repetitions, with min–max for the
      main metric. `× X` is speed relative to X on the main metric (> 1 = faster than X). Throughput
      counts until every subscriber has received every message.

      """,
      headline(results),
      Enum.map(results, &section/1)
    ])
  end

  # The README's table: fan-out deliveries/s and the ratios it quotes.
  defp headline(results) do
    with %{records: [_ | _] = records} <- Enum.find(results, &(&1.id == :fanout)) do
      comps = records |> Enum.map(& &1.comparator) |> Enum.uniq()
      get = fn kase, c -> find(records, kase, c, "deliveries/s") end

      pairs =
        for {a, b} <- [native: :raw, native: :phoenix_pubsub, yggdrasil: :phoenix_pubsub],
            a in comps,
            b in comps,
            do: {a, b}

      rows =
        for kase <- records |> Enum.map(& &1.case) |> Enum.uniq() do
          [kase | Enum.map(comps, &fmt(get.(kase, &1), :per_s))] ++
            Enum.map(pairs, fn {a, b} ->
              fmt_ratio(speed(get.(kase, a), get.(kase, b), :higher))
            end)
        end

      header =
        ["subscribers" | Enum.map(comps, &"#{&1}")] ++
          Enum.map(pairs, fn {a, b} -> "#{a} ÷ #{b}" end)

      ["## Headline: one channel, fan-out (deliveries/s)\n\n", table(header, rows), "\n"]
    else
      _ -> ""
    end
  end

  defp find(records, kase, comp, metric) do
    Enum.find_value(
      records,
      &(&1.case == kase and &1.comparator == comp and &1.metric == metric and &1.median)
    )
  end

  defp speed(ours, ref, _) when ours == nil or ref == nil, do: nil
  defp speed(ours, ref, :higher) when ref > 0, do: ours / ref
  defp speed(ours, ref, :lower) when ours > 0, do: ref / ours
  defp speed(_, _, _), do: nil

  defp section(%{error: reason} = r),
    do: "## #{r.number}. #{r.title}\n\nFAILED:\n\n```\n#{reason}\n```\n\n"

  defp section(r) do
    records = r.records
    metrics = records |> Enum.map(& &1.metric) |> Enum.uniq()
    primary = r[:primary] || hd(metrics)
    comps = records |> Enum.map(& &1.comparator) |> Enum.uniq()
    refs = Enum.filter(r[:ratio_refs] || @ratio_refs, &(&1 in comps))

    rows =
      for kase <- records |> Enum.map(& &1.case) |> Enum.uniq(),
          c <- comps,
          mine =
            Map.new(
              for(rec <- records, rec.case == kase, rec.comparator == c, do: {rec.metric, rec})
            ),
          mine != %{} do
        cells = Enum.map(metrics, &if(rec = mine[&1], do: cell(rec, &1 == primary), else: "—"))

        ratios = for ref <- refs, do: ratio_cell(mine[primary], peer(records, mine[primary], ref))

        [kase, "#{c}"] ++ cells ++ ratios
      end

    notes = Enum.map(r.notes, &"#{&1}\n\n")

    [
      "## #{r.number}. #{r.title}\n\n",
      notes,
      table(["case", "comparator"] ++ metrics ++ Enum.map(refs, &"× #{&1}"), rows),
      "\n"
    ]
  end

  # The record of comparator `ref` for the case and metric of `rec`.
  defp peer(_records, nil, _ref), do: nil
  defp peer(_records, %{comparator: ref}, ref), do: nil

  defp peer(records, rec, ref),
    do:
      Enum.find(
        records,
        &(&1.case == rec.case and &1.comparator == ref and &1.metric == rec.metric)
      )

  defp cell(rec, with_range?) do
    range = " (#{fmt(rec.min, rec.unit)}–#{fmt(rec.max, rec.unit)})"
    fmt(rec.median, rec.unit) <> if(with_range? and rec.min != rec.max, do: range, else: "")
  end

  defp ratio_cell(_ours, nil), do: "—"
  defp ratio_cell(ours, theirs), do: fmt_ratio(speed(ours.median, theirs.median, ours.better))

  def table(header, rows) do
    line = fn cells -> "| " <> Enum.join(cells, " | ") <> " |\n" end

    [
      line.(header),
      "|" <> Enum.map_join(header, "|", fn _ -> "---" end) <> "|\n",
      Enum.map(rows, line)
    ]
  end

  @doc "A value with its unit, the way every report of the bench writes it."
  def fmt(nil, _unit), do: "—"
  def fmt(value, :per_s), do: scaled(value, [{1.0e9, " G"}, {1.0e6, " M"}, {1.0e3, " k"}]) <> "/s"
  def fmt(value, :ns), do: scaled(value, [{1.0e9, " s"}, {1.0e6, " ms"}, {1.0e3, " µs"}], " ns")
  def fmt(value, :ms), do: fmt(value * 1_000_000, :ns)
  def fmt(value, :bytes), do: scaled(value, [{1_048_576, " MiB"}, {10_240, " KiB"}], " B")
  def fmt(value, :count), do: num(value)

  defp scaled(value, steps, unit \\ "") do
    case Enum.find(steps, fn {size, _} -> abs(value) >= size end) do
      {size, suffix} -> num(value / size) <> suffix
      nil -> num(value) <> unit
    end
  end

  defp num(v) when is_integer(v), do: Integer.to_string(v)
  defp num(v) when abs(v) >= 100, do: Integer.to_string(round(v))
  defp num(v) when abs(v) >= 10, do: :erlang.float_to_binary(v / 1, decimals: 1)
  defp num(v), do: :erlang.float_to_binary(v / 1, decimals: 2)

  def fmt_ratio(nil), do: "—"
  def fmt_ratio(r), do: num(r) <> "×"

  @doc "What --quick checks: no scenario failed, no number is zero unless it may be."
  def sanity(results) do
    failed = for %{error: why} = r <- results, do: "scenario #{r.number} failed: #{why}"

    zeros =
      for r <- results,
          rec <- r.records,
          not rec.zero_ok,
          Enum.any?(rec.values, &(&1 <= 0)),
          do:
            "scenario #{r.number} #{rec.case} #{rec.comparator} #{rec.metric}: #{inspect(rec.values)}"

    failed ++ zeros
  end
end

Code.require_file("brokers.exs", __DIR__)
Code.require_file("scenarios.exs", __DIR__)
