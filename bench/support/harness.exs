# Shared machinery of the benchmark suite: comparators, subscriber process
# groups, timing loops, statistics, and the markdown/CSV report.
#
# Loaded by bench/run.exs and the per-scenario scripts with
# `Code.require_file("support/harness.exs", __DIR__)`. OTP/Elixir only.

defmodule YggBench.Stats do
  @moduledoc false

  @doc "Nearest-rank percentile of an unsorted list (nil when empty)."
  def percentile([], _p), do: nil
  def percentile(values, p), do: values |> Enum.sort() |> List.to_tuple() |> pct(p)

  @doc "Nearest-rank percentile of a sorted tuple."
  def pct({}, _p), do: nil

  def pct(sorted, p) when is_tuple(sorted) do
    n = tuple_size(sorted)
    rank = (p / 100 * n) |> Float.ceil() |> trunc() |> max(1) |> min(n)
    elem(sorted, rank - 1)
  end

  @doc "Several percentiles of one list of samples: %{p => value}."
  def percentiles(values, ps) do
    sorted = values |> Enum.sort() |> List.to_tuple()
    Map.new(ps, &{&1, pct(sorted, &1)})
  end

  def median(values), do: percentile(values, 50)
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

  ###########################
  # Loading Phoenix.PubSub

  @doc """
  Compiles `lib/**/*.ex` of the checkout in PHOENIX_PUBSUB_PATH in memory
  (nothing is written there). Returns `{:ok, version}` or `{:skipped, why}`.
  """
  def load_phoenix do
    case System.get_env("PHOENIX_PUBSUB_PATH") do
      blank when blank in [nil, ""] ->
        {:skipped, "PHOENIX_PUBSUB_PATH is not set"}

      path ->
        path = Path.expand(path)
        files = Path.wildcard(Path.join(path, "lib/**/*.ex"))

        cond do
          files == [] ->
            {:skipped, "no lib/**/*.ex under PHOENIX_PUBSUB_PATH=#{path}"}

          Code.ensure_loaded?(Phoenix.PubSub) ->
            remember_phoenix(path)

          true ->
            compile_phoenix(path, files)
        end
    end
  end

  defp compile_phoenix(path, files) do
    case Kernel.ParallelCompiler.compile(files) do
      {:ok, _modules, _warnings} -> remember_phoenix(path)
      {:error, errors, _warnings} -> {:skipped, "compiling #{path} failed: #{inspect(errors)}"}
    end
  rescue
    error -> {:skipped, "compiling #{path} failed: #{Exception.message(error)}"}
  end

  defp remember_phoenix(path) do
    version =
      case File.read(Path.join(path, "mix.exs")) do
        {:ok, text} ->
          case Regex.run(~r/@version "([^"]+)"/, text) do
            [_, version] -> version
            _ -> "unknown version"
          end

        _ ->
          "unknown version"
      end

    :persistent_term.put({__MODULE__, :phoenix}, %{path: path, version: version})
    {:ok, version}
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
    do: Yggdrasil.Native.subscriber_count(Channel.key(channel))

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
  #   :idle  - ignores events.
  # All of them run `{tag, :run, fun}` requests and exit when the
  # coordinator does.
  #
  # Atomics slots: 1 remaining in this round, 2 cumulative threshold,
  # 3 ready countdown, 4 unexpected extra events.

  defstruct [:pids, :counter, :tag, :size, :engine_before]

  @timeout 120_000

  def now, do: :erlang.monotonic_time(:nanosecond)

  def start(args, mode, setup) when is_list(args) and mode in [:count, :ack, :idle] do
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
      {:Y_EVENT, _, _} ->
        loop(mode, counter, coordinator, tag, event(mode, counter, coordinator, tag, count))

      {^tag, :run, fun} ->
        fun.()
        loop(mode, counter, coordinator, tag, count)

      {:DOWN, _, :process, ^coordinator, _} ->
        :ok

      _other ->
        loop(mode, counter, coordinator, tag, count)
    end
  end

  defp event(:count, counter, coordinator, tag, count) do
    count = count + 1
    threshold = :atomics.get(counter, 2)

    cond do
      count == threshold -> countdown(counter, 1, coordinator, {tag, :done})
      count > threshold -> :atomics.add(counter, 4, 1)
      true -> :ok
    end

    count
  end

  defp event(:ack, _counter, coordinator, tag, count) do
    send(coordinator, tag)
    count + 1
  end

  defp event(:idle, _counter, _coordinator, _tag, count), do: count + 1

  @doc """
  Runs `publish` (which must send `per_subscriber` events to every member)
  and waits until every member has them all. Returns
  `{ns_until_all_received, ns_in_publish, publish_result}`.
  """
  def round(%__MODULE__{} = group, per_subscriber, publish) do
    :atomics.put(group.counter, 1, group.size)
    :atomics.add(group.counter, 2, per_subscriber)
    t0 = now()
    result = publish.()
    t1 = now()
    await(group.tag, :done, "every subscriber to receive #{per_subscriber} messages")
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
    YggBench.Harness.wait_until(fn -> not Enum.any?(pids, &Process.alive?/1) end, 60_000)
    YggBench.Harness.wait_until(fn -> Yggdrasil.info().subscribers <= before end, 60_000)
  end
