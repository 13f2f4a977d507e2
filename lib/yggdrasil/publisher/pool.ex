defmodule Yggdrasil.Publisher.Pool do
  @moduledoc false
  # A small worker pool in plain OTP (poolboy cannot be fetched here):
  # `size` workers live as long as the pool, up to `max_overflow` more are
  # started under load and stopped when they are checked in idle; callers
  # beyond that wait in line. A caller that dies while holding or waiting
  # for a worker gives its place back.
  use GenServer, restart: :transient

  alias Yggdrasil.Config
  alias Yggdrasil.Publisher.Adapter

  def start_link({channel, name}), do: GenServer.start_link(__MODULE__, channel, name: name)

  @doc false
  def transaction(pool, fun) do
    worker = GenServer.call(pool, :checkout, :infinity)

    try do
      fun.(worker)
    after
      GenServer.cast(pool, {:checkin, worker, self()})
    end
  end

  @impl GenServer
  def init(channel) do
    Process.flag(:trap_exit, true)
    options = Config.publisher_options!(channel.namespace)
    size = Keyword.get(options, :size, 1)

    state = %{
      channel: channel,
      max_overflow: Keyword.get(options, :max_overflow, 0),
      permanent: MapSet.new(),
      idle: [],
      busy: %{},
      overflow: 0,
      waiting: :queue.new()
    }

    Enum.reduce_while(1..max(size, 1)//1, {:ok, state}, fn _, {:ok, state} ->
      case Adapter.start_link(channel) do
        {:ok, pid} ->
          {:cont,
           {:ok, %{state | permanent: MapSet.put(state.permanent, pid), idle: [pid | state.idle]}}}

        {:error, reason} ->
          {:halt, {:stop, reason}}

        other ->
          {:halt, {:stop, other}}
      end
    end)
  end

  @impl GenServer
  def handle_call(:checkout, {caller, _} = from, state) do
    case state do
      %{idle: [worker | idle]} ->
        {:reply, worker, lend(worker, caller, %{state | idle: idle})}

      %{overflow: overflow, max_overflow: max} when overflow < max ->
        case Adapter.start_link(state.channel) do
          {:ok, worker} ->
            {:reply, worker, lend(worker, caller, %{state | overflow: overflow + 1})}

          _ ->
            {:noreply, wait(from, state)}
        end

      _ ->
        {:noreply, wait(from, state)}
    end
  end

  @impl GenServer
  def handle_cast({:checkin, worker, caller}, state) do
    case Map.pop(state.busy, worker) do
      {{^caller, monitor}, busy} ->
        Process.demonitor(monitor, [:flush])
        {:noreply, give_back(worker, %{state | busy: busy})}

      _ ->
        {:noreply, state}
    end
  end

  @impl GenServer
  def handle_info({:DOWN, monitor, :process, _pid, _reason}, state) do
    case Enum.find(state.busy, fn {_, {_, ref}} -> ref == monitor end) do
      {worker, _} ->
        {:noreply, give_back(worker, %{state | busy: Map.delete(state.busy, worker)})}

      nil ->
        waiting = :queue.filter(fn {_from, ref} -> ref != monitor end, state.waiting)
        {:noreply, %{state | waiting: waiting}}
    end
  end

  def handle_info({:EXIT, worker, _reason}, state) do
    busy = Map.delete(state.busy, worker)
    idle = List.delete(state.idle, worker)
    state = %{state | busy: busy, idle: idle}

    if MapSet.member?(state.permanent, worker) do
      state = %{state | permanent: MapSet.delete(state.permanent, worker)}

      case Adapter.start_link(state.channel) do
        {:ok, fresh} ->
          {:noreply, give_back(fresh, %{state | permanent: MapSet.put(state.permanent, fresh)})}

        _ ->
          {:noreply, state}
      end
    else
      {:noreply, %{state | overflow: max(state.overflow - 1, 0)}}
    end
  end

  def handle_info(_other, state), do: {:noreply, state}

  defp lend(worker, caller, state) do
    %{state | busy: Map.put(state.busy, worker, {caller, Process.monitor(caller)})}
  end

  defp wait({caller, _} = from, state) do
    %{state | waiting: :queue.in({from, Process.monitor(caller)}, state.waiting)}
  end

  # A returned worker goes to the next caller in line, else back to idle
  # (or away, if it was an overflow worker).
  defp give_back(worker, state) do
    case :queue.out(state.waiting) do
      {{:value, {{caller, _} = from, monitor}}, waiting} ->
        Process.demonitor(monitor, [:flush])
        GenServer.reply(from, worker)
        lend(worker, caller, %{state | waiting: waiting})

      {:empty, _} ->
        if MapSet.member?(state.permanent, worker) do
          %{state | idle: [worker | state.idle]}
        else
          Process.unlink(worker)
          Process.exit(worker, :shutdown)
          %{state | overflow: state.overflow - 1}
        end
    end
  end
end
