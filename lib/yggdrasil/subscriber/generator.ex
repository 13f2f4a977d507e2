defmodule Yggdrasil.Subscriber.Generator do
  @moduledoc false
  # Life cycle of subscriber adapter processes (adapters other than the
  # native `:elixir` one): the first subscriber of a channel starts exactly
  # one adapter process, and it is stopped with reason `:normal` when the
  # last subscriber unsubscribes or dies.
  #
  # Membership lives in the native engine; this process only serializes the
  # starts and stops. It never waits for an adapter: starts and stops run in
  # short-lived helper processes and report back through monitors, so one
  # slow adapter `init/1` or `terminate/2` does not hold up other channels.
  #
  # A channel exists in the engine only while it has subscribers: when its
  # last subscriber leaves, the engine forgets it (with its connection
  # state) and a later subscriber creates a new one. Each adapter process
  # belongs to one such incarnation. Channels with an adapter are "watched":
  # their emptying is reported here exactly once, by the engine (a death:
  # `{:"$yggdrasil_emptied", key}` to this process) or by the unsubscriber
  # (`Engine.unsubscribe/1` answered `:emptied`). On that report the adapter
  # is stopped even if someone subscribed again meanwhile; that newcomer
  # created a fresh incarnation (not connected), so it gets a fresh adapter,
  # which reports the connection again. No adapter ever serves two
  # incarnations, and two adapters never run for one channel.
  #
  # The engine's table outlives this process and the whole application, the
  # adapter processes do not. So when this process starts and finds watched
  # channels that still have subscribers (it crashed, the adapters'
  # supervisor crashed, or the application was restarted), it stops any
  # adapter left over and starts a fresh one for each such channel. Their
  # subscribers stay subscribed: they get `{:Y_DISCONNECTED, channel}` (if
  # the channel was connected) and `{:Y_CONNECTED, channel}` once the new
  # adapter connects, as after an adapter crash.
  #
  # Per channel key, an entry is in one of three states:
  #   :starting  a helper runs DynamicSupervisor.start_child; `waiters`
  #              (subscribe calls) get the result;
  #   :running   the adapter runs (monitored);
  #   :stopping  a helper runs GenServer.stop(pid, :normal); subscribers
  #              arriving meanwhile wait, and get a new adapter once the old
  #              one is gone.
  use GenServer

  require Logger

  alias Yggdrasil.Backend
  alias Yggdrasil.Channel
  alias Yggdrasil.Engine

  @adapters Yggdrasil.Subscriber.Adapters
  # Every adapter process started and not yet seen exiting, `{pid}`. Owned
  # by the application (see new_table/0), so a new Generator finds also the
  # adapters of a crashed adapters' supervisor, which exit on their own time.
  @running Yggdrasil.Subscriber.Generator.Running
  # An adapter that exits on its own while it has subscribers is restarted,
  # at most this often per window.
  @max_restarts 3
  @restart_window_ms 5_000
  # How long an adapter gets for `terminate/2` before it is killed.
  @stop_timeout 5_000

  def start_link(_), do: GenServer.start_link(__MODULE__, nil, name: __MODULE__)

  @doc false
  # Subscribes the caller and makes sure the channel's adapter runs. On
  # `{:error, _}` the caller is left as it was before the call.
  def subscribe(%Channel{} = channel) do
    key = Channel.key(channel)
    already? = Engine.subscribed?(key, self())

    # The adapter's optional `check_channel/1` refuses a channel before the
    # caller is subscribed or any process starts.
    with :ok <- Yggdrasil.Subscriber.Adapter.check(channel),
         :ok <- Backend.subscribe(channel) do
      case call({:ensure, key}) do
        :ok ->
          :ok

        {:error, _} = error ->
          unless already?, do: leave(channel, key)
          error
      end
    end
  end

  # A Generator that dies during the call gives an error, not an exit: the
  # caller must not be left subscribed without an adapter.
  defp call(request) do
    GenServer.call(__MODULE__, request, :infinity)
  catch
    :exit, reason -> {:error, {:generator_unavailable, reason}}
  end

  @doc false
  def unsubscribe(%Channel{} = channel) do
    with :ok <- leave(channel, Channel.key(channel)) do
      Backend.disconnected(channel, self())
    end
  end

  # The engine tells only the unsubscriber that it emptied a watched
  # channel, so the engine membership is dropped here (the backend's own
  # `unsubscribe/1` still runs, and finds nothing left to do natively).
  defp leave(channel, key) do
    emptied? = Engine.unsubscribe(key) == :emptied
    result = Backend.unsubscribe(channel)
    # If the Generator is down, the next one stops the adapter (an orphan).
    if emptied?, do: call({:emptied, key})
    result
  end

  @doc false
  # The adapter process running for `channel`, if any.
  def whereis(%Channel{} = channel) do
    case status(channel) do
      {:running, pid} -> pid
      _ -> nil
    end
  end

  @doc false
  # `{:starting | :running | :stopping, pid | nil}`, or `nil` when no adapter
  # is (being) started for `channel`.
  def status(%Channel{} = channel),
    do: GenServer.call(__MODULE__, {:status, Channel.key(channel)})

  @doc false
  # Creates the table of running adapters; called by the application's
  # start/2, whose process lives as long as the application.
  def new_table do
    if :ets.whereis(@running) == :undefined,
      do: :ets.new(@running, [:named_table, :public, :set])

    :ok
  end

  @doc false
  # Marks every watched channel disconnected: for the application's stop,
  # once the adapters are gone (their channels keep their subscribers).
  def disconnect_all do
    Enum.each(Engine.watched_channels(), &disconnect/1)
  end

  defp disconnect(key), do: Engine.set_connected(key, false, {:Y_DISCONNECTED, key})

  ###########
  # Callbacks

  @impl GenServer
  def init(_) do
    # Registered first: a channel emptied from now on is reported here,
    # so none of those listed below is missed or started for nobody.
    Engine.set_generator(self())
    # Run outside the application (no table yet): this process owns it.
    new_table()
    stop_orphans()
    {:ok, restart_watched(%{entries: %{}, refs: %{}})}
  end

  # Fresh adapters for the channels whose subscribers outlived the previous
  # Generator or application (see the module comment).
  defp restart_watched(state) do
    case Engine.watched_channels() do
      [] ->
        state

      keys ->
        Logger.warning(
          "Yggdrasil: restarting the adapters of #{length(keys)} subscribed channel(s)"
        )

        Enum.reduce(keys, state, fn key, state ->
          disconnect(key)
          start(key, [], [], state)
        end)
    end
  end

  @impl GenServer
  def handle_call({:ensure, key}, from, state) do
    # Marking the channel watched also tells whether it still has
    # subscribers (the engine drops empty channels): if not, the caller
    # died after subscribing and there is nothing to start.
    if Engine.watch(key) do
      case Map.fetch(state.entries, key) do
        :error ->
          {:noreply, start(key, [from], [], state)}

        {:ok, %{status: :running}} ->
          {:reply, :ok, state}

        {:ok, entry} ->
          {:noreply, put_entry(state, key, %{entry | waiters: [from | entry.waiters]})}
      end
    else
      {:reply, :ok, state}
    end
  end

  def handle_call({:emptied, key}, _from, state), do: {:reply, :ok, emptied(key, state)}

  def handle_call({:status, key}, _from, state) do
    case state.entries do
      %{^key => %{status: status, pid: pid}} -> {:reply, {status, pid}, state}
      _ -> {:reply, nil, state}
    end
  end

  @impl GenServer
  def handle_info({:"$yggdrasil_emptied", key}, state), do: {:noreply, emptied(key, state)}

  def handle_info({:DOWN, ref, :process, _pid, reason}, state) do
    case Map.pop(state.refs, ref) do
      {nil, _} ->
        {:noreply, state}

      {key, refs} ->
        state = %{state | refs: refs}
        entry = Map.fetch!(state.entries, key)
        if entry.status != :starting, do: :ets.delete(@running, entry.pid)

        case entry.status do
          :starting -> {:noreply, started(key, entry, reason, state)}
          :running -> {:noreply, exited(key, entry, reason, state)}
          :stopping -> {:noreply, stopped(key, entry, state)}
        end
    end
  end

  def handle_info(_other, state), do: {:noreply, state}

  ############
  # Transitions

  # The incarnation the adapter belonged to is gone.
  defp emptied(key, state) do
    case state.entries do
      %{^key => %{status: :running} = entry} -> begin_stop(key, entry, state)
      %{^key => %{status: :starting} = entry} -> put_entry(state, key, %{entry | emptied?: true})
      _ -> state
    end
  end

  defp start(key, waiters, restarts, state) do
    spec = %{
      id: make_ref(),
      start: {Yggdrasil.Subscriber.Adapter, :start_link, [key, []]},
      restart: :temporary
    }

    # The helper's exit reason carries the result (see started/4).
    {_, ref} = spawn_monitor(fn -> exit({:"$started", start_child(spec)}) end)

    entry = %{
      status: :starting,
      pid: nil,
      ref: ref,
      waiters: waiters,
      restarts: restarts,
      emptied?: false
    }

    state |> put_entry(key, entry) |> put_ref(ref, key)
  end

  defp start_child(spec) do
    case DynamicSupervisor.start_child(@adapters, spec) do
      {:ok, pid, _info} -> {:ok, pid}
      other -> other
    end
  catch
    :exit, reason -> {:error, reason}
  end

  defp started(key, entry, {:"$started", {:ok, pid}}, state) when is_pid(pid) do
    :ets.insert(@running, {pid})
    ref = Process.monitor(pid)
    entry = %{entry | pid: pid, ref: ref}
    state = put_ref(state, ref, key)

    if entry.emptied? do
      # Everybody left while it started; waiters (if any) belong to a newer
      # incarnation and get an adapter of their own after this one stops.
      begin_stop(key, entry, state)
    else
      reply(entry.waiters, :ok)
      put_entry(state, key, %{entry | status: :running, waiters: []})
    end
  end

  defp started(key, entry, reason, state) do
    reason =
      case reason do
        {:"$started", {:error, reason}} -> reason
        {:"$started", {:ok, _}} -> :ignore
        {:"$started", :ignore} -> :ignore
        {:"$started", other} -> other
        other -> other
      end

    if entry.waiters == [] do
      Logger.error(
        "Yggdrasil: adapter for #{inspect(key)} could not be restarted (#{inspect(reason)}); " <>
          "its subscribers stay disconnected until the next subscribe"
      )
    end

    reply(entry.waiters, {:error, {:adapter_not_started, reason}})
    delete_entry(state, key)
  end

  # The adapter exited without being asked to: tell its subscribers and
  # restart it while it has some.
  defp exited(key, entry, reason, state) do
    Engine.set_connected(key, false, {:Y_DISCONNECTED, key})
    now = System.monotonic_time(:millisecond)
    recent = Enum.filter(entry.restarts, &(now - &1 < @restart_window_ms))

    cond do
      Engine.subscriber_count(key) == 0 ->
        delete_entry(state, key)

      length(recent) >= @max_restarts ->
        Logger.error(
          "Yggdrasil: adapter for #{inspect(key)} keeps exiting (#{inspect(reason)}); " <>
            "its subscribers stay disconnected until the next subscribe"
        )

        delete_entry(state, key)

      true ->
        Logger.warning(
          "Yggdrasil: adapter for #{inspect(key)} exited (#{inspect(reason)}); restarting"
        )

        start(key, [], [now | recent], state)
    end
  end

  defp begin_stop(key, %{pid: pid} = entry, state) do
    spawn(fn -> stop_adapter(pid) end)
    put_entry(state, key, %{entry | status: :stopping, emptied?: false})
  end

  # The old adapter is gone (its monitor fired). Subscribers that came
  # meanwhile are on a new incarnation: it gets its own adapter.
  defp stopped(key, entry, state) do
    if Engine.subscriber_count(key) > 0 do
      # The old adapter may have reported the new incarnation connected.
      Engine.set_connected(key, false, {:Y_DISCONNECTED, key})
      start(key, entry.waiters, [], state)
    else
      reply(entry.waiters, :ok)
      delete_entry(state, key)
    end
  end

  defp stop_adapter(pid) do
    Yggdrasil.Subscriber.Adapter.stop(pid, :normal, @stop_timeout)
  catch
    # Timed out, already dead, or terminate/2 raised: make sure it is gone.
    :exit, _ -> Process.exit(pid, :kill)
  end

  # Adapters left by a previous incarnation of this process have nobody to
  # stop them: those of the adapters' supervisor, and those of a crashed
  # one, which may still be running terminate/2. Waits until they are all
  # gone (at most @stop_timeout, they stop in parallel), so that no channel
  # ever has two adapters and no old adapter reports a state after a new one.
  defp stop_orphans do
    supervised =
      try do
        for {_, pid, _, _} <- DynamicSupervisor.which_children(@adapters), is_pid(pid), do: pid
      catch
        :exit, _ -> []
      end

    refs =
      for {pid} <- :ets.tab2list(@running), reduce: supervised do
        pids -> [pid | pids]
      end
      |> Enum.uniq()
      |> Enum.map(fn pid ->
        ref = Process.monitor(pid)
        spawn(fn -> stop_adapter(pid) end)
        ref
      end)

    for ref <- refs do
      receive do
        {:DOWN, ^ref, :process, _, _} -> :ok
      end
    end

    :ets.delete_all_objects(@running)
  end

  defp reply(waiters, result), do: Enum.each(waiters, &GenServer.reply(&1, result))

  defp put_entry(state, key, entry), do: %{state | entries: Map.put(state.entries, key, entry)}

  defp put_ref(state, ref, key), do: %{state | refs: Map.put(state.refs, ref, key)}

  defp delete_entry(state, key), do: %{state | entries: Map.delete(state.entries, key)}
end