end

defmodule YggBench.Loops do
  @moduledoc false
  # Publishing loops. Every comparator goes through the same
  # `Comparators.publish/3` dispatch, so their loop overhead is identical.

  alias YggBench.Comparators, as: C

  def now, do: :erlang.monotonic_time(:nanosecond)

  @doc "Cost of the two clock reads around every timed call."
  def clock_overhead do
    t0 = now()
    t1 = now()
    t1 - t0
  end

  def repeat(_c, _key, _payload, 0), do: :ok

  def repeat(c, key, payload, n) do
    C.publish(c, key, payload)
    repeat(c, key, payload, n - 1)
  end

  @doc "Like `repeat/4`, returning each call's duration (ns)."
  def timed(c, key, payload, n), do: timed(c, key, payload, n, [])

  defp timed(_c, _key, _payload, 0, acc), do: acc

  defp timed(c, key, payload, n, acc) do
    t0 = now()
    C.publish(c, key, payload)
    t1 = now()
    timed(c, key, payload, n - 1, [t1 - t0 | acc])
  end

  @doc "`passes` passes over a tuple of keys, one publish per key."
  def round_robin(_c, _keys, _payload, 0), do: :ok

  def round_robin(c, keys, payload, passes) do
    pass(c, keys, payload, 0, tuple_size(keys))
    round_robin(c, keys, payload, passes - 1)
  end

  defp pass(c, keys, payload, i, n) when i < n do
    C.publish(c, elem(keys, i), payload)
    pass(c, keys, payload, i + 1, n)
  end

  defp pass(_c, _keys, _payload, _i, _n), do: :ok

  @doc "One timed pass over a tuple of keys."
  def timed_pass(c, keys, payload), do: timed_pass(c, keys, payload, tuple_size(keys) - 1, [])

  defp timed_pass(_c, _keys, _payload, -1, acc), do: acc

  defp timed_pass(c, keys, payload, i, acc) do
    key = elem(keys, i)
    t0 = now()
    C.publish(c, key, payload)
    t1 = now()
    timed_pass(c, keys, payload, i - 1, [t1 - t0 | acc])
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

  ###########################
  # Configuration

  def config(quick?) do
    common = %{
      quick: quick?,
      min_k: 4,
      max_lat_k: 20_000,
      small: {:chat, 42, :hello}
    }

    sizes =
      if quick?,
        do: %{
          reps: 2,
          sizes: [1, 100, 10_000],
          budget: 30_000,
          max_k: 10_000,
          lat_budget: 5_000,
          channels: 10_000,
          channel_passes: 1,
          channel_reps: 2,
          payload_subs: 100,
          payload_budget: 20_000,
          rt_iters: 2_000,
          cycle_iters: 2_000,
          busy_cycles: 1_000,
          busy_subs: 100,
          mass: [10_000],
          mass_reps: 1,
          mass_full_limit: 10_000,
          mass_cap_ms: 3_000,
          mem_procs: 1_000,
          mem_channels_per_proc: 100,
          sched_subs: 10_000,
          sched_msgs: 2,
          sched_reps: 1
        },
        else: %{
          reps: 5,
          sizes: [1, 10, 100, 1_000, 10_000, 100_000],
          budget: 200_000,
          max_k: 50_000,
          lat_budget: 20_000,
          channels: 100_000,
          channel_passes: 2,
          channel_reps: 3,
          payload_subs: 1_000,
          payload_budget: 200_000,
          rt_iters: 20_000,
          cycle_iters: 20_000,
          busy_cycles: 5_000,
          busy_subs: 1_000,
          mass: [10_000, 100_000],
          mass_reps: 3,
          mass_full_limit: 10_000,
          mass_cap_ms: 3_000,
          mem_procs: 10_000,
          mem_channels_per_proc: 100,
          sched_subs: 100_000,
          sched_msgs: 5,
          sched_reps: 3
        }

    Map.merge(common, sizes)
  end

  ###########################
  # Running

  def main(argv) do
    {opts, _, invalid} =
      OptionParser.parse(argv, strict: [quick: :boolean, only: :string, out: :string])

    if invalid != [], do: raise(ArgumentError, "unknown options: #{inspect(invalid)}")

    quick? = Keyword.get(opts, :quick, false)
    cfg = config(quick?)
    scenarios = YggBench.Scenarios.list()
    selected = select(scenarios, opts[:only])
    full? = not quick? and opts[:only] == nil

    phoenix = Comparators.load_phoenix()
    Comparators.start_infra()
    machine = machine(phoenix, quick?, argv)
    IO.puts(machine_lines(machine) |> Enum.join("\n"))
    IO.puts("")

    started = System.monotonic_time(:millisecond)

    results =
      for {id, number, title, fun} <- selected do
        IO.write("[#{number}] #{title} ... ")
        t0 = System.monotonic_time(:millisecond)
        result = isolated(fn -> fun.(cfg) end)
        settle()
        seconds = (System.monotonic_time(:millisecond) - t0) / 1000
        IO.puts("#{status(result)} (#{:erlang.float_to_binary(seconds, decimals: 1)} s)")
        build_result(id, number, title, result)
      end

    total_s = (System.monotonic_time(:millisecond) - started) / 1000
    machine = machine |> Map.put(:duration_s, total_s) |> Map.put(:load_end, loadavg())
    markdown = render(machine, results, cfg)
    csv = render_csv(machine, results)
    problems = sanity(results)

    dir = opts[:out] || if(full?, do: @results_dir, else: System.tmp_dir!())
    base = if full?, do: "latest", else: if(quick?, do: "ygg-bench-quick", else: "ygg-bench")
    File.mkdir_p!(dir)
    md_path = Path.join(dir, base <> ".md")
    csv_path = Path.join(dir, base <> ".csv")
    File.write!(md_path, markdown)
    File.write!(csv_path, csv)

    IO.puts("\n" <> markdown)

    IO.puts(
      "Written: #{md_path}, #{csv_path} (#{:erlang.float_to_binary(total_s, decimals: 1)} s)"
    )

    case problems do
      [] ->
        IO.puts(
          "Sanity: every round completed with every message received; all numbers non-zero."
        )

      _ ->
        IO.puts(:stderr, "Sanity check FAILED:\n  " <> Enum.join(problems, "\n  "))
        System.halt(1)
    end
  end

  defp select(scenarios, nil), do: scenarios

  defp select(scenarios, only) do
    wanted = only |> String.split(",", trim: true) |> Enum.map(&String.trim/1)

    known =
      Enum.map(scenarios, fn {id, n, _, _} -> [Atom.to_string(id), Integer.to_string(n)] end)

    unknown = wanted -- List.flatten(known)
    if unknown != [], do: raise(ArgumentError, "unknown scenarios: #{Enum.join(unknown, ", ")}")

    Enum.filter(scenarios, fn {id, n, _, _} ->
      Atom.to_string(id) in wanted or Integer.to_string(n) in wanted
    end)
  end

  defp status({:ok, _}), do: "ok"
  defp status({:error, _}), do: "FAILED"

  defp build_result(id, number, title, {:ok, result}),
    do: Map.merge(%{id: id, number: number, title: title, notes: [], extra: nil}, result)

  defp build_result(id, number, title, {:error, reason}),
    do: %{id: id, number: number, title: title, error: reason, records: [], notes: [], extra: nil}

  @doc "Runs `fun` in a fresh process (clean heap and mailbox)."
  def isolated(fun) do
    {pid, ref} =
      spawn_monitor(fn ->
        result =
          try do
            {:ok, fun.()}
          rescue
            error -> {:error, Exception.format(:error, error, __STACKTRACE__)}
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
    wait_until(fn -> Yggdrasil.info().subscriptions == 0 end, 60_000)
    :erlang.garbage_collect()
  end

  def wait_until(check, timeout_ms) do
    deadline = System.monotonic_time(:millisecond) + timeout_ms
    do_wait(check, deadline)
  end

  defp do_wait(check, deadline) do
    cond do
      check.() ->
        :ok

      System.monotonic_time(:millisecond) > deadline ->
        raise "condition not reached in time"

      true ->
        Process.sleep(1)
        do_wait(check, deadline)
    end
  end

  @doc """
  Runs `fun.(comparator, rep)` for every rep and comparator, interleaved
  (the order rotates every rep). `fun` returns %{metric => value}.
  Returns %{comparator => [metrics_map]}.
  """
  def interleave(reps, comps, fun) do
    Enum.reduce(1..reps, %{}, fn rep, acc ->
      comps
      |> rotate(rep - 1)
      |> Enum.reduce(acc, fn comp, acc ->
        :erlang.garbage_collect()
        metrics = fun.(comp, rep)
        Map.update(acc, comp, [metrics], &[metrics | &1])
      end)
    end)
  end

  @doc """
  Like `interleave/3` at a finer grain: within every rep, `blocks` blocks
  rotate over the comparators; `fun.(comparator, rep, block)` returns a
  list of samples. Returns %{comparator => [samples_of_one_rep]}.
  """
  def interleave_blocks(reps, blocks, comps, fun) do
    Enum.reduce(1..reps, %{}, fn rep, acc ->
      :erlang.garbage_collect()

      samples =
        Enum.reduce(1..max(blocks, 1), %{}, fn block, samples ->
          comps
          |> rotate(rep + block)
          |> Enum.reduce(samples, fn comp, samples ->
            new = fun.(comp, rep, block)
            Map.update(samples, comp, new, &(new ++ &1))
          end)
        end)

      Enum.reduce(samples, acc, fn {comp, list}, acc ->
        Map.update(acc, comp, [list], &[list | &1])
      end)
    end)
  end

  defp rotate(list, 0), do: list
  defp rotate([], _), do: []

  defp rotate(list, n) do
    n = rem(n, length(list))
    Enum.drop(list, n) ++ Enum.take(list, n)
  end

  @doc """
  Records for one case: `per` is %{comparator => [metrics_map]}, `specs`
  is [{metric, unit, :higher | :lower, opts}].
  """
  def records(scenario, kase, per, specs) do
    comps = Comparators.order() ++ ((per |> Map.keys() |> Enum.sort()) -- Comparators.order())

    for comp <- comps, Map.has_key?(per, comp), {metric, unit, better, opts} <- specs do
      values = per |> Map.fetch!(comp) |> Enum.map(&Map.get(&1, metric))

      if Enum.any?(values, &is_nil/1) do
        nil
      else
        record(scenario, kase, comp, metric, unit, better, values, opts)
      end
    end
    |> Enum.reject(&is_nil/1)
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
      capped: Keyword.get(opts, :capped, false),
      zero_ok: Keyword.get(opts, :zero_ok, false)
    }
  end

  ###########################
  # Machine

  def machine(phoenix, quick?, argv) do
    otp = :erlang.system_info(:otp_release) |> to_string()

    otp_full =
      case File.read(Path.join([:code.root_dir(), "releases", otp, "OTP_VERSION"])) do
        {:ok, text} -> String.trim(text)
        _ -> otp
      end

    cpu =
      case File.read("/proc/cpuinfo") do
        {:ok, text} ->
          case Regex.run(~r/model name\s*:\s*(.+)/, text) do
            [_, model] -> String.trim(model)
            _ -> "unknown"
          end

        _ ->
          "unknown"
      end

    commit =
      System.get_env("YGG_BENCH_COMMIT") ||
        try do
          case System.cmd("git", ["rev-parse", "--short", "HEAD"], stderr_to_stdout: true) do
            {sha, 0} ->
              {changes, _} =
                System.cmd("git", ["status", "--porcelain", "--", "lib", "native", "mix.exs"])

              String.trim(sha) <>
                if changes == "", do: "", else: " (+ uncommitted changes in lib/, native/)"

            _ ->
              "unknown"
          end
        rescue
          _ -> "unknown"
        end

    timer = Enum.map(1..10_000, fn _ -> YggBench.Loops.clock_overhead() end)

    %{
      date: DateTime.utc_now() |> DateTime.truncate(:second) |> DateTime.to_iso8601(),
      cpu: cpu,
      cores: :erlang.system_info(:logical_processors_available),
      logical: :erlang.system_info(:logical_processors),
      schedulers: :erlang.system_info(:schedulers_online),
      otp: otp_full,
      erts: :erlang.system_info(:version) |> to_string(),
      elixir: System.version(),
      commit: commit,
      mix_env: Mix.env(),
      quick: quick?,
      argv: argv,
      phoenix: phoenix,
      timer_ns: Stats.median(timer),
      load_start: loadavg()
    }
  end

  defp loadavg do
    case File.read("/proc/loadavg") do
      {:ok, text} -> text |> String.split() |> Enum.take(3) |> Enum.join(" ")
      _ -> "unknown"
    end
  end

  def machine_lines(m) do
    phoenix =
      case m.phoenix do
        {:ok, version} ->
          "Phoenix.PubSub #{version}, compiled at run time from PHOENIX_PUBSUB_PATH"

        {:skipped, why} ->
          "phoenix_pubsub skipped: #{why}"
      end

    cores = if m.cores == :unknown, do: m.logical, else: m.cores

    [
      "- Date: #{m.date} (UTC)",
      "- Machine: #{cores} cores available (#{m.cpu}), #{m.schedulers} schedulers online",
      "- Erlang/OTP #{m.otp} (ERTS #{m.erts}), Elixir #{m.elixir}, MIX_ENV=#{m.mix_env}",
      "- Commit: #{m.commit}; #{phoenix}",
      "- Load average (1/5/15 min) at start: #{m.load_start}" <>
        if(m[:load_end], do: "; at end: #{m.load_end}", else: "") <>
        " (anything else running on the machine moves the numbers)",
      "- Timer: back-to-back `:erlang.monotonic_time(:nanosecond)` reads cost #{m.timer_ns} ns (median); per-call times include it"
    ]
  end

  ###########################
  # Report

  @ratio_refs [:raw, :registry, :phoenix_pubsub]

  def render(machine, results, cfg) do
    mode = if cfg.quick, do: " (--quick: harness check only, numbers not meaningful)", else: ""

    command =
      if cfg.quick,
        do: "make bench-quick",
        else: "make bench  # = MIX_ENV=prod mix run bench/run.exs"

    [
      "# Yggdrasil native: benchmark results#{mode}\n\n",
      "Produced by `#{command}`",
      phoenix_env(machine),
      " in #{:erlang.float_to_binary(machine.duration_s, decimals: 0)} s.\n\n",
      Enum.join(machine_lines(machine), "\n"),
      "\n\n",
      method(machine),
      headline(results),
      targets_section(results),
      Enum.map(results, &scenario_section/1)
    ]
    |> IO.iodata_to_binary()
  end

  defp phoenix_env(%{phoenix: {:ok, version}}),
    do: " with `PHOENIX_PUBSUB_PATH` pointing at a checkout of phoenix_pubsub v#{version}"

  defp phoenix_env(_), do: ""

  defp method(machine) do
    skipped =
      case machine.phoenix do
        {:skipped, why} -> " — **skipped in this run**: #{why}"
        _ -> ""
      end

    """
    Comparators, all delivering `{:Y_EVENT, channel_struct, payload}`:
    **raw** `for pid <- pids, do: send(pid, msg)` (the floor);
    **registry** Elixir `Registry` (`keys: :duplicate`, one partition per scheduler) + `Registry.dispatch/3`;
    **phoenix_pubsub** `Phoenix.PubSub.broadcast/3` (default options)#{skipped};
    **native** `Yggdrasil.Backend.Default.publish/3` (the engine alone);
    **yggdrasil** `Yggdrasil.publish/2` (full API, `:default` transformer).
    Comparators run interleaved in one VM (the order rotates every repetition); cells show the
    median over repetitions, with min–max for the main metric. `× X` columns are speed relative
    to X on the main metric (> 1 = faster than X; for times and bytes: X's value ÷ ours).
    Throughput counts until every subscriber has received every message.

    """
  end

  defp headline(results) do
    case Enum.find(results, &(&1.id == :fanout and &1.records != [])) do
      nil ->
        ""

      %{records: records} ->
        comps = records |> Enum.map(& &1.comparator) |> Enum.uniq()
        cases = records |> Enum.map(& &1.case) |> Enum.uniq()
        get = fn kase, comp, metric -> find(records, kase, comp, metric) end

        ratio_cols =
          [{:native, :raw}, {:native, :phoenix_pubsub}, {:yggdrasil, :phoenix_pubsub}]
          |> Enum.filter(fn {a, b} -> a in comps and b in comps end)

        header =
          ["subscribers" | Enum.map(comps, &"#{&1}")] ++
            Enum.map(ratio_cols, fn {a, b} -> "#{a} ÷ #{b}" end) ++
            Enum.map(comps -- [:raw], &"#{&1} publish p50")

        rows =
          for kase <- cases do
            [kase] ++
              Enum.map(comps, fn c -> fmt(get.(kase, c, "deliveries/s"), :per_s) end) ++
              Enum.map(ratio_cols, fn {a, b} ->
                fmt_ratio(
                  speed(get.(kase, a, "deliveries/s"), get.(kase, b, "deliveries/s"), :higher)
                )
              end) ++
              Enum.map(comps -- [:raw], fn c -> fmt(get.(kase, c, "publish p50"), :ns) end)
          end

        [
          "## Headline: one channel, fan-out (deliveries/s until every subscriber has every message)\n\n",
          table(header, rows),
          "\n"
        ]
    end
  end

  defp find(records, kase, comp, metric) do
    case Enum.find(records, &(&1.case == kase and &1.comparator == comp and &1.metric == metric)) do
      nil -> nil
      record -> record.median
    end
  end

  defp speed(nil, _ref, _better), do: nil
  defp speed(_ours, nil, _better), do: nil
  defp speed(ours, ref, :higher) when ref > 0, do: ours / ref
  defp speed(ours, ref, :lower) when ours > 0, do: ref / ours
  defp speed(_, _, _), do: nil

  ###########################
  # Targets of issue 4

  defp targets_section(results) do
    rows = YggBench.Targets.evaluate(results)

    case rows do
      [] ->
        ""

      _ ->
        [
          "## Targets (issue 4)\n\n",
          table(["target", "measured", "result"], rows),
          "\n"
        ]
    end
  end

  ###########################
  # Scenario tables

  defp scenario_section(%{error: reason} = r) do
    "## #{r.number}. #{r.title}\n\nFAILED:\n\n```\n#{reason}\n```\n\n"
  end

  defp scenario_section(r) do
    notes = Enum.map(r.notes, &"#{&1}\n")

    [
      "## #{r.number}. #{r.title}\n\n",
      notes,
      if(notes == [], do: "", else: "\n"),
      scenario_table(r.records, r[:primary]),
      "\n",
      if(r.extra, do: [r.extra, "\n"], else: "")
    ]
  end

  defp scenario_table([], _primary), do: "(no results)\n"

  defp scenario_table(records, primary) do
    cases = records |> Enum.map(& &1.case) |> Enum.uniq()
    metrics = records |> Enum.map(& &1.metric) |> Enum.uniq()
    primary = primary || hd(metrics)
    comps = records |> Enum.map(& &1.comparator) |> Enum.uniq()
    refs = Enum.filter(@ratio_refs, &(&1 in comps))

    header = ["case", "comparator"] ++ metrics ++ Enum.map(refs, &"× #{&1}")

    rows =
      for kase <- cases,
          comp <- Comparators.order() ++ (comps -- Comparators.order()),
          Enum.any?(records, &(&1.case == kase and &1.comparator == comp)) do
        by_metric =
          Map.new(
            Enum.filter(records, &(&1.case == kase and &1.comparator == comp)),
            &{&1.metric, &1}
          )

        cells =
          Enum.map(metrics, fn metric ->
            case by_metric[metric] do
              nil -> "—"
              rec -> cell(rec, metric == primary)
            end
          end)

        ratios =
          Enum.map(refs, fn ref ->
            ours = by_metric[primary]

            theirs =
              Enum.find(
                records,
                &(&1.case == kase and &1.comparator == ref and &1.metric == primary)
              )

            cond do
              ref == comp or ours == nil or theirs == nil -> "—"
              true -> ratio_cell(ours, theirs)
            end
          end)

        [kase, "#{comp}"] ++ cells ++ ratios
      end

    table(header, rows)
  end

  defp cell(rec, with_range?) do
    # A capped run's time is a lower bound, so its rate is an upper bound.
    prefix =
      cond do
        not rec.capped -> ""
        rec.better == :lower -> "> "
        true -> "< "
      end

    value = prefix <> fmt(rec.median, rec.unit)

    if with_range? and length(rec.values) > 1 and rec.min != rec.max do
      value <> " (#{fmt_short(rec.min, rec.unit)}–#{fmt_short(rec.max, rec.unit)})"
    else
      value
    end
  end

  defp ratio_cell(ours, theirs) do
    r = speed(ours.median, theirs.median, ours.better)

    cond do
      r == nil -> "—"
      ours.capped and theirs.capped -> "?"
      # Our time is a lower bound: we are at most this fast.
      ours.capped -> "< " <> fmt_ratio(r)
      theirs.capped -> "> " <> fmt_ratio(r)
      true -> fmt_ratio(r)
    end
  end

  defp table(header, rows) do
    line = fn cells -> "| " <> Enum.join(cells, " | ") <> " |\n" end
    sep = "|" <> Enum.map_join(header, "|", fn _ -> "---" end) <> "|\n"
    [line.(header), sep, Enum.map(rows, line)]
  end

  def fmt(nil, _unit), do: "—"
  def fmt(value, :per_s), do: si(value) <> "/s"
  def fmt(value, :ns), do: duration(value)
  def fmt(value, :ms), do: duration(value * 1_000_000)
  def fmt(value, :bytes), do: bytes(value)
  def fmt(value, :count) when is_integer(value), do: Integer.to_string(value)
  def fmt(value, :count), do: :erlang.float_to_binary(value / 1, decimals: 1)

  defp fmt_short(value, :per_s), do: si(value)
  defp fmt_short(value, unit), do: fmt(value, unit)

  def fmt_ratio(nil), do: "—"
  def fmt_ratio(r) when r >= 100, do: "#{round(r)}×"
  def fmt_ratio(r) when r >= 10, do: :erlang.float_to_binary(r / 1, decimals: 1) <> "×"
  def fmt_ratio(r), do: :erlang.float_to_binary(r / 1, decimals: 2) <> "×"

  defp si(v) when v >= 1.0e9, do: num(v / 1.0e9) <> " G"
  defp si(v) when v >= 1.0e6, do: num(v / 1.0e6) <> " M"
  defp si(v) when v >= 1.0e3, do: num(v / 1.0e3) <> " k"
  defp si(v), do: num(v)

  defp duration(ns) when ns >= 1.0e9, do: num(ns / 1.0e9) <> " s"
  defp duration(ns) when ns >= 1.0e6, do: num(ns / 1.0e6) <> " ms"
  defp duration(ns) when ns >= 1.0e3, do: num(ns / 1.0e3) <> " µs"
  defp duration(ns) when ns == 0, do: "0"
  defp duration(ns), do: "#{round(ns)} ns"

  defp bytes(b) when abs(b) >= 1_048_576, do: num(b / 1_048_576) <> " MiB"
  defp bytes(b) when abs(b) >= 10_240, do: num(b / 1024) <> " KiB"
  defp bytes(b) when is_integer(b), do: "#{b} B"
  defp bytes(b), do: :erlang.float_to_binary(b / 1, decimals: 1) <> " B"

  defp num(v) when abs(v) >= 100, do: Integer.to_string(round(v))
  defp num(v) when abs(v) >= 10, do: :erlang.float_to_binary(v / 1, decimals: 1)
  defp num(v), do: :erlang.float_to_binary(v / 1, decimals: 2)

  ###########################
  # CSV

  def render_csv(machine, results) do
    header =
      "scenario,case,comparator,metric,unit,median,min,max,reps,capped," <>
        "x_raw,x_registry,x_phoenix_pubsub,date,schedulers,otp,elixir\n"

    rows =
      for r <- results, rec <- r.records do
        ratios =
          Enum.map(@ratio_refs, fn ref ->
            theirs =
              Enum.find(
                r.records,
                &(&1.case == rec.case and &1.comparator == ref and &1.metric == rec.metric)
              )

            if theirs && ref != rec.comparator,
              do: csv_num(speed(rec.median, theirs.median, rec.better)),
              else: ""
          end)

        [
          "#{r.number}-#{r.id}",
          rec.case,
          "#{rec.comparator}",
          rec.metric,
          "#{rec.unit}",
          csv_num(rec.median),
          csv_num(rec.min),
          csv_num(rec.max),
          "#{length(rec.values)}",
          "#{rec.capped}"
        ] ++ ratios ++ [machine.date, "#{machine.schedulers}", machine.otp, machine.elixir]
      end

    [header | Enum.map(rows, fn cells -> Enum.map_join(cells, ",", &csv_escape/1) <> "\n" end)]
    |> IO.iodata_to_binary()
  end

  defp csv_num(nil), do: ""
  defp csv_num(v) when is_integer(v), do: Integer.to_string(v)
  defp csv_num(v), do: :erlang.float_to_binary(v / 1, [:compact, decimals: 4])

  defp csv_escape(text) do
    if String.contains?(text, [",", "\"", "\n"]),
      do: "\"" <> String.replace(text, "\"", "\"\"") <> "\"",
      else: text
  end

  ###########################
  # Sanity (what --quick checks)

  def sanity(results) do
    errors =
      for %{error: reason} = r <- results,
          do: "scenario #{r.number} failed: #{first_line(reason)}"

    bad =
      for r <- results,
          rec <- r.records,
          not rec.zero_ok,
          Enum.any?(rec.values, &(not is_number(&1) or &1 <= 0)) do
        "scenario #{r.number} #{rec.case} #{rec.comparator} #{rec.metric}: #{inspect(rec.values)}"
      end

    errors ++ bad ++ Enum.flat_map(results, &Map.get(&1, :problems, []))
  end

  defp first_line(text), do: text |> String.split("\n") |> Enum.take(3) |> Enum.join(" ")
end

Code.require_file("scenarios.exs", __DIR__)
Code.require_file("targets.exs", __DIR__)
