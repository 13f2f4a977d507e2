defmodule Yggdrasil.Subscriber.Generator do
  @moduledoc false
  # Life cycle of subscriber adapter processes (adapters other than the
  # native `:elixir` one): the first subscriber of a channel starts exactly
  # one adapter process, and it is stopped with reason `:normal` when the
  # last subscriber unsubscribes or dies.
  #
  # Membership lives in the native engine. This process serializes starts
  # and stops, and is the engine's "janitor": the engine tells it when a
  # watched channel lost its last subscriber through a process death.
  use GenServer

  require Logger

  alias Yggdrasil.Backend
  alias Yggdrasil.Channel
  alias Yggdrasil.Native

  @adapters Yggdrasil.Subscriber.Adapters
  # A crashing adapter is restarted at most this often per window.
  @max_restarts 3
  @restart_window_ms 5_000
  @stop_timeout 5_000

  def start_link(_), do: GenServer.start_link(__MODULE__, nil, name: __MODULE__)

  @doc false
  # Subscribes the caller and makes sure the channel's adapter runs.
  def subscribe(%Channel{} = channel) do
    with :ok <- Backend.subscribe(channel) do
      case GenServer.call(__MODULE__, {:ensure, Channel.key(channel)}, :infinity) do
        :ok ->
          :ok

        {:error, _} = error ->
          Backend.unsubscribe(channel)
          error
      end
    end
  end

  @doc false
  def unsubscribe(%Channel{} = channel) do
    key = Channel.key(channel)
    subscribed? = Native.is_subscribed(key, self())

    with :ok <- Backend.unsubscribe(channel) do
      if subscribed? and Native.subscriber_count(key) == 0 do
        GenServer.call(__MODULE__, {:release, key}, :infinity)
      end

      Backend.disconnected(channel, self())
    end
  end

  @doc false
  # The adapter process running for `channel`, if any.
  def whereis(%Channel{} = channel),
    do: GenServer.call(__MODULE__, {:whereis, Channel.key(channel)})

  @impl GenServer
  def init(_) do
    Native.set_janitor(self())
    {:ok, %{channels: %{}, pids: %{}}}
  end

  @impl GenServer
  def handle_call({:ensure, key}, _from, state) do
    cond do
      # Marking the channel watched also tells whether it still has
      # subscribers (the engine drops empty channels).
      not Native.set_watched(key, true) -> {:reply, :ok, state}
      Map.has_key?(state.channels, key) -> {:reply, :ok, state}
      true -> start_adapter(key, [], state)
    end
  end

  def handle_call({:release, key}, _from, state), do: {:reply, :ok, release(key, state)}

  def handle_call({:whereis, key}, _from, state) do
    {:reply, get_in(state.channels, [key, :pid]), state}
  end

  @impl GenServer
  def handle_info({:"$yggdrasil_emptied", key}, state), do: {:noreply, release(key, state)}

  def handle_info({:DOWN, _ref, :process, pid, reason}, state) do
    case Map.pop(state.pids, pid) do
      {nil, _} ->
        {:noreply, state}

      {key, pids} ->
        {entry, channels} = Map.pop(state.channels, key)
        state = %{state | pids: pids, channels: channels}
        Native.broadcast_state(key, false, {:Y_DISCONNECTED, key})
        {:noreply, maybe_restart(key, entry, reason, state)}
    end
  end

  def handle_info(_other, state), do: {:noreply, state}

  defp maybe_restart(key, entry, reason, state) do
    now = System.monotonic_time(:millisecond)
    recent = Enum.filter(entry.restarts, &(now - &1 < @restart_window_ms))

    cond do
      Native.subscriber_count(key) == 0 ->
        state

      length(recent) >= @max_restarts ->
        Logger.error(
          "Yggdrasil: adapter for #{inspect(key)} keeps crashing (#{inspect(reason)}); " <>
            "its subscribers stay disconnected until the next subscribe"
        )

        state

      true ->
        Logger.warning(
          "Yggdrasil: adapter for #{inspect(key)} exited (#{inspect(reason)}); restarting"
        )

        case start_adapter(key, [now | recent], state) do
          {:reply, :ok, state} -> state
          {:reply, {:error, _}, state} -> state
        end
    end
  end

  defp start_adapter(key, restarts, state) do
    spec = %{
      id: make_ref(),
      start: {Yggdrasil.Subscriber.Adapter, :start_link, [key, []]},
      restart: :temporary
    }

    case DynamicSupervisor.start_child(@adapters, spec) do
      {:ok, pid} ->
        entry = %{pid: pid, monitor: Process.monitor(pid), restarts: restarts}

        {:reply, :ok,
         %{
           state
           | channels: Map.put(state.channels, key, entry),
             pids: Map.put(state.pids, pid, key)
         }}

      {:error, reason} ->
        Native.set_watched(key, false)
        {:reply, {:error, {:adapter_not_started, reason}}, state}

      other ->
        Native.set_watched(key, false)
        {:reply, {:error, {:adapter_not_started, other}}, state}
    end
  end

  # Stops the channel's adapter if nobody subscribed again meanwhile.
  defp release(key, state) do
    with 0 <- Native.subscriber_count(key),
         {%{pid: pid, monitor: monitor}, channels} <- Map.pop(state.channels, key) do
      Process.demonitor(monitor, [:flush])
      stop_adapter(pid)
      %{state | channels: channels, pids: Map.delete(state.pids, pid)}
    else
      _ -> state
    end
  end

  defp stop_adapter(pid) do
    Yggdrasil.Subscriber.Adapter.stop(pid, :normal, @stop_timeout)
  catch
    :exit, _ ->
      DynamicSupervisor.terminate_child(@adapters, pid)
  end
end
