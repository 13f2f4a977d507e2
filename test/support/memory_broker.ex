defmodule Yggdrasil.MemoryBroker do
  @moduledoc false
  # The "message source" behind the in-memory test adapter: a `:pg` scope
  # (one group of connected adapter processes per channel) plus a table of
  # per-channel settings and the knobs tests turn:
  #
  #   drop/1, restore/1   the broker goes offline / online for a channel
  #                       (connected adapters are told, and reconnect)
  #   crash/1             every adapter process of the channel crashes
  #   set/3               :refuse (init fails with that reason),
  #                       :hold_stop / :hold_publish (a pid: terminate/2 or
  #                       a publish waits for `{:go, ref}` from it),
  #                       :crash_publish (the publisher worker crashes)
  #
  # Started lazily, unlinked, on first use; it lives for the whole test run.
  use GenServer

  alias Yggdrasil.Channel

  @scope :yggdrasil_memory
  @table :yggdrasil_memory_settings

  @doc false
  def scope do
    ensure_started()
    @scope
  end

  defp ensure_started do
    if :ets.whereis(@table) == :undefined do
      case GenServer.start(__MODULE__, nil, name: __MODULE__) do
        {:ok, _} -> :ok
        # Another process won the race: wait until its init/1 finished.
        {:error, {:already_started, pid}} -> GenServer.call(pid, :ping)
      end
    end

    :ok
  end

  @impl GenServer
  def init(_) do
    # The scope first: once the table exists, everything is ready.
    case :pg.start(@scope) do
      {:ok, _} -> :ok
      {:error, {:already_started, _}} -> :ok
    end

    :ets.new(@table, [:named_table, :public, :set, read_concurrency: true])
    {:ok, nil}
  end

  @impl GenServer
  def handle_call(:ping, _from, state), do: {:reply, :ok, state}

  ########
  # Groups

  @doc false
  # Connected adapters of the channel: they get what is published.
  def data_group(%Channel{name: name, namespace: namespace}), do: {:data, namespace, name}

  @doc false
  # Every adapter process of the channel, connected or not.
  def adapter_group(%Channel{name: name, namespace: namespace}), do: {:adapters, namespace, name}

  @doc false
  # Publisher workers of a namespace.
  def publisher_group(namespace), do: {:publishers, namespace}

  @doc "Live adapter processes of `channel`."
  def adapters(channel), do: live(:pg.get_members(scope(), adapter_group(channel)))

  @doc "Live publisher workers of `namespace`."
  def publishers(namespace), do: live(:pg.get_members(scope(), publisher_group(namespace)))

  defp live(pids), do: pids |> Enum.filter(&Process.alive?/1) |> Enum.sort()

  @doc "The calling process gets raw `{:memory_message, payload, metadata}` of `channel`."
  def tap(channel), do: :pg.join(scope(), data_group(channel), self())

  ###########
  # Settings

  @doc false
  def set(%Channel{name: name}, key, value) do
    ensure_started()
    :ets.insert(@table, {{name, key}, value})
    :ok
  end

  @doc false
  def unset(%Channel{name: name}, key) do
    ensure_started()
    :ets.delete(@table, {name, key})
    :ok
  end

  @doc false
  def setting(%Channel{name: name}, key) do
    ensure_started()

    case :ets.lookup(@table, {name, key}) do
      [{_, value}] -> value
      [] -> nil
    end
  end

  @doc false
  # Adds one to the counter `key` of `channel`.
  def bump(%Channel{name: name}, key) do
    ensure_started()
    :ets.update_counter(@table, {name, key}, 1, {{name, key}, 0})
  end

  @doc "Whether the broker accepts connections for `channel`."
  def online?(channel), do: setting(channel, :offline) == nil

  @doc "The broker drops every connection of `channel` and refuses new ones."
  def drop(channel) do
    set(channel, :offline, true)
    tell(channel, :memory_down)
  end

  @doc "The broker accepts connections of `channel` again."
  def restore(channel) do
    unset(channel, :offline)
    tell(channel, :memory_up)
  end

  @doc "Every adapter process of `channel` crashes."
  def crash(channel), do: tell(channel, :memory_crash)

  defp tell(channel, message) do
    for pid <- :pg.get_members(scope(), adapter_group(channel)), do: send(pid, message)
    :ok
  end

  @doc false
  # Runs where the adapter wants to be held (terminate/2, publish): when the
  # channel has `key` set to a pid, tells it `{key, self(), ref}` and waits
  # for `{:go, ref}`.
  def hold(channel, key) do
    case setting(channel, key) do
      pid when is_pid(pid) ->
        ref = make_ref()
        send(pid, {key, self(), ref})

        receive do
          {:go, ^ref} -> :ok
        end

      nil ->
        :ok
    end
  end

  @doc "Lets a held process go on."
  def go(pid, ref), do: send(pid, {:go, ref})
end
