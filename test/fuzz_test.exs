defmodule Yggdrasil.FuzzTest do
  # Random terms into every NIF entry point and every public API function.
  # The VM must survive, and each call must return a value or raise a normal
  # exception; a NIF may only raise ArgumentError (a bad argument), never
  # `:nif_panicked`. `make fuzz` runs many more iterations
  # (YGG_FUZZ=full, or YGG_FUZZ=<iterations>); YGG_FUZZ_SEED reproduces a run.
  #
  # Checks that the engine's global counts come back after the calls, so it
  # runs in a `mix test` run of its own (tag :global_counts, see
  # test_helper.exs), where no other test's processes come and go.
  use ExUnit.Case, async: false

  @moduletag :global_counts

  import Yggdrasil.Test.Helpers

  alias Yggdrasil.Channel
  alias Yggdrasil.Native
  alias Yggdrasil.TermGen

  @iterations (case System.get_env("YGG_FUZZ") do
                 nil -> 3_000
                 "" -> 3_000
                 "full" -> 300_000
                 n -> String.to_integer(n)
               end)

  @moduletag timeout: :infinity

  # Every NIF of Yggdrasil.Native, with how to build its arguments. Each
  # argument is a random term or, often, something the engine knows (a live
  # channel key, a cursor, a continuation) so the calls reach real state.
  @nifs [
    {:subscribe, 1},
    {:unsubscribe, 1},
    {:publish, 2},
    {:fanout_more, 2},
    {:set_connected, 3},
    {:set_watched, 2},
    {:set_generator, 1},
    {:subscribers_page, 1},
    {:subscribers_more, 1},
    {:watched_page, 1},
    {:subscriber_count, 1},
    {:is_subscribed, 2},
    {:is_connected, 1},
    {:info, 0},
    {:reset_counters, 0},
    {:json_encode, 1},
    {:json_encode_dirty, 1},
    {:json_decode, 1},
    {:json_decode_dirty, 1},
    {:floor_call, 2},
    {:floor_send, 2}
  ]

  # Public functions (module, function, arity); missing ones are skipped.
  @api [
    {Yggdrasil, :subscribe, 1},
    {Yggdrasil, :unsubscribe, 1},
    {Yggdrasil, :publish, 2},
    {Yggdrasil, :publish, 3},
    {Yggdrasil, :gen_channel, 1},
    {Yggdrasil, :info, 0},
    {Yggdrasil, :subscriber_count, 1},
    {Yggdrasil, :subscribers, 1},
    {Yggdrasil.Backend, :subscribe, 1},
    {Yggdrasil.Backend, :unsubscribe, 1},
    {Yggdrasil.Backend, :connected, 1},
    {Yggdrasil.Backend, :connected, 2},
    {Yggdrasil.Backend, :disconnected, 1},
    {Yggdrasil.Backend, :disconnected, 2},
    {Yggdrasil.Backend, :publish, 2},
    {Yggdrasil.Backend, :publish, 3},
    {Yggdrasil.Backend, :transform_name, 1},
    {Yggdrasil.Backend.Default, :subscribe, 1},
    {Yggdrasil.Backend.Default, :unsubscribe, 1},
    {Yggdrasil.Backend.Default, :connected, 2},
    {Yggdrasil.Backend.Default, :disconnected, 2},
    {Yggdrasil.Backend.Default, :publish, 3},
    {Yggdrasil.Transformer, :encode, 2},
    {Yggdrasil.Transformer, :decode, 2},
    {Yggdrasil.Transformer.Default, :encode, 2},
    {Yggdrasil.Transformer.Default, :decode, 2},
    {Yggdrasil.Transformer.Json, :encode, 2},
    {Yggdrasil.Transformer.Json, :decode, 2},
    {Yggdrasil.Registry, :get_transformer_module, 1},
    {Yggdrasil.Registry, :get_backend_module, 1},
    {Yggdrasil.Registry, :get_adapter_module, 1},
    {Yggdrasil.Registry, :get_subscriber_module, 1},
    {Yggdrasil.Registry, :get_publisher_module, 1},
    {Yggdrasil.Registry, :get_adapter_node, 1},
    {Yggdrasil.Registry, :get_full_channel, 1},
    {Yggdrasil.Subscriber.Manager, :connected, 1},
    {Yggdrasil.Subscriber.Manager, :disconnected, 1},
    {Yggdrasil.Subscriber.Manager, :subscribed?, 1},
    {Yggdrasil.Subscriber.Manager, :subscribed?, 2},
    {Yggdrasil.Subscriber.Manager, :connected?, 1},
    {Yggdrasil.Subscriber.Publisher, :notify, 2},
    {Yggdrasil.Subscriber.Publisher, :notify, 3},
    {Yggdrasil.Channel, :key, 1},
    {Yggdrasil.Engine, :broadcast, 2},
    {Yggdrasil.Engine, :set_connected, 3},
    {Yggdrasil.Engine, :subscribers, 1}
  ]

  # Enough subscribers on one channel that listings page and fan-outs yield.
  @crowd 5_000

  setup_all do
    seed =
      case System.get_env("YGG_FUZZ_SEED") do
        nil -> :erlang.unique_integer([:positive])
        seed -> String.to_integer(seed)
      end

    IO.puts("\nfuzz: #{@iterations} iterations, YGG_FUZZ_SEED=#{seed}")
    {:ok, seed: seed}
  end

  test "the bench hooks: floor_send sends like send/2, floor_cpu_stalls times pure computation" do
    assert Native.floor_call(:anything, {:goes}) == :ok
    assert Native.floor_send(self(), {:floor, 1}) == :ok
    assert_receive {:floor, 1}
    assert_raise ArgumentError, fn -> Native.floor_send(:not_a_pid, :x) end

    # 50 ms of 1 ms pieces, 1 ms apart: about 25 pieces, each at least
    # 1 ms of CPU time when undisturbed (the calibration aims at 1 ms).
    stalls = Native.floor_cpu_stalls(50, 1_000, 1_000)
    assert stalls.units in 5..50
    assert stalls.longest_us >= 500

    for bad <- [{601_000, 500, 0}, {10, 0, 0}, {10, 500, 2_000_000}, {-1, 500, 0}] do
      assert_raise ArgumentError, fn -> apply(Native, :floor_cpu_stalls, Tuple.to_list(bad)) end
    end
  end

  test "a panic inside a NIF comes back as an Elixir error, and the engine keeps working" do
    error = assert_raise ErlangError, fn -> Native.debug_panic(:plain) end
    assert error.original == :nif_panicked

    # Panicking while the table lock is held poisons that lock; the engine
    # recovers the guard and carries on.
    error = assert_raise ErlangError, fn -> Native.debug_panic(:table) end
    assert error.original == :nif_panicked
    assert_raise ArgumentError, fn -> Native.debug_panic("not an atom") end

    {:ok, channel} = Yggdrasil.gen_channel(name: {:fuzz, :after_panic})
    assert :ok = Yggdrasil.subscribe(channel)
    assert_receive {:Y_CONNECTED, ^channel}
    assert Yggdrasil.subscriber_count(channel) == 1
    assert :ok = Yggdrasil.publish(channel, :still_alive)
    assert_receive {:Y_EVENT, ^channel, :still_alive}
    assert :ok = Yggdrasil.unsubscribe(channel)
    assert_receive {:Y_DISCONNECTED, ^channel}
    assert Yggdrasil.subscriber_count(channel) == 0
  end

  test "every NIF entry point survives random terms", %{seed: seed} do
    with_crowd(fn crowd_key ->
      outcomes = run_workers(seed, fn -> call_nif(crowd_key) end)

      panics =
        for {{name, _}, {:raise, %ErlangError{original: :nif_panicked}}} <- outcomes, do: name

      assert panics == [], "NIFs panicked: #{inspect(Enum.frequencies(panics))}"

      # A NIF raises only ArgumentError (rustler's badarg), never anything else.
      odd =
        for {{name, args}, {kind, error}} <- outcomes,
            kind != :ok,
            not (kind == :raise and is_struct(error, ArgumentError)),
            do: {name, kind, error, args}

      assert odd == [], "unexpected outcomes: #{inspect(Enum.take(odd, 5), limit: 8)}"
      report(outcomes)
    end)
  end

  test "every public API function survives random terms", %{seed: seed} do
    api =
      for {m, f, a} <- @api, Code.ensure_loaded?(m), function_exported?(m, f, a), do: {m, f, a}

    with_crowd(fn crowd_key ->
      outcomes = run_workers(seed + 1, fn -> call_api(api, crowd_key) end)

      panics =
        for {{mfa, _}, {:raise, %ErlangError{original: :nif_panicked}}} <- outcomes, do: mfa

      assert panics == [], "NIF panics through the API: #{inspect(Enum.frequencies(panics))}"

      bad =
        for {{mfa, args}, {kind, reason}} <- outcomes,
            kind in [:exit, :throw],
            do: {mfa, kind, reason, args}

      assert bad == [], "exits/throws: #{inspect(Enum.take(bad, 5), limit: 8)}"
      report(outcomes)
    end)
  end

  ###########
  # Plumbing

  # Runs the iterations in short-lived worker processes (what they subscribe
  # to is cleaned up when they exit), then checks the engine's counts came
  # back to where they were.
  defp run_workers(seed, call) do
    generator = Process.whereis(Yggdrasil.Subscriber.Generator)
    before = Native.info()
    batches = max(1, div(@iterations, 500))
    per_batch = div(@iterations + batches - 1, batches)

    outcomes =
      for batch <- 1..batches, reduce: [] do
        acc ->
          task =
            Task.async(fn ->
              TermGen.seed(seed * 1_000 + batch)
              for i <- 1..per_batch, do: tap(call.(), fn _ -> if rem(i, 50) == 0, do: flush() end)
            end)

          acc ++ Task.await(task, :infinity)
      end

    # set_generator may have been handed a random pid: give the role back.
    if generator, do: Native.set_generator(generator)
    assert Process.alive?(generator)
    wait_counts(before)
    outcomes
  end

  defp call_nif(crowd_key) do
    {name, arity} = Enum.random(@nifs)
    args = args(arity, crowd_key)

    args =
      case {name, args} do
        {:set_connected, [key, _, msg]} -> [key, Enum.random([true, false, TermGen.atom()]), msg]
        {:set_watched, [key, _]} -> [key, Enum.random([true, false, TermGen.term(3)])]
        _ -> args
      end

    outcome = attempt(fn -> apply(Native, name, args) end)

    if name == :set_generator do
      Native.set_generator(Process.whereis(Yggdrasil.Subscriber.Generator))
    end

    remember(outcome)
    {{name, args}, outcome}
  end

  defp call_api(api, crowd_key) do
    {m, f, a} = Enum.random(api)
    args = args(a, crowd_key)
    outcome = attempt(fn -> apply(m, f, args) end)
    {{{m, f, a}, args}, outcome}
  end

  defp attempt(fun) do
    {:ok, fun.()}
  rescue
    error -> {:raise, error}
  catch
    :exit, reason -> {:exit, reason}
    :throw, value -> {:throw, value}
  end

  # Results that are worth feeding back (cursors and continuations).
  defp remember({:ok, {:more, continuation}}), do: push(continuation)

  defp remember({:ok, {pids, cursor}}) when is_list(pids) and is_reference(cursor),
    do: push(cursor)

  defp remember(_), do: :ok

  defp push(resource) do
    pool = Process.get(:resources, [])
    Process.put(:resources, Enum.take([resource | pool], 20))
  end

  # A call that names the crowd channel gets small other arguments: copying
  # a big random message into thousands of mailboxes only burns time.
  defp args(arity, crowd_key) do
    args = for _ <- List.duplicate(nil, arity), do: arg(crowd_key)

    if crowd_key in args,
      do: Enum.map(args, &if(&1 == crowd_key, do: &1, else: TermGen.leaf())),
      else: args
  end

  defp arg(crowd_key) do
    case :rand.uniform(20) do
      1 ->
        crowd_key

      n when n in 2..3 ->
        Enum.random([nil | Process.get(:resources, [])])

      n when n in 4..5 ->
        Channel.key(%Channel{
          name: {:fuzz, :rand.uniform(5)},
          transformer: :default,
          backend: :default
        })

      n when n in 6..8 ->
        TermGen.channel_like(6)

      _ ->
        TermGen.term(Enum.random([1, 5, 20, 60]))
    end
  end

  defp flush do
    receive do
      _ -> flush()
    after
      0 -> :ok
    end
  end

  # A channel with enough subscribers that listings page and fan-outs yield.
  defp with_crowd(fun) do
    {:ok, channel} = Yggdrasil.gen_channel(name: {:fuzz, :crowd})
    key = Channel.key(channel)
    parent = self()

    crowd =
      for _ <- 1..@crowd do
        spawn_link(fn ->
          :ok = Yggdrasil.Backend.Default.subscribe(channel)
          send(parent, :joined)
          sink()
        end)
      end

    for _ <- crowd, do: assert_receive(:joined, 5_000)

    try do
      fun.(key)
    after
      # Gone before the test ends, so that no later test sees them leave.
      refs = Enum.map(crowd, &Process.monitor/1)
      Enum.each(crowd, &send(&1, :stop))
      for ref <- refs, do: assert_receive({:DOWN, ^ref, :process, _, _}, 10_000)
      eventually(fn -> Native.subscriber_count(key) == 0 end, "the crowd to leave")
    end
  end

  defp wait_counts(before, tries \\ 200) do
    now = Native.info()

    same? =
      Map.take(now, [:channels, :subscriptions]) == Map.take(before, [:channels, :subscriptions])

    cond do
      same? ->
        :ok

      tries == 0 ->
        flunk("engine counts did not come back: before #{inspect(before)}, now #{inspect(now)}")

      true ->
        Process.sleep(25)
        wait_counts(before, tries - 1)
    end
  end

  defp report(outcomes) do
    counts =
      outcomes
      |> Enum.map(fn {{name, _}, {kind, _}} -> {name, kind} end)
      |> Enum.frequencies()
      |> Enum.sort()
      |> Enum.map_join(", ", fn {{name, kind}, n} -> "#{inspect(name)} #{kind}=#{n}" end)

    IO.puts("fuzz outcomes: " <> counts)
  end
end
