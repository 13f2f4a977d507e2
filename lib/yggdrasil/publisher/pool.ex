defmodule Yggdrasil.Publisher.Pool do
  @moduledoc false
  # A small worker pool in plain OTP (poolboy cannot be fetched here):
  # `size` workers live as long as the pool (a dead one is replaced), up to
  # `max_overflow` more are started under load and stopped when they are
  # checked in with nobody waiting; callers beyond that wait in line. A
  # caller that dies while holding or waiting for a worker gives its place
  # back. Workers are linked to the pool, which traps exits.
  use GenServer, restart: :transient

  alias Yggdrasil.Config
  alias Yggdrasil.Publisher.Adapter

  def start_link({channel, name}), do: GenServer.start_link(__MODULE__, channel, name: name)

  @doc false
  # Runs `fun` with a worker checked out; `{:error, _}` when none can be
  # started.
  def transaction(pool, fun) do
    case GenServer.call(pool, :checkout, :infinity) do
      {:ok, worker} ->
        try do
          fun.(worker)
        after
          GenServer.cast(pool, {:checkin, worker, self()})
        end

      {:error, _} = error ->
        error
    end
  end

  @doc false
  # `%{size:, max_overflow:, idle:, busy:, overflow:, waiting:}` counts.
  def status(pool), do: GenServer.call(pool, :status)

  @impl GenServer
  def init(channel) do
    Process.flag(:trap_exit, true)
    options = Config.publisher_options!(channel.namespace)

    state = %{
      channel: channel,
      size: max(Keyword.get(options, :size, 1), 1),
      max_overflow: max(Keyword.get(options, :max_overflow, 0), 0),
      permanent: MapSet.new(),
      idle: [],
      busy: %{},
      overflow: MapSet.new(),
      waiting: :queue.new()
    }

    Enum.reduce_while(1..state.size, {:ok, state}, fn _, {:ok, state} ->
      case start_worker(state) do
        {:ok, pid} ->
          {:cont,
           {:ok, %{state | permanent: MapSet.put(state.permanent, pid), idle: [pid | state.idle]}}}

        {:error, reason} ->
          {:halt, {:stop, reason}}
      end
    end)
  end

  @impl GenServer
  def handle_call(:checkout, {caller, _} = from, state) do
    case state do
      %{idle: [worker | idle]} ->
        {:reply, {:ok, worker}, lend(worker, caller, %{state | idle: idle})}

      _ ->
        case grow(state) do
          {:ok, worker, state} -> {:reply, {:ok, worker}, lend(worker, caller, state)}
          {:error, reason, state} -> {:reply, {:error, reason}, state}
          :full -> {:noreply, wait(from, state)}
        end
    end
  end

  def handle_call(:status, _from, state) do
    status = %{
      size: state.size,
      max_overflow: state.max_overflow,
      idle: length(state.idle),
      busy: map_size(state.busy),
      overflow: MapSet.size(state.overflow),
      waiting: :queue.len(state.waiting)
    }

    {:reply, status, state}
  end

  @impl GenServer
  def handle_cast({:checkin, worker, caller}, state) do
    case Map.pop(state.busy, worker) do
      {{^caller, monitor}, busy} ->
        Process.demonitor(monitor, [:flush])
        state = %{state | busy: busy}

        {:noreply, give_back(worker, state)}

      _ ->
        {:noreply, state}
    end
  end

  @impl GenServer
  def handle_info({:DOWN, monitor, :process, _pid, _reason}, state) do
    case Enum.find(state.busy, fn {_, {_, ref}} -> ref == monitor end) do
      {worker, _} ->
        # The holder died: the worker is free again.
        {:noreply, give_back(worker, %{state | busy: Map.delete(state.busy, worker)})}

      nil ->
        waiting = :queue.filter(fn {_from, ref} -> ref != monitor end, state.waiting)
        {:noreply, %{state | waiting: waiting}}
    end
  end

  def handle_info({:EXIT, pid, _reason}, state) do
    state =
      case Map.pop(state.busy, pid) do
        {{_caller, monitor}, busy} ->
          Process.demonitor(monitor, [:flush])
          %{state | busy: busy}

        {nil, _} ->
          state
      end

    cond do
      MapSet.member?(state.permanent, pid) ->
        state = %{
          state
          | permanent: MapSet.delete(state.permanent, pid),
            idle: List.delete(state.idle, pid)
        }

        {:noreply, serve_waiting(replace_permanent(state))}

      MapSet.member?(state.overflow, pid) ->
        {:noreply, serve_waiting(%{state | overflow: MapSet.delete(state.overflow, pid)})}

      true ->
        {:noreply, state}
    end
  end

  def handle_info(_other, state), do: {:noreply, state}

  # A replacement for a dead permanent worker; if it cannot start now, the
  # next checkout tries again.
  defp replace_permanent(state) do
    case start_worker(state) do
      {:ok, fresh} -> give_back(fresh, %{state | permanent: MapSet.put(state.permanent, fresh)})
      {:error, _} -> state
    end
  end

  # A new worker when the pool may grow: permanent first, then overflow.
  defp grow(state) do
    cond do
      MapSet.size(state.permanent) < state.size ->
        case start_worker(state) do
          {:ok, worker} ->
            {:ok, worker, %{state | permanent: MapSet.put(state.permanent, worker)}}

          {:error, reason} ->
            {:error, reason, state}
        end

      MapSet.size(state.overflow) < state.max_overflow ->
        case start_worker(state) do
          {:ok, worker} -> {:ok, worker, %{state | overflow: MapSet.put(state.overflow, worker)}}
          {:error, reason} -> {:error, reason, state}
        end

      true ->
        :full
    end
  end

  # Room freed up (a worker died): hand new workers to callers in line.
  defp serve_waiting(state) do
    case :queue.out(state.waiting) do
      {{:value, {{caller, _} = from, monitor}}, waiting} ->
        case grow(state) do
          {:ok, worker, state} ->
            Process.demonitor(monitor, [:flush])
            GenServer.reply(from, {:ok, worker})
            serve_waiting(lend(worker, caller, %{state | waiting: waiting}))

          {:error, reason, state} ->
            Process.demonitor(monitor, [:flush])
            GenServer.reply(from, {:error, reason})
            serve_waiting(%{state | waiting: waiting})

          :full ->
            state
        end

      {:empty, _} ->
        state
    end
  end

  defp start_worker(state) do
    case Adapter.start_link(state.channel) do
      {:ok, pid} -> {:ok, pid}
      {:error, reason} -> {:error, {:publisher_not_started, reason}}
      other -> {:error, {:publisher_not_started, other}}
    end
  catch
    kind, reason -> {:error, {:publisher_not_started, {kind, reason}}}
  end

  defp lend(worker, caller, state) do
    %{state | busy: Map.put(state.busy, worker, {caller, Process.monitor(caller)})}
  end

  defp wait({caller, _} = from, state) do
    %{state | waiting: :queue.in({from, Process.monitor(caller)}, state.waiting)}
  end

  # A returned worker goes to the next caller in line, else back to idle
  # (or away, if it was an overflow worker). One that died while lent is
  # not handed out again: its `:EXIT` is on the way and replaces it.
  defp give_back(worker, state) do
    if Process.alive?(worker), do: hand_over(worker, state), else: state
  end

  defp hand_over(worker, state) do
    case :queue.out(state.waiting) do
      {{:value, {{caller, _} = from, monitor}}, waiting} ->
        Process.demonitor(monitor, [:flush])
        GenServer.reply(from, {:ok, worker})
        lend(worker, caller, %{state | waiting: waiting})

      {:empty, _} ->
        if MapSet.member?(state.permanent, worker) do
          %{state | idle: [worker | state.idle]}
        else
          Process.unlink(worker)
          Process.exit(worker, :shutdown)
          %{state | overflow: MapSet.delete(state.overflow, worker)}
        end
    end
  end
end
